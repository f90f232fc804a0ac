"""Checks on input data and example tables, with errors a user can act on.

Every failure is a `DataError` whose message names the file (or source), the field and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from axflow.store import SCHEMAS, InputError

GENRES = ("text", "code", "math")
POOL_SPLITS = ("train", "test")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "train": ("positive", "negative"),
    "detect_eval": ("positive", "negative", "hard negative"),
}
# AxBench's shared training negatives carry this concept_id and output_concept (AXBENCH.md §1.3).
SHARED_NEGATIVE_ID = -1
SHARED_NEGATIVE_CONCEPT = "EEEEE"


class DataError(InputError):
    """Input data is missing, malformed or inconsistent; the message says where and what to do."""


def require_columns(df: pl.DataFrame, columns: Iterable[str], source: str, fix: str = "") -> None:
    """Raise if any of `columns` is absent from `df`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = f" {fix}" if fix else ""
        raise DataError(
            f"{source}: missing column(s) {missing} (found {df.columns}).{hint}".rstrip()
        )


def require_no_nulls(df: pl.DataFrame, columns: Iterable[str], source: str) -> None:
    """Raise on the first null in any of `columns`, naming the row."""
    for column in columns:
        nulls = df.get_column(column).is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0])
            raise DataError(
                f"{source}: column '{column}' is empty (null) in {nulls.sum()} row(s), first at "
                f"row {row + 1}; fill in '{column}' or drop those rows."
            )


def conform(df: pl.DataFrame, schema: str, source: str) -> pl.DataFrame:
    """Select and cast `df` to a store.py schema; raise DataError on missing or bad columns."""
    target: pa.Schema = SCHEMAS[schema]
    require_columns(df, target.names, source, f"The '{schema}' table needs {target.names}.")
    non_nullable = [f.name for f in target if not f.nullable]
    require_no_nulls(df, non_nullable, source)
    table = df.select(target.names).to_arrow()
    try:
        table = table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as err:
        types = {f.name: str(f.type) for f in target}
        raise DataError(
            f"{source}: columns cannot be converted to the '{schema}' schema {types}: {err}"
        ) from err
    return pl.from_arrow(table)


def check_parquet_schema(path: str | os.PathLike, schema: str) -> None:
    """Check a Parquet file's footer against a store.py schema without reading its rows: the file
    opens, has every column, and each column's type holds the schema's (text as text, whole
    numbers as integers), so an imported table's layout fails when the DAG is planned."""
    try:
        found = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"{path}: not a readable Parquet file ({err}); copy or export it again."
        ) from err
    target: pa.Schema = SCHEMAS[schema]
    missing = [name for name in target.names if name not in found.names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (found {found.names}); the '{schema}' table "
            f"needs {target.names}, so re-export the file with them."
        )
    for field in target:
        have = found.field(field.name).type
        if pa.types.is_dictionary(have):
            have = have.value_type
        if not _same_kind(have, field.type):
            raise DataError(
                f"{path}: column '{field.name}' has type {have}, but the '{schema}' table needs "
                f"{field.type}; re-export the file with '{field.name}' as {field.type}."
            )


def _same_kind(have: pa.DataType, want: pa.DataType) -> bool:
    t = pa.types
    if t.is_string(want):
        return t.is_string(have) or t.is_large_string(have) or t.is_string_view(have)
    if t.is_integer(want):
        return t.is_integer(have)
    if t.is_floating(want):
        return t.is_floating(have) or t.is_integer(have)
    return have.equals(want)


