"""Stage `detect`: score the detection-eval examples with a trained method; per-example
scores, the imbalanced pool's scores, and per-concept metrics (ROC AUC, hard negatives)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from axflow import store
from axflow.stages.train import concept_params, read_examples, runtime


def _pooled_scores(method, params, meta, X, idx, examples, concept):
    """(example ids, max-pooled scores, argmax token offsets or None, token scores or None)."""
    if method.detect_level == "sequence":
        ex_ids = np.unique(meta["example_id"].to_numpy()[idx])
        scores = method.sequence_scores(params, [examples[k] for k in ex_ids], concept=concept)
        return ex_ids, np.asarray(scores, np.float32), None, None
    from axflow.metrics.detection import max_pool

    scores = method.token_scores(params, X[idx]).astype(np.float32)
    token_examples = meta["example_id"].to_numpy()[idx]
    maxes, argmax = max_pool(scores, token_examples)
    return np.unique(token_examples), maxes, argmax, scores


def detect_stage(spec: dict[str, Any]) -> None:
    from axflow.methods import build_method
    from axflow.metrics.detection import hard_negative_accuracy, roc_auc, youden_threshold
    from axflow.metrics.uncertainty import delong_auroc

    s = spec["slice"]["train"]  # detect's own slice: the train slice and the detect code
    method = build_method(s["method"], runtime(spec, s))
    tensors, _ = store.read_tensors(spec["input"]["params"])
    meta, X = store.read_activations(spec["input"]["acts"])
    examples = read_examples(spec["input"]["examples"])
    concepts = {
        c["concept_id"]: c["concept"]
        for c in store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    }
    pool_idx = np.flatnonzero((meta["category"] == "negative").to_numpy())
    score_rows, metric_rows, pool_rows = [], [], []
    for row, cid in enumerate(tensors["concept_id"].tolist()):
        params = concept_params(tensors, row)
        idx = np.flatnonzero((meta["concept_id"] == cid).to_numpy())
        ex_ids, maxes, argmax, scores = _pooled_scores(
            method, params, meta, X, idx, examples, concepts[cid]
        )
        if method.detect_level == "token":  # imbalanced pool: every concept's negatives
            pool_ids, pool_max, _, _ = _pooled_scores(
                method, params, meta, X, pool_idx, examples, concepts[cid]
            )
            pool_rows += [
                {"concept_id": cid, "example_id": int(e), "max_act": float(v)}
                for e, v in zip(pool_ids, pool_max, strict=True)
            ]
        cats = np.array([examples[k].category for k in ex_ids])
        example_of_token = meta["example_id"].to_numpy()[idx]
        positions = meta["position"].to_numpy()[idx]
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
        is_pos, is_neg, is_hard = (
            (cats == "positive"),
            (cats == "negative"),
            (cats == "hard negative"),
        )
        labels = np.r_[np.ones(is_pos.sum()), np.zeros(is_neg.sum())]
        pn_scores = np.r_[maxes[is_pos], maxes[is_neg]]
        auc = delong_auroc(labels, pn_scores)
        metric_rows.append(
            {
                "concept_id": cid,
                "roc_auc": roc_auc(labels, pn_scores),
                "roc_auc_lo": auc.lo,
                "roc_auc_hi": auc.hi,
                "hard_negative_accuracy": hard_negative_accuracy(
                    maxes[is_pos], maxes[is_neg], maxes[is_hard]
                ),
                "optimal_threshold": youden_threshold(labels, pn_scores)
                if is_pos.any() and is_neg.any()
                else None,
                "max_act": float(maxes.max()) if len(maxes) else 0.0,
                "n_positive": int(is_pos.sum()),
                "n_negative": int(is_neg.sum()),
                "n_hard_negative": int(is_hard.sum()),
            }
        )
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
