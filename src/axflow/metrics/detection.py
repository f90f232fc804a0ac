"""Concept-detection metrics (AxBench §3.1): max pooling, ROC AUC, Youden threshold, hard negatives.

Sequence score = max token score. ROC AUC uses positives and negatives only; hard negatives are
scored separately by `hard_negative_accuracy`, as AxBench's HardNegativeEvaluator does.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def max_pool(scores: np.ndarray, example_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example max token score and its position, examples in ascending id order.

    The position counts that example's tokens in the order they appear in `scores` (0 = its first
    token); ties go to the earliest token.
    """
    scores = np.asarray(scores, dtype=np.float64)
    example_ids = np.asarray(example_ids)
    if scores.shape != example_ids.shape or scores.ndim != 1:
        raise ValueError(
            f"max_pool: scores {scores.shape} and example_ids {example_ids.shape} must be "
            "1-D arrays of equal length"
        )
    _, inverse = np.unique(example_ids, return_inverse=True)
    n = int(inverse.max()) + 1 if len(inverse) else 0
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=n))[:-1]])
    offset = np.empty(len(scores), dtype=np.int64)
    offset[order] = np.arange(len(scores)) - starts[inverse[order]]

    maxima = np.full(n, -np.inf)
    np.maximum.at(maxima, inverse, scores)
    at_max = scores == maxima[inverse]
    argmax = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(argmax, inverse[at_max], offset[at_max])
    return maxima, argmax


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for binary `labels`; None when a class is absent."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Threshold maximising TPR − FPR (first such point on sklearn's ROC curve).

    A score ≥ threshold predicts positive. None when a class is absent. May be +inf when no
    threshold beats predicting everything negative (AxBench then reports no hard-negative score).
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    return float(thresholds[int(np.argmax(tpr - fpr))])


def hard_negative_accuracy(
    pos_scores: np.ndarray, neg_scores: np.ndarray, hard_scores: np.ndarray
) -> float | None:
    """AxBench's HardNegativeEvaluator `macro_avg_accuracy`.

    The threshold is the Youden-J optimum on positives + negatives; the result is the mean of the
    accuracy on positives (score ≥ threshold) and on hard negatives (score < threshold). None when
    there are no hard negatives, a class is missing, or the optimum threshold is infinite.
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    hard = np.asarray(hard_scores, dtype=np.float64)
    if len(hard) == 0 or len(pos) == 0 or len(neg) == 0:
        return None
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    threshold = youden_threshold(labels, np.concatenate([pos, neg]))
    if threshold is None or not np.isfinite(threshold):
        return None
    return float(((pos >= threshold).mean() + (hard < threshold).mean()) / 2)


def max_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """(best F1 over thresholds, its threshold): AxBench's imbalanced-detection summary (§3.1)."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None, None
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores, np.float64))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else None
