"""Typed, atomic artefact I/O.

Every Parquet artefact has a declared schema here; writers cast to it and readers check it, so a
file from an older or foreign run fails loudly instead of being misread. Every write goes to a
temporary file in the destination directory and is renamed into place, so a killed job never
leaves a file that Snakemake or a reader would take as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Columns of AxBench's released train_data.parquet / latent_eval_data.parquet (AXBENCH.md §1.5).
EXAMPLE_FIELDS = [
    pa.field("input", pa.string(), nullable=False),
    pa.field("output", pa.string(), nullable=False),
    pa.field("output_concept", pa.string(), nullable=False),
    pa.field("concept_genre", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("dataset_category", pa.string(), nullable=False),
    pa.field("concept_id", pa.int64(), nullable=False),
]

SCHEMAS: dict[str, pa.Schema] = {
    "concepts": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("concept", pa.string(), nullable=False),
            pa.field("genre", pa.string(), nullable=False),
            pa.field("ref", pa.string()),
            pa.field("sae_id", pa.int64()),
        ]
    ),
    "examples": pa.schema(EXAMPLE_FIELDS),
    "steer_prompts": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("input_id", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),  # "select" | "test"
            pa.field("instruction", pa.string(), nullable=False),
        ]
    ),
    # One row per (example, token position); `act` is the residual stream at that position.
    "activations": pa.schema(
        [
            pa.field("example_id", pa.int64(), nullable=False),
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("concept_genre", pa.string(), nullable=False),
            pa.field("category", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("token", pa.string(), nullable=False),
            pa.field("act", pa.list_(pa.float32()), nullable=False),
        ]
    ),
    # Detection scores of one method: one row per (scored concept, eval example).
    "detect_scores": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("example_id", pa.int64(), nullable=False),
            pa.field("category", pa.string(), nullable=False),
            pa.field("label", pa.int8(), nullable=False),
            pa.field("max_act", pa.float32(), nullable=False),
            pa.field("max_act_position", pa.int32(), nullable=False),
            pa.field("max_token", pa.string(), nullable=False),
            pa.field("acts", pa.list_(pa.float32()), nullable=False),
        ]
    ),
    # Imbalanced detection: each concept's max-pooled score on every "negative" eval row of every
    # concept (the pool the report samples from, AxBench §3.1).
    "pool_scores": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("example_id", pa.int64(), nullable=False),
            pa.field("max_act", pa.float32(), nullable=False),
        ]
    ),
    "detect_metrics": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("roc_auc", pa.float64()),
            pa.field("roc_auc_lo", pa.float64()),  # DeLong 95% interval
            pa.field("roc_auc_hi", pa.float64()),
            pa.field("hard_negative_accuracy", pa.float64()),
            pa.field("optimal_threshold", pa.float64()),
            pa.field("max_act", pa.float64(), nullable=False),
            pa.field("n_positive", pa.int64(), nullable=False),
            pa.field("n_negative", pa.int64(), nullable=False),
            pa.field("n_hard_negative", pa.int64(), nullable=False),
        ]
    ),
    "generations": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("concept", pa.string(), nullable=False),
            pa.field("input_id", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("factor", pa.float64()),  # null for factor-free methods
            pa.field("strength", pa.float64()),
            pa.field("instruction", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("generation", pa.string(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
        ]
    ),
    "ratings": pa.schema(
        [
            pa.field("concept_id", pa.int64(), nullable=False),
            pa.field("input_id", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("factor", pa.float64()),
            pa.field("concept_score", pa.float64()),
            pa.field("instruction_score", pa.float64()),
            pa.field("fluency_score", pa.float64()),
            pa.field("overall", pa.float64()),
            pa.field("perplexity", pa.float64()),
            pa.field("failures", pa.int64(), nullable=False),
        ]
    ),
}


class InputError(ValueError):
    """An input or artefact cannot be used; the message names the file, what is wrong and the
    fix, so a job stops with it alone (`axflow.stages.main`), without a traceback."""


class SchemaError(InputError):
    """A Parquet file does not match the schema its reader expects, or cannot be read."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; expected {schema.names}")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
        raise SchemaError(f"{where}: columns do not match the declared schema: {err}") from err


def write_table(table: pa.Table | Any, path: str | os.PathLike, schema: str) -> None:
    """Write `table` (pyarrow or polars) to `path` atomically, cast to the named schema."""
    if not isinstance(table, pa.Table):
        table = table.to_arrow()
    table = _conform(table, SCHEMAS[schema], f"writing {path}")
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike, schema: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet artefact and check it against the named schema."""
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as err:  # cut short, overwritten, or not Parquet at all
        raise SchemaError(
            f"{path}: not a readable Parquet file ({err}); it was damaged after it was written: "
            "delete it and rerun the workflow, which writes it again"
        ) from err
    expected = SCHEMAS[schema]
    if columns is not None:
        expected = pa.schema([expected.field(c) for c in columns])
    return _conform(table, expected, f"reading {path}")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal bytes."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_tensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict | None = None):
    """Write a dict of arrays/tensors as safetensors atomically; metadata values become strings."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        k: (torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v).contiguous()
        for k, v in tensors.items()
    }
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read safetensors as numpy arrays plus the string metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def read_activations(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """Token metadata (a polars DataFrame, no `act`) and the [n_tokens, d] activation matrix of
    an activations file."""
    import polars as pl

    table = read_table(path, "activations")
    act = table.column("act").combine_chunks()
    d = len(act[0]) if len(act) else 0
    matrix = act.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    return pl.from_arrow(table.drop(["act"])), matrix


def read_params_scope(params_path: str | os.PathLike) -> tuple[dict[int, str], list[int]]:
    """From a train job's params metadata (no tensor is loaded): the concepts it has no
    parameters for, with the reason, and those its config left out of scope (`max_concepts`)."""
    from safetensors import safe_open

    with safe_open(str(params_path), framework="np") as f:
        meta = f.metadata() or {}
    unmatched = {int(k): v for k, v in json.loads(meta.get("unmatched", "{}")).items()}
    return unmatched, [int(c) for c in json.loads(meta.get("out_of_scope", "[]"))]
