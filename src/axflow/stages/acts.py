"""Stage `acts`: residual-stream activations of every example token at the configured layer."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from axflow import store
from axflow.stages._common import load_lm

log = logging.getLogger("axflow")


def activations_stage(spec: dict[str, Any]) -> None:
    from axflow.lm.extract import extract_residuals

    s = spec["slice"]
    ex = store.read_table(spec["input"]["examples"], "examples").to_pydict()
    lm = load_lm(spec, s["model"])
    pairs = list(zip(ex["input"], ex["output"], strict=True))
    cols: dict[str, list] = {f.name: [] for f in store.SCHEMAS["activations"]}
    acts: list[np.ndarray] = []
    t0, n_tok = time.time(), 0
    extracted = extract_residuals(
        lm, pairs, layer=s["layer"], progress="extract activations", **s["extraction"]
    )
    for item in extracted:
        n = len(item.positions)
        n_tok += n
        k = item.index
        cols["example_id"].extend([k] * n)
        cols["concept_id"].extend([ex["concept_id"][k]] * n)
        cols["concept_genre"].extend([ex["concept_genre"][k]] * n)
        cols["category"].extend([ex["category"][k]] * n)
        cols["position"].extend(item.positions.tolist())
        cols["token"].extend(item.tokens)
        acts.append(item.acts)
    log.info("extracted %d tokens in %.1fs", n_tok, time.time() - t0)
    matrix = np.concatenate(acts).astype(np.float32)
    cols["act"] = pa.ListArray.from_arrays(
        pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)),
        pa.array(matrix.ravel()),
    )
    table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in cols.items()})
    store.write_table(table, spec["output"]["acts"], "activations")
