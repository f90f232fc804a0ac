"""Loaders for concept lists, seed instruction pools and steering instructions.

Each loader reads a user file (.jsonl, .json, .csv, .parquet; .txt where one text per line makes
sense) or, given None, the built-in defaults in `builtin/`. It returns a polars DataFrame with the
documented columns, trimmed text and checked values, or raises `DataError` naming the file, the
row, the field and the fix. Samplers are deterministic functions of their seed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from axflow.data.records import (
    WHERE,
    clean_choice,
    clean_int,
    clean_text,
    first_present,
    read_records,
    reject_duplicates,
    reject_long,
    reject_urls,
    user_columns,
)
from axflow.data.validate import GENRES, POOL_SPLITS, DataError, conform, require_columns

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_CONCEPTS = BUILTIN_DIR / "concepts.jsonl"
BUILTIN_INSTRUCTIONS = BUILTIN_DIR / "instructions.jsonl"
BUILTIN_STEERING_INSTRUCTIONS = BUILTIN_DIR / "steering_instructions.jsonl"

# Accepted spellings of a field, first match wins: AxBench and Neuronpedia exports use these.
CONCEPT_ALIASES = ("concept", "description")
REF_ALIASES = ("ref", "url", "neuronpedia_url", "sae_link")
INSTRUCTION_ALIASES = ("instruction", "input")
# Public instruction datasets (Dolly, GSM8K, code-alpaca): the text, and columns whose content
# the instruction would need (such rows are dropped, as AxBench does), and AxBench's length cap.
SEED_TEXT_ALIASES = ("instruction", "question", "prompt")
SEED_CONTEXT_COLUMNS = ("context", "input")
MAX_SEED_CHARS = 500
# A concept is a short description (AxBench's are a phrase; ConceptFD's a few sentences); a longer
# one is a file with lost line breaks or the wrong column, and would flood every prompt.
MAX_CONCEPT_CHARS = 2000
# A Neuronpedia "explanations" export: one object per (model, SAE, feature) explanation.
NEURONPEDIA_FIELDS = ("modelId", "layer", "index")
NEURONPEDIA_URL = "https://www.neuronpedia.org/{}/{}/{}"  # modelId, layer, index
# Row-location column carried through loading so errors can point at a line; dropped at the end.
# A Neuronpedia feature URL ends with the SAE feature index: .../<model>/<sae>/<index>.
_NEURONPEDIA_INDEX = re.compile(r"neuronpedia\.org/[^/]+/[^/]+/(\d+)/?$")

PathLike = str | os.PathLike
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Public loaders


def load_concepts(path: PathLike | None = None, default_genre: str = "text") -> pl.DataFrame:
    """Load a concept list as the store.py "concepts" table.

    Columns: concept_id (int64; from the file if it has `concept_id`, else 0..N-1 in file order),
    concept (non-empty, unique), genre (text/code/math, or `default_genre` where the file gives
    none; "auto" there asks the synthesis writer, as AxBench does), ref (nullable; from
    `ref`/`url`/`neuronpedia_url`), sae_id (nullable; from `sae_id`, else the feature index at
    the end of a Neuronpedia ref). AxBench metadata.jsonl files load too (genre from
    `concept_genres_map`).
    """
    source = Path(path) if path is not None else BUILTIN_CONCEPTS
    df = read_records(source, text_column="concept", record_hook=_genre_from_genres_map)
    concept_col = first_present(df, CONCEPT_ALIASES)
    if concept_col is None:
        raise DataError(
            f"{source}: missing column 'concept' (found {user_columns(df)}); add a 'concept' "
            f"(or 'description') column with one concept description per row."
        )
    # Long (ConceptFD-style) descriptions may span lines; prompts and ids want one line.
    text = clean_text(df, concept_col, source, what="concept description")
    df = df.with_columns(text.str.replace_all(r"\s+", " "))
    df = df.rename({concept_col: "concept"}) if concept_col != "concept" else df
    reject_urls(df, source)
    reject_long(df, "concept", MAX_CONCEPT_CHARS, source, what="concept description")
    if all(c in df.columns for c in NEURONPEDIA_FIELDS):
        df = _neuronpedia_features(df, source)
    reject_duplicates(df, ["concept"], source, what="concept")

    genre = clean_choice(df, "genre", (*GENRES, "auto"), source, default=default_genre)
    ref_col = first_present(df, REF_ALIASES)
    if ref_col is None:
        ref = pl.Series("ref", [None] * df.height, dtype=pl.String)
    else:
        ref = df.get_column(ref_col).cast(pl.String).str.strip_chars().alias("ref")
        ref = ref.replace({"": None, "null": None, "None": None})
    sae_id = pl.Series("sae_id", [sae_id_from_ref(r) for r in ref.to_list()], dtype=pl.Int64)
    if "sae_id" in df.columns:
        sae_id = clean_int(df, "sae_id", source, required=False).fill_null(sae_id)
    if "concept_id" in df.columns:
        concept_id = clean_int(df, "concept_id", source, required=True)
        negative = concept_id < 0
        if negative.any():
            row = df.get_column(WHERE)[int(negative.arg_true()[0])]
            raise DataError(
                f"{source}: {row} has a negative 'concept_id'; concept ids must be 0 or more "
                f"(-1 is reserved for shared negatives)."
            )
        reject_duplicates(df.with_columns(concept_id), ["concept_id"], source, what="concept_id")
    else:
        concept_id = pl.Series("concept_id", range(df.height), dtype=pl.Int64)

    out = pl.DataFrame([concept_id, df.get_column("concept"), genre, ref, sae_id])
    return conform(out, "concepts", str(source))


def load_instruction_pool(path: PathLike | None = None) -> pl.DataFrame:
    """Load seed instructions as a DataFrame[genre, split, instruction].

    genre is text/code/math, split is train/test, instruction is non-empty (`input` is accepted
    as the column name, as in AxBench's seed_instructions). No instruction appears twice within
    a genre, so train and test never share an instruction.
    """
    source = Path(path) if path is not None else BUILTIN_INSTRUCTIONS
    df = read_records(source)
    col = first_present(df, INSTRUCTION_ALIASES)
    if col is None:
        raise DataError(
            f"{source}: missing column 'instruction' (found {user_columns(df)}); add an "
            f"'instruction' column with one seed instruction per row."
        )
    for field, allowed in (("genre", GENRES), ("split", POOL_SPLITS)):
        if field not in df.columns:
            raise DataError(
                f"{source}: missing column '{field}' (found {user_columns(df)}); give every "
                f"instruction a '{field}', one of {list(allowed)}."
            )
    df = df.with_columns(
        clean_choice(df, "genre", GENRES, source),
        clean_choice(df, "split", POOL_SPLITS, source),
        clean_text(df, col, source, what="instruction").alias("instruction"),
    )
    reject_duplicates(df, ["genre", "instruction"], source, what="instruction")
    return df.select("genre", "split", "instruction")


def instruction_files(spec: Any, resolve: Callable[[str], Path | None]) -> dict[str, Path]:
    """The files behind `dataset.instructions`: {"pool": file}, {genre: file, ...} or built-in."""
    if spec is None:
        return {"pool": BUILTIN_INSTRUCTIONS}
    if isinstance(spec, str):
        return {"pool": resolve(spec)}
    if isinstance(spec, Mapping) and spec and set(spec) <= set(GENRES):
        return {genre: resolve(str(path)) for genre, path in spec.items()}
    raise DataError(
        f"dataset.instructions is {spec!r}; give null (built-in pool), one pool file with genre, "
        f"split and instruction columns, or a mapping of genres {list(GENRES)} to dataset files "
        f"(Dolly / GSM8K / code-alpaca style jsonl, json, csv or parquet)."
    )


def load_instructions(files: Mapping[str, Path]) -> pl.DataFrame:
    """The seed pool from `instruction_files`: one pool file, or one dataset file per genre."""
    if "pool" in files:
        return load_instruction_pool(files["pool"])
    return pl.concat([load_genre_instructions(path, genre) for genre, path in files.items()])


def load_genre_instructions(path: PathLike, genre: str) -> pl.DataFrame:
    """Seed instructions of one genre from a public dataset file, filtered as AxBench does.

    The text comes from `instruction`, `question` (GSM8K) or `prompt`. Rows that need extra
    context (a non-empty `context` as in Dolly, or `input` as in code-alpaca) are dropped, and so
    are texts of MAX_SEED_CHARS or more and repeats. A `split` column (train/test) is used where
    present; otherwise the first half of the kept rows is train and the second half test
    (AxBench: first 1000 / next 1000).
    """
    source = Path(path)
    df = read_records(source)
    col = first_present(df, SEED_TEXT_ALIASES)
    if col is None:
        raise DataError(
            f"{source}: no instruction column (found {user_columns(df)}); the {genre} dataset "
            f"needs one of {list(SEED_TEXT_ALIASES)}."
        )
    text = df.get_column(col).cast(pl.String).str.strip_chars()
    keep = text.is_not_null() & (text != "") & (text.str.len_chars() < MAX_SEED_CHARS)
    for extra in SEED_CONTEXT_COLUMNS:
        if extra in df.columns and extra != col:
            ctx = df.get_column(extra).cast(pl.String).str.strip_chars()
            keep = keep & (ctx.is_null() | (ctx == ""))
    df = df.with_columns(text.alias("instruction")).filter(keep)
    df = df.unique(subset=["instruction"], keep="first", maintain_order=True)
    if df.height < 2:
        raise DataError(
            f"{source}: only {df.height} usable {genre} instruction(s) after dropping rows with "
            f"context, empty ones and those of {MAX_SEED_CHARS}+ characters; use a larger file."
        )
    if "split" in df.columns:
        split = clean_choice(df, "split", POOL_SPLITS, source)
    else:
        half = (df.height + 1) // 2
        split = pl.Series("split", ["train"] * half + ["test"] * (df.height - half))
    return df.select(pl.lit(genre).alias("genre"), split.alias("split"), "instruction")


def load_steering_instructions(path: PathLike | None = None) -> pl.DataFrame:
    """Load AlpacaEval-style steering instructions as DataFrame[instruction], unique, non-empty."""
    source = Path(path) if path is not None else BUILTIN_STEERING_INSTRUCTIONS
    df = read_records(source, text_column="instruction")
    col = first_present(df, INSTRUCTION_ALIASES)
    if col is None:
        raise DataError(
            f"{source}: missing column 'instruction' (found {user_columns(df)}); add an "
            f"'instruction' column with one user instruction per row."
        )
    df = df.with_columns(clean_text(df, col, source, what="instruction").alias("instruction"))
    reject_duplicates(df, ["instruction"], source, what="instruction")
    return df.select("instruction")


# --------------------------------------------------------------------------------------------
# Samplers


def sample_steering_prompts(
    concepts: pl.DataFrame,
    instructions: pl.DataFrame | Sequence[str],
    n_per_concept: int,
    seed: int,
) -> pl.DataFrame:
    """Draw `n_per_concept` distinct instructions per concept, as the "steer_prompts" table.

    Each concept's draw uses its own generator seeded by (seed, concept_id), so it does not depend
    on which other concepts are present (AxBench samples with random_state=concept_id).
    input_id runs 0..n-1 in draw order; the first ceil(n/2) ids are split "select" (factor
    selection), the rest "test" (held out).
    """
    pool = _instruction_list(instructions)
    if n_per_concept < 2:
        raise ValueError(
            f"n_per_concept must be at least 2 so both the select and test splits get an "
            f"instruction; got {n_per_concept}."
        )
    if len(pool) < n_per_concept:
        raise DataError(
            f"steering instructions: the pool has {len(pool)} instruction(s) but "
            f"n_per_concept={n_per_concept} distinct ones are needed per concept; add "
            f"instructions to the steering file or lower the number per concept."
        )
    require_columns(concepts, ["concept_id"], "sample_steering_prompts (concepts table)")
    n_select = n_per_concept - n_per_concept // 2
    rows: dict[str, list[Any]] = {"concept_id": [], "input_id": [], "split": [], "instruction": []}
    for concept_id in concepts.get_column("concept_id").to_list():
        rng = np.random.default_rng([seed, concept_id])
        picks = rng.choice(len(pool), size=n_per_concept, replace=False)
        for input_id, index in enumerate(picks.tolist()):
            rows["concept_id"].append(concept_id)
            rows["input_id"].append(input_id)
            rows["split"].append("select" if input_id < n_select else "test")
            rows["instruction"].append(pool[index])
    df = pl.DataFrame(
        rows,
        schema={
            "concept_id": pl.Int64,
            "input_id": pl.Int64,
            "split": pl.String,
            "instruction": pl.String,
        },
    )
    return conform(df, "steer_prompts", "steering prompts")


def split_pool(
    pool: pl.DataFrame,
    genre: str,
    split: str,
    n: int,
    seed: int | Sequence[int],
    exclude: Iterable[str] = (),
) -> list[str]:
    """Return `n` distinct instructions of one genre/split, deterministic in `seed`.

    Instructions in `exclude` are never drawn. `seed` may be an int or a sequence of ints such as
    (seed, concept_id) for an independent stream per concept.
    """
    require_columns(pool, ["genre", "split", "instruction"], "instruction pool")
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    excluded = set(exclude)
    subset = pool.filter((pl.col("genre") == genre) & (pl.col("split") == split))
    available = subset.get_column("instruction").to_list()
    candidates = [s for s in available if s not in excluded]
    if len(candidates) < n:
        dropped = len(available) - len(candidates)
        note = f" after excluding {dropped} already used" if dropped else ""
        raise DataError(
            f"instruction pool: genre '{genre}', split '{split}' has {len(candidates)} "
            f"instruction(s){note}, but {n} are needed; add {genre}/{split} instructions to the "
            f"pool file or lower the number of examples."
        )
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(candidates), size=n, replace=False)
    return [candidates[i] for i in picks.tolist()]


def sae_id_from_ref(ref: str | None) -> int | None:
    """The SAE feature index at the end of a Neuronpedia feature URL, or None for other refs."""
    if not ref:
        return None
    match = _NEURONPEDIA_INDEX.search(ref)
    return int(match.group(1)) if match else None


def _neuronpedia_features(df: pl.DataFrame, source: Path) -> pl.DataFrame:
    """One concept per feature: its first explanation, with the feature's Neuronpedia URL as ref.

    As in AxBench, later explanations of a feature are dropped; so is an explanation whose text
    an earlier feature already has (a concept must name one feature).
    """
    for f in NEURONPEDIA_FIELDS:
        if df.get_column(f).null_count():
            row = df.get_column(WHERE)[int(df.get_column(f).is_null().arg_true()[0])]
            raise DataError(
                f"{source}: {row} has no '{f}'; a Neuronpedia export needs modelId, layer and "
                f"index on every explanation."
            )
    keyed = df.with_columns(pl.col(f).cast(pl.String) for f in NEURONPEDIA_FIELDS)
    keyed = keyed.unique(subset=list(NEURONPEDIA_FIELDS), keep="first", maintain_order=True)
    keyed = keyed.unique(subset=["concept"], keep="first", maintain_order=True)
    if keyed.height < df.height:
        log.info(
            "%s: kept %d of %d explanations (first per feature, first per text)",
            source,
            keyed.height,
            df.height,
        )
    ref = pl.format(NEURONPEDIA_URL, *NEURONPEDIA_FIELDS)
    if first_present(keyed, REF_ALIASES) is None:
        keyed = keyed.with_columns(ref.alias("ref"))
    if "sae_id" not in keyed.columns:
        keyed = keyed.with_columns(pl.col("index").alias("sae_id"))
    return keyed


def _genre_from_genres_map(record: dict) -> dict:
    """Map AxBench's {"concept_genres_map": {concept: [genre, ...]}} to a plain "genre" field."""
    genres_map = record.pop("concept_genres_map", None)
    if "genre" not in record and isinstance(genres_map, dict) and genres_map:
        concept = record.get("concept", record.get("description"))
        genres = genres_map.get(concept, next(iter(genres_map.values())))
        if isinstance(genres, list):
            genres = genres[0] if genres else None
        record["genre"] = genres
    return record


def _instruction_list(instructions: pl.DataFrame | Sequence[str]) -> list[str]:
    if isinstance(instructions, pl.DataFrame):
        require_columns(instructions, ["instruction"], "steering instructions")
        return instructions.get_column("instruction").to_list()
    return list(instructions)
