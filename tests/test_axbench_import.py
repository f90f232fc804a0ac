"""Import of AxBench's released Concept10 (Gemma-2-2B, layer 10) data; facts from AXBENCH.md §7."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from axflow import store
from axflow.data.axbench import import_axbench
from axflow.data.validate import DataError, validate_examples

SHARED_DATA = Path(
    os.environ.get("AXFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CONCEPT10 = SHARED_DATA / "axbench-concept10-2b-l10"
FILES = ("metadata.jsonl", "train_data.parquet", "latent_eval_data.parquet")

pytestmark = pytest.mark.skipif(
    not all((CONCEPT10 / f).is_file() for f in FILES),
    reason=f"AxBench Concept10 data not found at {CONCEPT10} (set AXFLOW_SHARED_DATA to the "
    f"folder holding axbench-concept10-2b-l10/)",
)


@pytest.fixture(scope="module")
def concept10():
    return import_axbench(CONCEPT10)


def test_concepts_table(concept10):
    concepts, _, _ = concept10
    assert concepts.columns == store.SCHEMAS["concepts"].names
    assert concepts["concept_id"].to_list() == list(range(10))
    assert dict(concepts.group_by("genre").len().iter_rows()) == {"text": 5, "code": 4, "math": 1}
    assert concepts["ref"].str.starts_with("https://www.neuronpedia.org/gemma-2-2b/").all()
    first = concepts.row(0, named=True)
    assert first["concept"] == "references to specific dates and publication information"
    assert first["sae_id"] == 14874
    assert concepts["sae_id"].null_count() == 0


def test_train_counts(concept10):
    concepts, train, _ = concept10
    assert train.columns == store.SCHEMAS["examples"].names
    assert train.height == 936
    positives = train.filter(pl.col("category") == "positive")
    assert positives.group_by("concept_id").len()["len"].to_list() == [72] * 10
    negatives = train.filter(pl.col("category") == "negative")
    assert negatives.height == 216
    assert negatives["concept_id"].unique().to_list() == [-1]
    assert negatives["output_concept"].unique().to_list() == ["EEEEE"]
    assert dict(negatives.group_by("concept_genre").len().iter_rows()) == {
        "text": 72,
        "math": 72,
        "code": 72,
    }
    names = dict(concepts.select("concept_id", "concept").iter_rows())
    assert all(
        names[cid] == oc for cid, oc in positives.select("concept_id", "output_concept").iter_rows()
    )
    assert (train["dataset_category"] == "instruction").all()
    validate_examples(
        train,
        split="train",
        concepts=concepts,
        expected={"positive": 72, "negative": 72},
        source="concept10 train",
    )


def test_eval_counts(concept10):
    concepts, _, eval_df = concept10
    assert eval_df.columns == store.SCHEMAS["examples"].names
    assert eval_df.height == 770
    per = eval_df.group_by("concept_id", "category").len()
    for category in ("positive", "negative"):
        counts = per.filter(pl.col("category") == category)
        assert counts.height == 10 and (counts["len"] == 36).all()
    hard = eval_df.filter(pl.col("category") == "hard negative")
    assert hard.height == 50
    assert hard["output_concept"].str.contains("//", literal=True).all()
    neg_genres = (
        eval_df.filter(pl.col("category") == "negative")
        .group_by("concept_id", "concept_genre")
        .len()
    )
    for cid in range(10):
        genres = dict(
            neg_genres.filter(pl.col("concept_id") == cid)
            .select("concept_genre", "len")
            .iter_rows()
        )
        assert genres == {"text": 26, "math": 5, "code": 5}
    names = dict(concepts.select("concept_id", "concept").iter_rows())
    pos = eval_df.filter(pl.col("category") == "positive")
    assert all(
        names[cid] == oc for cid, oc in pos.select("concept_id", "output_concept").iter_rows()
    )
    validate_examples(
        eval_df,
        split="detect_eval",
        concepts=concepts,
        expected={"positive": 36, "negative": 36},
        source="concept10 eval",
    )


def test_nested_and_rotated_layout_gives_the_same_tables(tmp_path, concept10):
    """AxBench's own layout (generate/ + inference/, rotated train files, any row order)."""
    (tmp_path / "generate").mkdir()
    (tmp_path / "inference").mkdir()
    shutil.copy(CONCEPT10 / "metadata.jsonl", tmp_path / "generate")
    shutil.copy(CONCEPT10 / "latent_eval_data.parquet", tmp_path / "inference")
    train = pl.read_parquet(CONCEPT10 / "train_data.parquet").sample(
        fraction=1.0, shuffle=True, seed=1
    )
    train.filter(pl.col("concept_id") < 5).write_parquet(tmp_path / "generate/train_data.parquet")
    train.filter(pl.col("concept_id") >= 5).write_parquet(
        tmp_path / "generate/train_data_1.parquet"
    )

    concepts, train_df, eval_df = import_axbench(tmp_path)
    ref_concepts, ref_train, ref_eval = concept10
    assert concepts.equals(ref_concepts)
    key = ["concept_id", "category", "input", "output"]
    assert train_df.sort(key).equals(ref_train.sort(key))
    assert eval_df.equals(ref_eval)


def test_removed_positive_is_reported_by_concept(concept10):
    concepts, train, _ = concept10
    row = train.with_row_index().filter(
        (pl.col("concept_id") == 3) & (pl.col("category") == "positive")
    )["index"][0]
    short = train.with_row_index().filter(pl.col("index") != row).drop("index")
    with pytest.raises(DataError) as err:
        validate_examples(
            short,
            split="train",
            concepts=concepts,
            expected={"positive": 72, "negative": 72},
            source="train_data.parquet",
        )
    message = str(err.value)
    assert "train_data.parquet" in message
    assert f"concept 3 ({concepts['concept'][3]!r})" in message
    assert "missing 1 positive" in message


def test_metadata_that_disagrees_with_the_data_is_rejected(tmp_path):
    for name in FILES[1:]:
        shutil.copy(CONCEPT10 / name, tmp_path)
    lines = (CONCEPT10 / "metadata.jsonl").read_text().splitlines()
    # Swapping two lines keeps the ids with their text, so this must still import cleanly.
    (tmp_path / "metadata.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    concepts, _, _ = import_axbench(tmp_path)
    assert concepts["concept_id"].to_list()[:2] == [1, 0]
    # Renumbering (ids follow row order instead of the file's concept_id) must fail loudly.
    swapped = [line.replace('"concept_id": 0', '"concept_id": X') for line in lines]
    swapped = [line.replace('"concept_id": 1', '"concept_id": 0') for line in swapped]
    swapped = [line.replace('"concept_id": X', '"concept_id": 1') for line in swapped]
    (tmp_path / "metadata.jsonl").write_text("\n".join(swapped) + "\n")
    with pytest.raises(DataError, match="output_concept"):
        import_axbench(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"no metadata\.jsonl"):
        import_axbench(tmp_path)
    for name in FILES[:2]:
        shutil.copy(CONCEPT10 / name, tmp_path)
    with pytest.raises(DataError, match=r"no latent_eval_data\.parquet.*require_eval=False"):
        import_axbench(tmp_path)
    concepts, train, eval_df = import_axbench(tmp_path, require_eval=False)
    assert train.height == 936 and eval_df.height == 0
    assert eval_df.columns == store.SCHEMAS["examples"].names
    assert concepts["sae_id"][0] == 14874  # from the Neuronpedia ref when no eval file
