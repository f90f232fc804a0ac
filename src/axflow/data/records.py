"""Reading user-given table files (.jsonl, .json, .csv, .parquet, .txt) into clean columns.

Every row keeps where it came from (`WHERE`: "line 7", "data row 3"), so each error names the
file, the row and the field, and says how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl

from axflow.data.validate import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
WHERE = "__where"
PathLike = str | Path


def read_records(
    path: PathLike,
    *,
    text_column: str | None = None,
    record_hook: Callable[[dict], dict] | None = None,
) -> pl.DataFrame:
    """Read a table file into a DataFrame plus a row-location column used in error messages.

    .jsonl (one object per line), .json (a list of objects), .csv (header row; read as text),
    .parquet, and, when `text_column` is given, .txt (one value per non-blank line).
    `record_hook` rewrites each JSON object before the table is built.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    allowed = SUFFIXES if text_column else tuple(s for s in SUFFIXES if s != ".txt")
    if suffix not in allowed:
        raise DataError(
            f"{path}: unknown file extension '{suffix}'; use one of {list(allowed)} "
            f"(rename the file or convert it)."
        )
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path in the config.")
    if suffix in (".jsonl", ".json"):
        records, where = read_json_records(path, jsonl=suffix == ".jsonl")
        if record_hook is not None:
            records = [record_hook(r) for r in records]
        try:
            df = pl.DataFrame(records, infer_schema_length=None) if records else pl.DataFrame()
        except (pl.exceptions.PolarsError, TypeError, ValueError) as err:
            raise DataError(
                f"{path}: a field has values of different types across rows ({err}); use one "
                f"type per field."
            ) from err
    elif suffix == ".csv":
        read_utf8(path)  # polars' own message would not say how to fix the encoding
        try:
            df = pl.read_csv(path, infer_schema=False)
        except pl.exceptions.PolarsError as err:
            raise DataError(
                f"{path}: not a readable CSV file ({err}); write a header row and quote fields "
                f"that contain commas."
            ) from err
        where = [f"data row {i + 1}" for i in range(df.height)]
    elif suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err}).") from err
        where = [f"row {i + 1}" for i in range(df.height)]
    else:  # .txt
        lines = read_utf8(path).splitlines()
        kept = [(i, s) for i, s in enumerate(lines) if s.strip()]
        df = pl.DataFrame({text_column: [s for _, s in kept]}, schema={text_column: pl.String})
        where = [f"line {i + 1}" for i, _ in kept]
    if df.height == 0:
        raise DataError(f"{path}: the file has no rows; add at least one row.")
    return df.with_columns(pl.Series(WHERE, where, dtype=pl.String))


