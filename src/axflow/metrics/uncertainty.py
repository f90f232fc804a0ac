"""Intervals for the leaderboard: bootstrap over concepts, paired differences, DeLong for AUROC.

A leaderboard mean is a mean over concepts, and concepts are the unit a benchmark samples, so its
interval resamples concepts (percentile bootstrap, seeded). A difference between two methods is
paired: each resample draws the same concepts for both, so concept difficulty cancels. A single
concept's AUROC gets DeLong's interval, which needs no resampling of a handful of examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; every field None when there is nothing to estimate."""

    value: float | None
    lo: float | None
    hi: float | None

    @classmethod
    def empty(cls) -> Interval:
        return cls(None, None, None)


def bootstrap_mean(
    values: np.ndarray,
    *,
    seed: int,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean of `values` with its percentile-bootstrap interval (resampling entries with
    replacement). A single value gives a zero-width interval; no value gives `Interval.empty()`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"bootstrap_mean: values must be 1-D, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("bootstrap_mean: values contain NaN; impute or drop them first")
    if n_resamples < 1000:
        raise ValueError(f"bootstrap_mean: n_resamples={n_resamples}; use at least 1000")
    if len(values) == 0:
        return Interval.empty()
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(lo), float(hi))


def paired_difference(
    a: np.ndarray, b: np.ndarray, *, seed: int, n_resamples: int = N_RESAMPLES
) -> Interval:
    """Mean of a − b over paired entries (the same concepts) with its bootstrap interval.

    An interval that excludes 0 is what "A beats B" needs; one that straddles 0 says the data
    cannot tell them apart.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: shapes {a.shape} and {b.shape} differ")
    return bootstrap_mean(a - b, seed=seed, n_resamples=n_resamples)


def delong_auroc(
    labels: np.ndarray, scores: np.ndarray, confidence: float = CONFIDENCE
) -> Interval:
    """ROC AUC with DeLong's asymptotic interval (DeLong et al. 1988), clipped to [0, 1].

    The variance comes from the placement values of positives among negatives and vice versa.
    A perfectly separated concept has variance 0 and a zero-width interval at 1.0: DeLong is
    optimistic for small, separable samples. Empty when a class is absent.
    """
    from scipy.stats import norm

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return Interval.empty()
    greater = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v_pos, v_neg = greater.mean(axis=1), greater.mean(axis=0)
    auc = float(v_pos.mean())
    var = 0.0
    if len(pos) > 1:
        var += v_pos.var(ddof=1) / len(pos)
    if len(neg) > 1:
        var += v_neg.var(ddof=1) / len(neg)
    half = float(norm.ppf(1 - (1 - confidence) / 2)) * float(np.sqrt(var))
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half))
