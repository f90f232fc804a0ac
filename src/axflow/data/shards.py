"""The run's concepts, split into shards whose identity is their content.

The plan reads the concept list when the DAG is built and puts each shard's concept ids and a
digest of their records into that shard's data slice. Every stage key downstream nests it, so a
new concept changes one shard's keys and recomputes that shard only; the data job re-reads the
list and refuses to run if it no longer matches the digest (the file changed after planning).
A concept's shard is a hash of its description, so it keeps its shard when others come and go.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from axflow.data.validate import DataError

IDENTITY = ["concept_id", "concept", "genre"]  # what the digest covers


def resolve(path: str | None) -> Path | None:
    """A configured file path: absolute, relative to the working directory, or to the repo."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    from axflow.layout import REPO_ROOT

    return REPO_ROOT / p


def source_concepts(dataset: dict[str, Any]) -> pl.DataFrame:
    """Every concept the configured source offers ("concepts" table), before any cap."""
    from axflow.data import sources

    if dataset["source"] == "axbench":
        from axflow.data.axbench import find_axbench_files

        files = find_axbench_files(resolve(dataset["axbench_dir"]))
        return sources.load_concepts(files.metadata)
    return sources.load_concepts(resolve(dataset["concepts"]), dataset.get("genre", "text"))


def run_concepts(dataset: dict[str, Any]) -> pl.DataFrame:
    """The configured concept list ("concepts" table), `dataset.max_concepts` applied."""
    concepts = source_concepts(dataset)
    if dataset.get("max_concepts"):
        concepts = concepts.head(dataset["max_concepts"])
    return concepts


def scope(
    offered: int, max_concepts: int | None, shard: dict[str, Any] | None = None
) -> dict[str, Any]:
    """How much of its source a run covers, for "N of M concepts" lines.

    `offered` is the number of concepts the source holds (`source_concepts(...).height`);
    `run_concepts` is what `dataset.max_concepts` leaves of them (the first N, in file order);
    given a shard (an element of `split`), `shard_concepts` is its share of the run.
    """
    out: dict[str, Any] = {
        "source_concepts": offered,
        "run_concepts": min(offered, max_concepts) if max_concepts else offered,
        "max_concepts": max_concepts or None,
    }
    if shard is not None:
        out["shard_concepts"] = len(shard["ids"])
    return out


def dataset_scope(dataset: dict[str, Any]) -> dict[str, Any]:
    """`scope` of a composed `dataset` config: reads the concept list, as planning does."""
    return scope(source_concepts(dataset).height, dataset.get("max_concepts"))


def shard_of(concept: str, n_shards: int) -> int:
    return int.from_bytes(hashlib.sha256(concept.encode()).digest()[:8], "little") % n_shards


def digest(concepts: pl.DataFrame) -> str:
    records = concepts.select(IDENTITY).sort("concept_id").to_dicts()
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def split(concepts: pl.DataFrame, n_shards: int) -> list[dict[str, Any]]:
    """Non-empty shards in index order, each {"shard", "ids", "digest"} (the data slice part)."""
    index = pl.Series([shard_of(c, n_shards) for c in concepts["concept"]], dtype=pl.Int64)
    shards = []
    for s in range(n_shards):
        part = concepts.filter(index == s)
        if part.height:
            ids = sorted(part["concept_id"].to_list())
            shards.append({"shard": s, "of": n_shards, "ids": ids, "digest": digest(part)})
    return shards


def select(concepts: pl.DataFrame, shard: dict[str, Any], source: str) -> pl.DataFrame:
    """The shard's rows of `concepts`, checked against the digest taken when the DAG was built."""
    part = concepts.filter(pl.col("concept_id").is_in(shard["ids"]))
    if part.height != len(shard["ids"]) or digest(part) != shard["digest"]:
        raise DataError(
            f"{source}: the concept list changed after the workflow was planned (shard "
            f"{shard['shard']} of {shard['of']}); run snakemake again so it plans the new list."
        )
    return part


def file_digest(path: Path) -> str:
    """Content hash of an input file, so editing it reruns what reads it (the path alone won't)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