def read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the "
            f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 old > new`)."
        ) from None


def read_json_records(path: Path, *, jsonl: bool) -> tuple[list[dict], list[str]]:
    text = read_utf8(path)
    records: list[dict] = []
    where: list[str] = []
    if jsonl:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}: line {number} is not valid JSON ({err.msg}); write one JSON object "
                    f"per line."
                ) from err
            records.append(obj)
            where.append(f"line {number}")
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the file must hold a "
                f"list of objects."
            ) from err
        if not isinstance(data, list):
            raise DataError(
                f"{path}: expected a JSON list of objects, found {type(data).__name__}; use a "
                f"list, or one object per line in a .jsonl file."
            )
        records = data
        where = [f"item {i + 1}" for i in range(len(data))]
    for obj, loc in zip(records, where, strict=True):
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}: {loc} is a JSON {type(obj).__name__}, not an object; write each row as "
                f'{{"field": value, ...}}.'
            )
    return records, where


# --------------------------------------------------------------------------------------------
# Column cleaning


def first_present(df: pl.DataFrame, names: Iterable[str]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def user_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c != WHERE]


def clean_text(df: pl.DataFrame, column: str, source: Path, *, what: str) -> pl.Series:
    """`column` as trimmed strings; raise on a null or blank entry, naming its row."""
    values = df.get_column(column)
    if values.dtype != pl.String:
        if values.dtype.is_nested() or values.dtype == pl.Object:
            raise DataError(
                f"{source}: column '{column}' holds {values.dtype} values; it must hold text."
            )
        values = values.cast(pl.String)
    values = values.str.strip_chars()
    blank = values.is_null() | (values == "")
    if blank.any():
        row = df.get_column(WHERE)[int(blank.arg_true()[0])]
        raise DataError(
            f"{source}: {row} has an empty '{column}' ({int(blank.sum())} such row(s)); write "
            f"the {what} there or delete the row."
        )
    return values


def clean_choice(
    df: pl.DataFrame,
    column: str,
    allowed: Sequence[str],
    source: Path,
    default: str | None = None,
) -> pl.Series:
    """`column` lower-cased and checked against `allowed`; nulls become `default` if given."""
    if column not in df.columns:
        return pl.Series(column, [default] * df.height, dtype=pl.String)
    values = df.get_column(column).cast(pl.String).str.strip_chars().str.to_lowercase()
    if default is not None:
        values = values.fill_null(default)
    bad = values.is_null() | ~values.is_in(list(allowed))
    if bad.any():
        i = int(bad.arg_true()[0])
        value = df.get_column(column)[i]
        raise DataError(
            f"{source}: {df.get_column(WHERE)[i]} has {column} {value!r}; the '{column}' field "
            f"must be one of {list(allowed)}."
        )
    return values


def clean_int(df: pl.DataFrame, column: str, source: Path, *, required: bool) -> pl.Series:
    """`column` as int64; raise on values that are not whole numbers (or on nulls if required)."""
    raw = df.get_column(column)
    if raw.dtype == pl.String:
        raw = raw.str.strip_chars().replace({"": None})
    values = raw.cast(pl.Int64, strict=False)
    bad = values.is_null() & raw.is_not_null()
    if required:
        bad = bad | values.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{source}: {df.get_column(WHERE)[i]} has {column} {raw[i]!r}; the '{column}' field "
            f"must be a whole number{'' if required else ' or empty'}."
        )
    return values


def reject_duplicates(df: pl.DataFrame, key: list[str], source: Path, *, what: str) -> None:
    dup = df.select(*key, WHERE).with_columns(pl.struct(key).is_duplicated().alias("__dup"))
    dup = dup.filter(pl.col("__dup"))
    if dup.height:
        first = dup.row(0, named=True)
        same = dup.filter(pl.all_horizontal([pl.col(k) == first[k] for k in key]))
        rows = ", ".join(same.get_column(WHERE).to_list()[:5])
        value = first[key[-1]]
        raise DataError(
            f"{source}: the {what} {value!r} appears more than once ({rows}); the '{key[-1]}' "
            f"field must be unique{' within a genre' if 'genre' in key else ''}, so remove or "
            f"reword the duplicates."
        )


def reject_long(df: pl.DataFrame, column: str, limit: int, source: Path, *, what: str) -> None:
    lengths = df.get_column(column).str.len_chars()
    long = lengths > limit
    if long.any():
        i = int(long.arg_true()[0])
        raise DataError(
            f"{source}: {df.get_column(WHERE)[i]} has a {what} of {lengths[i]} characters "
            f"({int(long.sum())} such row(s)), over the {limit} allowed in '{column}'; shorten "
            f"it, or check that the file holds one {what} per line or row."
        )


def reject_urls(df: pl.DataFrame, source: Path) -> None:
    """A concept that is only a URL has no description to synthesize from (and none offline)."""
    urls = df.get_column("concept").str.contains(r"^https?://\S+$")
    if urls.any():
        row = df.get_column(WHERE)[int(urls.arg_true()[0])]
        raise DataError(
            f"{source}: {row} is a URL, not a concept description ({int(urls.sum())} such "
            f"row(s)); descriptions cannot be fetched offline, so export them (Neuronpedia's "
            f"explanations JSON, or a CSV with 'description,url' columns)."
        )
