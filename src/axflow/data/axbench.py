"""Import AxBench's released data (Concept10 / Concept500 / ConceptFD) into axflow's tables.

The released layout is `generate/metadata.jsonl`, `generate/train_data.parquet` (plus
`train_data_<k>.parquet` for every further 500 concepts) and `inference/latent_eval_data.parquet`
(AXBENCH.md §1.5); the same files may also sit flat in one directory. Rows are tied to concepts
by `concept_id` only, never by row order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from axflow.data.sources import load_concepts
from axflow.data.validate import DataError, conform, validate_examples

METADATA_FILE = "metadata.jsonl"
TRAIN_STEM = "train_data"
EVAL_STEM = "latent_eval_data"
# Where each file may live, relative to the directory given, in order of preference.
METADATA_DIRS = (".", "generate")
TRAIN_DIRS = (".", "generate")
EVAL_DIRS = (".", "inference", "generate")


@dataclass(frozen=True)
class AxBenchFiles:
    """The files of one released AxBench task directory."""

    metadata: Path
    train: tuple[Path, ...]
    eval: tuple[Path, ...]


def find_axbench_files(directory: str | os.PathLike) -> AxBenchFiles:
    """Locate metadata, train and eval parquet files, flat or under generate/ and inference/."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; point the AxBench import at a task folder.")
    metadata = next(
        (
            directory / d / METADATA_FILE
            for d in METADATA_DIRS
            if (directory / d / METADATA_FILE).is_file()
        ),
        None,
    )
    if metadata is None:
        raise DataError(
            f"{directory}: no {METADATA_FILE} found (looked in {list(METADATA_DIRS)}); point the "
            f"import at the folder that holds AxBench's generate/ output."
        )
    return AxBenchFiles(
        metadata=metadata,
        train=_rotated_parquets(directory, TRAIN_DIRS, TRAIN_STEM),
        eval=_rotated_parquets(directory, EVAL_DIRS, EVAL_STEM),
    )


def import_axbench(
    directory: str | os.PathLike, *, require_eval: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Read an AxBench task directory into (concepts, train examples, detection-eval examples).

    concepts follows store.py's "concepts" schema: genre from `concept_genres_map`, ref from
    `ref`, sae_id from the eval file's `sae_id` where present (else the index in the Neuronpedia
    ref). Both example tables follow the "examples" schema (AxBench's 7 columns; the eval file's
    sae_link/sae_id move to the concepts table). Both are checked with `validate_examples`
    (categories, known concept ids, positives per concept matching the metadata text); counts
    are not checked because they differ between releases. With `require_eval=False` a missing
    eval file gives an empty eval table (Concept16K ships training data only).
    """
    files = find_axbench_files(directory)
    concepts = load_concepts(files.metadata)
    if not files.train:
        raise DataError(
            f"{directory}: no {TRAIN_STEM}.parquet found (looked in {list(TRAIN_DIRS)}); copy "
            f"AxBench's generate/ folder, including its train_data*.parquet files."
        )
    train = conform(_read_parquets(files.train), "examples", _describe(files.train))
    if files.eval:
        eval_raw = _read_parquets(files.eval)
        concepts = _attach_sae_ids(concepts, eval_raw, files.eval[0])
        eval_df = conform(eval_raw, "examples", _describe(files.eval))
    elif require_eval:
        raise DataError(
            f"{directory}: no {EVAL_STEM}.parquet found (looked in {list(EVAL_DIRS)}); copy "
            f"AxBench's inference/ folder, or pass require_eval=False to import training data only."
        )
    else:
        eval_df = conform(_empty_examples(), "examples", "empty eval table")

    validate_examples(train, split="train", concepts=concepts, source=_describe(files.train))
    if eval_df.height:
        validate_examples(
            eval_df, split="detect_eval", concepts=concepts, source=_describe(files.eval)
        )
    return concepts, train, eval_df


def _rotated_parquets(directory: Path, subdirs: tuple[str, ...], stem: str) -> tuple[Path, ...]:
    """`<stem>.parquet` then `<stem>_<k>.parquet` by k, from the first subdir that has any."""
    pattern = re.compile(rf"^{re.escape(stem)}(?:_(\d+))?\.parquet$")
    for sub in subdirs:
        folder = directory / sub
        if not folder.is_dir():
            continue
        found = []
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1) or 0), path))
        if found:
            return tuple(p for _, p in sorted(found))
    return ()


def _read_parquets(paths: tuple[Path, ...]) -> pl.DataFrame:
    frames = []
    for path in paths:
        try:
            frames.append(pl.read_parquet(path))
        except (pl.exceptions.PolarsError, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err}).") from err
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as err:
        raise DataError(
            f"{_describe(paths)}: the rotated files have incompatible columns ({err}); re-export "
            f"them from one AxBench run."
        ) from err


def _attach_sae_ids(concepts: pl.DataFrame, eval_raw: pl.DataFrame, source: Path) -> pl.DataFrame:
    """Take each concept's sae_id from the eval file where it has one; it must be unique."""
    if "sae_id" not in eval_raw.columns or "concept_id" not in eval_raw.columns:
        return concepts
    ids = (
        eval_raw.select("concept_id", pl.col("sae_id").cast(pl.Int64, strict=False))
        .drop_nulls()
        .unique()
    )
    clash = ids.group_by("concept_id").len().filter(pl.col("len") > 1)
    if clash.height:
        cid = clash["concept_id"][0]
        values = sorted(ids.filter(pl.col("concept_id") == cid)["sae_id"].to_list())
        raise DataError(
            f"{source}: concept_id {cid} has several sae_id values {values} in column 'sae_id'; "
            f"each concept must map to one SAE feature."
        )
    joined = concepts.join(ids.rename({"sae_id": "eval_sae_id"}), on="concept_id", how="left")
    return joined.with_columns(pl.coalesce("eval_sae_id", "sae_id").alias("sae_id")).select(
        concepts.columns
    )


def _empty_examples() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "input": pl.String,
            "output": pl.String,
            "output_concept": pl.String,
            "concept_genre": pl.String,
            "category": pl.String,
            "dataset_category": pl.String,
            "concept_id": pl.Int64,
        }
    )


def _describe(paths: tuple[Path, ...]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} rotated file(s))"
