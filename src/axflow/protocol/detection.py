"""How a detector is scored (AxBench §3.1): max-pooled sequence scores, per-concept ROC AUC with
DeLong's interval, hard-negative accuracy at the Youden threshold, and the imbalanced F1 against
a shared pool of every concept's negatives."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from axflow.metrics.detection import (
    hard_negative_accuracy,
    max_f1,
    max_pool,
    roc_auc,
    youden_threshold,
)
from axflow.metrics.uncertainty import delong_auroc


def pooled_scores(method, params, token_acts, token_examples, examples, concept):
    """(example ids, max-pooled scores, argmax token offsets or None, token scores or None) of
    the examples whose tokens are given; `examples` is indexed by example id."""
    ex_ids = np.unique(token_examples)
    if method.detect_level == "sequence":
        scores = method.sequence_scores(params, [examples[k] for k in ex_ids], concept=concept)
        return ex_ids, np.asarray(scores, np.float32), None, None
    scores = method.token_scores(params, token_acts).astype(np.float32)
    maxes, argmax = max_pool(scores, token_examples)
    return ex_ids, maxes, argmax, scores


def concept_metrics(categories: np.ndarray, maxes: np.ndarray) -> dict[str, Any]:
    """One concept's detection metrics from its eval examples' categories and pooled scores.

    ROC AUC uses positives against negatives; hard negatives are scored on their own (accuracy
    at the positives-vs-negatives Youden threshold). `max_act` is the steering strength base.
    """
    categories = np.asarray(categories)
    is_pos, is_neg = categories == "positive", categories == "negative"
    is_hard = categories == "hard negative"
    labels = np.r_[np.ones(is_pos.sum()), np.zeros(is_neg.sum())]
    scores = np.r_[maxes[is_pos], maxes[is_neg]]
    auc = delong_auroc(labels, scores)
    return {
        "roc_auc": roc_auc(labels, scores),
        "roc_auc_lo": auc.lo,
        "roc_auc_hi": auc.hi,
        "hard_negative_accuracy": hard_negative_accuracy(
            maxes[is_pos], maxes[is_neg], maxes[is_hard]
        ),
        "optimal_threshold": youden_threshold(labels, scores)
        if is_pos.any() and is_neg.any()
        else None,
        "max_act": float(maxes.max()) if len(maxes) else 0.0,
        "n_positive": int(is_pos.sum()),
        "n_negative": int(is_neg.sum()),
        "n_hard_negative": int(is_hard.sum()),
    }


def imbalanced_f1(
    scores: pl.DataFrame, pool: pl.DataFrame, factor: float, seed: int
) -> tuple[pl.DataFrame, float]:
    """Per concept, F1 at the best threshold of its positives against a shared negative pool.

    One pool of `factor` × (positives per concept) rows is drawn (with `seed`) from every
    concept's "negative" eval rows, and each concept's scorer rates all of them. Small datasets
    cannot reach the factor; the pool is then every negative and the achieved ratio is returned
    with the table.
    """
    per_concept = scores.filter(pl.col("category") == "positive").group_by("concept_id").len()
    n_pos = float(per_concept["len"].mean()) if per_concept.height else 0.0
    ids = pool["example_id"].unique().sort()
    size = min(len(ids), max(1, round(factor * n_pos)))
    drawn = ids.sample(size, seed=seed) if size < len(ids) else ids
    sampled = pool.filter(pl.col("example_id").is_in(drawn.implode()))
    rows = []
    for cid in scores["concept_id"].unique().sort().to_list():
        pos = scores.filter((pl.col("concept_id") == cid) & (pl.col("category") == "positive"))
        neg = sampled.filter(pl.col("concept_id") == cid)
        labels = np.r_[np.ones(pos.height), np.zeros(neg.height)]
        f1, thr = max_f1(labels, np.r_[pos["max_act"].to_numpy(), neg["max_act"].to_numpy()])
        rows.append({"concept_id": cid, "imbalanced_f1": f1, "f1_threshold": thr})
    ratio = size / n_pos if n_pos else 0.0
    return pl.DataFrame(rows, infer_schema_length=None), ratio
