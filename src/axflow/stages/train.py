"""Stage `train`: fit a method per concept on cached activations; the parameters of every
concept are stacked in one safetensors file. Also the readers detect and steer share with it:
the method's runtime, the examples as text, one concept's parameters."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from axflow import store

log = logging.getLogger("axflow")


def runtime(spec: dict[str, Any], train_slice: dict[str, Any]):
    """The method's `Runtime`: the job's model (loaded lazily) at the slice's layer."""
    from axflow.layout import train_source
    from axflow.methods import Runtime

    source = train_source(train_slice)
    mcfg = source["model"]["model"]
    model = spec["input"].get("model")
    return Runtime(model, layer=source.get("layer"), dtype=mcfg["dtype"], chat=mcfg["chat"])


def read_tokens(spec: dict[str, Any]):
    """(token metadata, activations) of the job's examples: the cached activations or, for a
    method that reads none, one zero-width row per example (its id, concept, category, genre)."""
    if "acts" in spec["input"]:
        return store.read_activations(spec["input"]["acts"])
    import polars as pl

    ex = pl.from_arrow(store.read_table(spec["input"]["examples"], "examples"))
    meta = ex.select("concept_id", "category", "concept_genre").with_row_index("example_id")
    meta = meta.with_columns(pl.col("example_id").cast(pl.Int64))
    return meta, np.zeros((meta.height, 0), np.float32)


def read_examples(path: str):
    """Rows of an examples file as `Example`s, indexed by example id (= row number)."""
    from axflow.methods import Example

    ex = store.read_table(path, "examples").to_pydict()
    return [
        Example(k, ins, out, int(cat == "positive"), cat)
        for k, (ins, out, cat) in enumerate(
            zip(ex["input"], ex["output"], ex["category"], strict=True)
        )
    ]


def concept_params(tensors: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    """Row `row` of every stacked parameter of a train job's output (one concept's)."""
    return {k: v[row] for k, v in tensors.items() if k != "concept_id"}


def train_stage(spec: dict[str, Any]) -> None:
    from axflow.methods import TokenBatch, Unmatched, build_method
    from axflow.protocol.training import concept_rows

    s = spec["slice"]
    method = build_method(s["method"], runtime(spec, s))
    concepts = store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    meta, X = read_tokens(spec)
    examples = read_examples(spec["input"]["examples"])
    example_ids = meta["example_id"].to_numpy()

    def batch(rows: np.ndarray, positive: np.ndarray) -> TokenBatch:
        """Tokens `rows` labelled by `positive` (one flag per row), with their examples as text."""
        positive_ids = set(example_ids[rows][positive].tolist())
        return TokenBatch(
            acts=X[rows],
            example=example_ids[rows],
            label=positive.astype(np.int8),
            examples=[
                dataclasses.replace(examples[k], label=int(k in positive_ids))
                for k in np.unique(example_ids[rows]).tolist()
            ],
        )

    t0 = time.time()
    method.setup(batch(np.arange(len(meta)), (meta["category"] == "positive").to_numpy()))
    log.info("setup in %.1fs", time.time() - t0)

    limit = s["method"].get("max_concepts")
    # A method that reads no negatives has no `training` in its slice (axflow.plan): its fit
    # ignores them, so the genre's few are handed over.
    negatives = s["training"]["negatives"] if "training" in s else "genre"
    stacked: dict[str, list[np.ndarray]] = {}
    trained, unmatched, seconds, out_of_scope = [], {}, {}, []
    for n, c in enumerate(concepts):
        cid = c["concept_id"]
        if limit is not None and n >= limit:  # by config: the report compares on the subset
            unmatched[cid] = f"not trained: method.{s['method_name']}.max_concepts={limit}"
            out_of_scope.append(cid)
            continue
        rows, positive = concept_rows(
            meta["concept_id"].to_numpy(),
            meta["category"].to_numpy(),
            meta["concept_genre"].to_numpy(),
            cid,
            c["genre"],
            negatives,
        )
        t0 = time.time()
        try:
            data = batch(rows, positive)
            data.sae_id = c.get("sae_id")  # the concept's own SAE feature, if its data names one
            params = method.fit(data, concept=c["concept"], seed=s["seed"])
        except Unmatched as err:
            unmatched[cid] = str(err)
            log.warning("concept %s (%s): unmatched: %s", cid, c["concept"], err)
            continue
        seconds[cid] = round(time.time() - t0, 2)
        log.info("concept %s trained in %.1fs", cid, seconds[cid])
        trained.append(cid)
        for k, v in params.items():
            v = np.asarray(v)
            stacked.setdefault(k, []).append(v if v.dtype == np.float16 else v.astype(np.float32))
    tensors = {k: np.stack(v) for k, v in stacked.items()}
    tensors["concept_id"] = np.array(trained, dtype=np.int64)
    metadata = {
        "method": s["method_name"],
        "unmatched": unmatched,
        "out_of_scope": out_of_scope,
        "fit_seconds": seconds,
    }
    store.write_tensors(tensors, spec["output"]["params"], metadata=metadata)
    store.write_json(s, spec["output"]["config"])
