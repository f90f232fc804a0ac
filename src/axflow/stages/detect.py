"""Stage `detect`: score the detection-eval examples with a trained method; per-example
scores, the imbalanced pool's scores, and per-concept metrics (ROC AUC, hard negatives)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from axflow import store
from axflow.stages.train import concept_params, read_examples, read_tokens, runtime


def detect_stage(spec: dict[str, Any]) -> None:
    from axflow.methods import build_method
    from axflow.protocol.detection import concept_metrics, pooled_scores

    s = spec["slice"]["train"]  # detect's own slice: the train slice and the detect code
    method = build_method(s["method"], runtime(spec, s))
    tensors, _ = store.read_tensors(spec["input"]["params"])
    meta, X = read_tokens(spec)
    examples = read_examples(spec["input"]["examples"])
    concepts = {
        c["concept_id"]: c["concept"]
        for c in store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    }
    pool_idx = np.flatnonzero((meta["category"] == "negative").to_numpy())
    token_examples = meta["example_id"].to_numpy()
    score_rows, metric_rows, pool_rows = [], [], []
    for row, cid in enumerate(tensors["concept_id"].tolist()):
        params = concept_params(tensors, row)
        idx = np.flatnonzero((meta["concept_id"] == cid).to_numpy())
        ex_ids, maxes, argmax, scores = pooled_scores(
            method, params, X[idx], token_examples[idx], examples, concepts[cid]
        )
        if method.detect_level == "token":  # imbalanced pool: every concept's negatives
            pool_ids, pool_max, _, _ = pooled_scores(
                method, params, X[pool_idx], token_examples[pool_idx], examples, concepts[cid]
            )
            pool_rows += [
                {"concept_id": cid, "example_id": int(e), "max_act": float(v)}
                for e, v in zip(pool_ids, pool_max, strict=True)
            ]
        cats = np.array([examples[k].category for k in ex_ids])
        example_of_token = token_examples[idx]
        positions = meta["position"].to_numpy()[idx] if scores is not None else None
        tokens = meta["token"].to_numpy()[idx] if scores is not None else None
        for j, ex in enumerate(ex_ids):
            record = {
                "concept_id": cid,
                "example_id": int(ex),
                "category": cats[j],
                "label": int(cats[j] == "positive"),
                "max_act": float(maxes[j]),
                "max_act_position": -1,
                "max_token": "",
                "acts": [],
            }
            if scores is not None:
                sel = np.flatnonzero(example_of_token == ex)
                best = sel[int(argmax[j])]  # max_pool: offset of the max within the example
                record.update(
                    max_act_position=int(positions[best]),
                    max_token=str(tokens[best]),
                    acts=np.round(scores[sel], 3).tolist(),
                )
            score_rows.append(record)
        metric_rows.append({"concept_id": cid, **concept_metrics(cats, maxes)})
    out = spec["output"]
    store.write_table(
        pl.DataFrame(score_rows, schema_overrides={"acts": pl.List(pl.Float32)}),
        out["scores"],
        "detect_scores",
    )
    store.write_table(
        pl.DataFrame(
            pool_rows,
            schema={"concept_id": pl.Int64, "example_id": pl.Int64, "max_act": pl.Float32},
        ),
        out["pool"],
        "pool_scores",
    )
    store.write_table(pl.DataFrame(metric_rows), out["metrics"], "detect_metrics")
    store.write_json(spec["slice"], out["config"])
