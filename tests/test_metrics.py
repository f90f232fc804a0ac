"""Detection and steering metrics on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from axflow.metrics.detection import (
    hard_negative_accuracy,
    max_f1,
    max_pool,
    roc_auc,
    youden_threshold,
)
from axflow.metrics.steering import select_factor, winrate_points


def test_roc_auc_counts_correctly_ordered_pairs():
    # Pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, 0.1) ok, (0.8, 0.4) ok -> 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [2.0, 1.0]) == 1.0
    assert roc_auc([1, 0], [1.0, 2.0]) == 0.0
    assert roc_auc([1, 0, 1, 0], [1.0, 1.0, 1.0, 1.0]) == 0.5  # ties count half


def test_roc_auc_is_none_with_one_class():
    assert roc_auc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert roc_auc([0, 0], [0.1, 0.2]) is None


def test_youden_threshold_picks_the_first_best_cut():
    # Cuts at 0.8 (tpr .5, fpr 0) and 0.35 (tpr 1, fpr .5) both give J = 0.5; the first wins.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    # Perfect separation: the lowest positive score is the cut.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.7)
    assert youden_threshold([1, 1], [0.1, 0.2]) is None


def test_hard_negative_accuracy_averages_positive_and_hard_negative_accuracy():
    pos, neg = [0.7, 0.9, 0.05], [0.1, 0.2, 0.4]
    # Youden cut on pos+neg: 0.7 (tpr 2/3, fpr 0). Positives >= 0.7: 2/3. Hard < 0.7: 1/2.
    assert hard_negative_accuracy(pos, neg, [0.5, 0.8]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert hard_negative_accuracy(pos, neg, [0.0]) == pytest.approx((2 / 3 + 1) / 2)
    assert hard_negative_accuracy(pos, neg, []) is None


def test_hard_negative_accuracy_is_none_when_the_cut_is_infinite():
    # Every positive below every negative: no finite cut beats "all negative" (AxBench gives {}).
    assert hard_negative_accuracy([0.1, 0.2], [0.8, 0.9], [0.5]) is None


def test_max_pool_returns_per_example_max_and_first_argmax():
    scores = np.array([0.1, 0.5, 0.5, 2.0, -1.0, 3.0, -3.0])
    example = np.array([7, 7, 7, 2, 2, 9, 9])
    maxima, argmax = max_pool(scores, example)
    # Examples in ascending id order: 2, 7, 9. Example 7's tie at 0.5 goes to its first one.
    np.testing.assert_allclose(maxima, [2.0, 0.5, 3.0])
    np.testing.assert_array_equal(argmax, [0, 1, 0])


def test_max_pool_handles_interleaved_examples():
    maxima, argmax = max_pool(np.array([1.0, 5.0, 4.0, 0.0]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(maxima, [4.0, 5.0])
    np.testing.assert_array_equal(argmax, [1, 0])


def _ratings(rows: list[tuple[int, str, float | None, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "concept_id": pl.Int64,
            "split": pl.String,
            "factor": pl.Float64,
            "overall": pl.Float64,
        },
        orient="row",
    )


def test_select_factor_picks_select_argmax_and_reports_test_at_that_factor():
    df = _ratings(
        [
            (0, "select", 1.0, 0.5),
            (0, "select", 1.0, 0.7),  # mean 0.6
            (0, "select", 2.0, 1.0),
            (0, "select", 2.0, 1.2),  # mean 1.1 -> chosen
            (0, "test", 1.0, 2.0),  # best test factor is not the chosen one
            (0, "test", 2.0, 0.4),
            (0, "test", 2.0, 0.8),
            (0, "test", 2.0, None),  # failed rating: left out of the mean and of n_test
            (1, "select", 0.5, 1.5),
            (1, "select", 4.0, 0.2),
            (1, "test", 0.5, 1.0),
            (1, "test", 4.0, 2.0),
        ]
    )
    out = select_factor(df)
    assert out.columns == ["concept_id", "factor", "select_score", "test_score", "n_test"]
    assert out["concept_id"].to_list() == [0, 1]
    assert out["factor"].to_list() == [2.0, 0.5]
    assert out["select_score"].to_list() == pytest.approx([1.1, 1.5])
    assert out["test_score"].to_list() == pytest.approx([0.6, 1.0])
    assert out["n_test"].to_list() == [2, 1]


def test_select_factor_breaks_ties_towards_the_smaller_factor():
    df = _ratings(
        [
            (3, "select", 2.5, 1.0),
            (3, "select", 0.8, 1.0),
            (3, "select", 5.0, 1.0),
            (3, "test", 0.8, 0.3),
            (3, "test", 2.5, 1.9),
        ]
    )
    out = select_factor(df)
    assert out["factor"].to_list() == [0.8]
    assert out["test_score"].to_list() == pytest.approx([0.3])


def test_select_factor_averages_factor_free_methods():
    df = _ratings(
        [
            (0, "select", None, 1.0),
            (0, "select", None, 0.0),
            (0, "test", None, 2.0),
            (0, "test", None, 1.0),
            (0, "test", None, 0.0),
        ]
    )
    out = select_factor(df)
    assert out["factor"].to_list() == [None]
    assert out["select_score"].to_list() == pytest.approx([0.5])
    assert out["test_score"].to_list() == pytest.approx([1.0])
    assert out["n_test"].to_list() == [3]


def test_select_factor_reports_missing_test_rows_as_null():
    out = select_factor(_ratings([(0, "select", 1.0, 1.0), (0, "test", 2.0, 1.0)]))
    assert out["test_score"].to_list() == [None]
    assert out["n_test"].to_list() == [0]


def test_select_factor_rejects_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="missing column"):
        select_factor(pl.DataFrame({"concept_id": [0], "split": ["test"]}))
    with pytest.raises(ValueError, match="unknown split"):
        select_factor(_ratings([(0, "train", 1.0, 1.0)]))
    with pytest.raises(ValueError, match="null factor"):
        select_factor(_ratings([(0, "select", 1.0, 1.0), (0, "test", None, 1.0)]))


def test_max_f1_finds_the_best_threshold_by_hand():
    # Scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): threshold 0.7 gives P = 2/3, R = 1,
    # F1 = 0.8; threshold 0.9 gives P = 1, R = 1/2, F1 = 2/3.
    f1, thr = max_f1([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.7)
    assert max_f1([1, 1], [0.2, 0.3]) == (None, None)


def test_imbalanced_pool_lowers_f1_of_a_weak_scorer():
    """100 negatives per positive: a scorer overlapping the pool loses F1, a clean one keeps it."""
    from axflow.protocol.detection import imbalanced_f1

    rng = np.random.default_rng(0)
    scores = pl.DataFrame(
        {
            "concept_id": [0] * 4 + [1] * 4,
            "category": ["positive"] * 4 + ["positive"] * 4,
            "max_act": np.r_[[5.0] * 4, [1.0] * 4].astype(np.float32),
        }
    )
    pool = pl.DataFrame(
        {
            "concept_id": [0] * 1000 + [1] * 1000,
            "example_id": list(range(1000)) * 2,
            "max_act": np.r_[rng.normal(0, 0.5, 1000), rng.normal(0, 0.5, 1000)].astype(np.float32),
        }
    )
    table, ratio = imbalanced_f1(scores, pool, factor=100, seed=0)
    assert ratio == pytest.approx(100)
    f1 = dict(zip(table["concept_id"], table["imbalanced_f1"], strict=True))
    assert f1[0] == pytest.approx(1.0) and f1[1] < 0.9
    _, small = imbalanced_f1(scores, pool.head(50), factor=100, seed=0)
    assert small == pytest.approx(50 / 4)  # pool too small: every negative, ratio reported


def test_winrate_points_count_wins_ties_and_losses_per_concept():
    points = winrate_points([1.0, 0.5, 0.2], [0.5, 0.5 + 1e-9, 0.9])
    assert points.tolist() == [1.0, 0.5, 0.0]