def validate_examples(
    df: pl.DataFrame,
    *,
    split: Literal["train", "detect_eval"],
    concepts: pl.DataFrame,
    expected: Mapping[str, int] | None = None,
    at_most: Mapping[str, int] | None = None,
    source: str,
) -> None:
    """Check an examples table against the concepts it should cover.

    Guarantees on return: the "examples" schema columns are present without nulls; categories
    are those allowed for `split`; genres are text/code/math; every concept_id is a known concept
    (train negatives may use the shared id -1); every concept has positives whose output_concept
    is the concept text and whose genre is the concept's genre; and, when `expected` is given
    (category -> rows per concept), every concept has exactly that many rows per category, and
    with `at_most` no concept has more rows of a category than given (hard negatives vary).
    Training negatives are counted per concept as the rows of its genre in the shared pool
    (concept_id -1) plus any rows carrying the concept's own id.
    """
    if split not in CATEGORIES:
        raise ValueError(f"split must be one of {list(CATEGORIES)}, got {split!r}")
    if isinstance(df, pa.Table):
        df = pl.from_arrow(df)
    df = conform(df, "examples", source)
    require_columns(concepts, ["concept_id", "concept", "genre"], f"{source} (concepts table)")

    allowed = CATEGORIES[split]
    bad = df.filter(~pl.col("category").is_in(allowed))
    if bad.height:
        values = sorted(bad.get_column("category").unique().to_list())
        raise DataError(
            f"{source}: column 'category' has value(s) {values} in {bad.height} row(s); "
            f"{split} examples allow only {list(allowed)}."
        )
    bad = df.filter(~pl.col("concept_genre").is_in(GENRES))
    if bad.height:
        values = sorted(bad.get_column("concept_genre").unique().to_list())
        raise DataError(
            f"{source}: column 'concept_genre' has value(s) {values} in {bad.height} row(s); "
            f"allowed genres are {list(GENRES)}."
        )

    names = dict(zip(concepts["concept_id"].to_list(), concepts["concept"].to_list(), strict=True))
    genres = dict(zip(concepts["concept_id"].to_list(), concepts["genre"].to_list(), strict=True))
    known = set(names)
    if split == "train":
        shared = df.filter(pl.col("concept_id") == SHARED_NEGATIVE_ID)
        if shared.filter(pl.col("category") != "negative").height:
            raise DataError(
                f"{source}: rows with concept_id {SHARED_NEGATIVE_ID} must all be negatives (the "
                f"shared pool); give positives the id of their concept."
            )
        known.add(SHARED_NEGATIVE_ID)
    unknown = sorted(set(df.get_column("concept_id").unique().to_list()) - known)
    if unknown:
        raise DataError(
            f"{source}: column 'concept_id' has id(s) {unknown[:10]} that are not in the concepts "
            f"table (ids {sorted(names)[:10]}{'...' if len(names) > 10 else ''}); import the "
            f"examples together with their own concept list."
        )

    positives = df.filter(pl.col("category") == "positive")
    for cid, concept in names.items():
        rows = positives.filter(pl.col("concept_id") == cid)
        label = f"concept {cid} ({concept!r})"
        if rows.height == 0:
            raise DataError(
                f"{source}: {label} has no positive examples; generate or import its data, or "
                f"drop it from the concept list."
            )
        wrong = rows.filter(pl.col("output_concept") != concept)
        if wrong.height:
            raise DataError(
                f"{source}: {wrong.height} positive row(s) of {label} have output_concept "
                f"{wrong['output_concept'][0]!r}; concept_id and concept text disagree, so the "
                f"examples belong to another concept list."
            )
        wrong = rows.filter(pl.col("concept_genre") != genres[cid])
        if wrong.height:
            raise DataError(
                f"{source}: {wrong.height} positive row(s) of {label} have concept_genre "
                f"{wrong['concept_genre'][0]!r} but the concept's genre is {genres[cid]!r}; fix "
                f"the 'genre' of the concept or the 'concept_genre' of its rows."
            )

    if expected:
        _check_counts(df, split, names, genres, expected, source)
    for category, limit in (at_most or {}).items():
        per = df.filter(pl.col("category") == category).group_by("concept_id").len()
        over = per.filter(pl.col("len") > limit)
        if over.height:
            cid, have = over.row(0)
            raise DataError(
                f"{source}: concept {cid} ({names.get(cid)!r}) has {have} {category} example(s), "
                f"more than the {limit} allowed; regenerate its data or raise the limit."
            )


def _check_counts(
    df: pl.DataFrame,
    split: str,
    names: Mapping[int, str],
    genres: Mapping[int, str],
    expected: Mapping[str, int],
    source: str,
) -> None:
    unknown = sorted(set(expected) - set(CATEGORIES[split]))
    if unknown:
        raise ValueError(f"expected counts name unknown categories {unknown} for split {split!r}")
    counts = {
        (cid, cat): n for cid, cat, n in df.group_by("concept_id", "category").len().iter_rows()
    }
    shared = {
        genre: n
        for genre, n in df.filter(pl.col("concept_id") == SHARED_NEGATIVE_ID)
        .group_by("concept_genre")
        .len()
        .iter_rows()
    }
    for cid, concept in names.items():
        for category, want in expected.items():
            have = counts.get((cid, category), 0)
            where = ""
            if split == "train" and category == "negative":
                have += shared.get(genres[cid], 0)
                where = f" (counting the shared {genres[cid]!r} negatives with concept_id -1)"
            if have != want:
                if have < want:
                    problem = f"is missing {want - have} {category} example(s)"
                else:
                    problem = f"has {have - want} {category} example(s) too many"
                raise DataError(
                    f"{source}: concept {cid} ({concept!r}) {problem}: found {have}{where}, "
                    f"expected {want}; regenerate its data or change the expected count."
                )
