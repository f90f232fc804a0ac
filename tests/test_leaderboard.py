"""The leaderboard averages every method over the same concepts and gives each mean its interval.

The artefacts are written with the pipeline's own writers (store schemas), as train, detect and
judge jobs would leave them; the report reads nothing else.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from axflow import store
from axflow.layout import report_input
from axflow.metrics.uncertainty import bootstrap_mean, delong_auroc, paired_difference
from axflow.report import write_report
from axflow.report.leaderboard import build_leaderboard

CONCEPTS = [0, 1, 2, 3]
CFG = {
    "name": "board",
    "seed": 7,
    "report": {"winrate_baseline": "prompt", "imbalance_factor": 100},
    "method": {"full": {"kind": "diffmean"}, "sae": {"kind": "sae"}, "sft": {"max_concepts": 2}},
    "model": {"name": "m", "layer": 1, "dtype": "float32"},
    "dataset": {"name": "d", "source": "synthesize"},
    "judge": {"name": "embedded"},
    "steering": {"factors": [1.0], "max_new_tokens": 8, "temperature": 1.0},
}
METHODS = [
    {"name": "full", "kind": "diffmean", "detects": True, "steering": "add", "factor_free": False},
    {"name": "sae", "kind": "sae", "detects": True, "steering": "add", "factor_free": False},
    {"name": "sft", "kind": "sft", "detects": False, "steering": "model", "factor_free": True},
    {
        "name": "prompt",
        "kind": "prompt",
        "detects": True,
        "steering": "prompt",
        "factor_free": True,
    },
]


def _artefacts(tmp_path, name, trained, out_of_scope=(), auroc=None, steer=None, factor_free=False):
    """One method's params (+ detect metrics, + ratings) as the pipeline's jobs write them."""
    inputs = {}
    unmatched = {c: "no latent fires" for c in CONCEPTS if c not in trained}
    unmatched.update({c: f"not trained: method.{name}.max_concepts=2" for c in out_of_scope})
    params = tmp_path / f"{name}.safetensors"
    store.write_tensors(
        {"concept_id": np.array(trained, np.int64), "direction": np.ones((len(trained), 2))},
        params,
        metadata={"unmatched": unmatched, "out_of_scope": list(out_of_scope)},
    )
    inputs[report_input("params", 0, name)] = str(params)
    if auroc is not None:
        metrics = pl.DataFrame(
            {
                "concept_id": trained,
                "roc_auc": [auroc[c] for c in trained],
                "roc_auc_lo": [auroc[c] - 0.1 for c in trained],
                "roc_auc_hi": [min(1.0, auroc[c] + 0.1) for c in trained],
                "hard_negative_accuracy": [None] * len(trained),
                "optimal_threshold": [0.0] * len(trained),
                "max_act": [1.0] * len(trained),
                "n_positive": [8] * len(trained),
                "n_negative": [8] * len(trained),
                "n_hard_negative": [0] * len(trained),
            }
        )
        for kind, frame, schema in (
            ("metrics", metrics, "detect_metrics"),
            (
                "pool",
                pl.DataFrame(
                    schema={"concept_id": pl.Int64, "example_id": pl.Int64, "max_act": pl.Float32}
                ),
                "pool_scores",
            ),
        ):
            path = tmp_path / f"{name}.{kind}.parquet"
            store.write_table(frame, path, schema)
            inputs[report_input(kind, 0, name)] = str(path)
        inputs[report_input("scores", 0, name)] = str(tmp_path / "unused.parquet")
    if steer is not None:
        rows = [
            {
                "concept_id": c,
                "input_id": i,
                "split": split,
                "factor": None if factor_free else 1.0,
                "concept_score": steer[c],
                "instruction_score": steer[c],
                "fluency_score": steer[c],
                "overall": steer[c],
                "perplexity": 10.0,
                "failures": 0,
            }
            for c in trained
            for i, split in enumerate(["select", "test"])
        ]
        path = tmp_path / f"{name}.ratings.parquet"
        store.write_table(pl.DataFrame(rows, infer_schema_length=None), path, "ratings")
        inputs[report_input("ratings", 0, name)] = str(path)
    return inputs


@pytest.fixture
def board_inputs(tmp_path):
    stats = tmp_path / "stats.json"
    counts = [{"concept_id": c, "eval_positive": 8, "eval_hard_negative": 0} for c in CONCEPTS]
    store.write_json({"counts": counts}, stats)
    inputs = {report_input("data_stats", 0): str(stats)}
    good = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}
    inputs |= _artefacts(tmp_path, "full", CONCEPTS, auroc=good, steer={c: 1.0 for c in CONCEPTS})
    # The SAE has nothing for concept 3 (no latent fires): it must not leave the mean.
    inputs |= _artefacts(
        tmp_path, "sae", [0, 1, 2], auroc={0: 1.0, 1: 1.0, 2: 1.0}, steer={0: 0.5, 1: 0.5, 2: 0.5}
    )
    # SFT is limited to 2 concepts by config: a marked subset, compared on those concepts only.
    inputs |= _artefacts(
        tmp_path, "sft", [0, 1], out_of_scope=[2, 3], steer={0: 2.0, 1: 2.0}, factor_free=True
    )
    inputs |= _artefacts(
        tmp_path,
        "prompt",
        CONCEPTS,
        auroc={c: 0.5 for c in CONCEPTS},
        steer={c: 0.8 for c in CONCEPTS},
        factor_free=True,
    )
    return inputs


def test_a_method_that_skips_concepts_is_averaged_over_every_concept(board_inputs):
    board, results, _ = build_leaderboard(METHODS, board_inputs, CFG)
    row = {r["method"]: r for r in board.iter_rows(named=True)}
    sae = row["sae"]
    assert sae["n_concepts"] == 4 and sae["scope"] == "all" and sae["unmatched"] == 1
    assert sae["coverage"] == pytest.approx(0.75)
    assert sae["detection_auroc"] == pytest.approx((1.0 + 1.0 + 1.0 + 0.5) / 4)  # 3 -> chance
    assert sae["steering_score"] == pytest.approx((0.5 * 3 + 0.0) / 4)  # 3 -> failed, 0
    assert results["sae"].detection.filter(pl.col("imputed"))["concept_id"].to_list() == [3]
    full = row["full"]
    assert full["coverage"] == 1.0 and full["detection_auroc"] == pytest.approx(0.75)


def test_a_method_limited_by_config_is_a_marked_subset_compared_on_it(board_inputs):
    board, _, _ = build_leaderboard(METHODS, board_inputs, CFG)
    sft = {r["method"]: r for r in board.iter_rows(named=True)}["sft"]
    assert sft["n_concepts"] == 2 and sft["scope"] == "first 2 per shard"
    assert sft["coverage"] == 1.0 and sft["unmatched"] == 0
    assert sft["steering_score"] == pytest.approx(2.0)
    # Against prompt (0.8 everywhere) on concepts 0 and 1 only: +1.2, won both.
    assert sft["steering_delta"] == pytest.approx(1.2) and sft["winrate"] == 1.0


def test_every_mean_has_a_bootstrap_interval_and_a_paired_difference(board_inputs):
    board, _, _ = build_leaderboard(METHODS, board_inputs, CFG)
    row = {r["method"]: r for r in board.iter_rows(named=True)}
    full = row["full"]
    assert full["detection_auroc_lo"] < full["detection_auroc"] < full["detection_auroc_hi"]
    assert full["detection_delta"] == pytest.approx(0.25)  # 0.75 against prompt's 0.5
    assert 0 < full["detection_delta_lo"] <= full["detection_delta_hi"]
    assert full["steering_delta"] == pytest.approx(0.2)
    assert full["steering_delta_lo"] == full["steering_delta_hi"] == pytest.approx(0.2)
    assert row["prompt"]["steering_delta"] == 0.0 and row["prompt"]["winrate"] == 0.5
    again, _, _ = build_leaderboard(METHODS, board_inputs, CFG)
    assert again.equals(board)  # seeded


def test_report_states_intervals_imputation_and_subsets(board_inputs, tmp_path):
    out = {k: str(tmp_path / f"out.{k}") for k in ("report", "leaderboard", "config")}
    scope = {"source_concepts": 12, "run_concepts": 4, "max_concepts": 4}
    write_report(METHODS, CFG, board_inputs, out, scope)
    text = (tmp_path / "out.report").read_text()
    assert "**4 of 12**" in text and "`dataset.max_concepts=4`" in text
    assert "0.875 [" in text  # the SAE's AUROC with its interval
    assert "Limited by `method.sft.max_concepts=2`" in text
    assert "3: no latent fires" in text
    csv = pl.read_csv(out["leaderboard"])
    assert {"detection_auroc_lo", "steering_score_hi", "winrate_lo", "coverage"} <= set(csv.columns)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_concepts():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.7, 0.1, 10), rng.normal(0.7, 0.1, 400)
    a, b = bootstrap_mean(small, seed=1), bootstrap_mean(large, seed=1)
    assert a.lo < a.value < a.hi and b.lo < b.value < b.hi
    assert (b.hi - b.lo) < (a.hi - a.lo) / 4
    assert bootstrap_mean(small, seed=1) == a
    with pytest.raises(ValueError, match="at least 1000"):
        bootstrap_mean(small, seed=1, n_resamples=100)
    # Paired: a constant per-concept gap is resolved even when the concepts vary widely.
    base = rng.uniform(0, 2, 20)
    diff = paired_difference(base + 0.1, base, seed=0)
    assert diff.lo == pytest.approx(0.1) and diff.hi == pytest.approx(0.1)


def test_delong_interval_matches_auc_and_covers_the_truth():
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    truth, hits = float(norm.cdf(1 / np.sqrt(2))), 0
    for _ in range(300):
        labels = np.r_[np.ones(30), np.zeros(30)]
        scores = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 30)]
        iv = delong_auroc(labels, scores)
        assert iv.value == pytest.approx(roc_auc_score(labels, scores))
        hits += iv.lo <= truth <= iv.hi
    assert 0.90 <= hits / 300 <= 0.99
    assert delong_auroc(np.ones(4), np.arange(4.0)).value is None


def test_data_section_shows_acceptance_rates_and_a_rejected_example():
    from axflow.report import verification_lines

    per = [
        {
            "concept_id": 0,
            "category": "positive",
            "rows": 4,
            "accepted": 4,
            "unverified": 1,
            "candidates": 8,
            "passed": 4,
        },
        {
            "concept_id": 1,
            "category": "positive",
            "rows": 4,
            "accepted": 4,
            "unverified": 0,
            "candidates": 4,
            "passed": 4,
        },
    ]
    stats = {
        "verification": {
            "verifier": "embedded",
            "max_attempts": 6,
            "candidates": 1,
            "per_concept": per,
            "rejected_examples": {"positive": [{"concept_id": 0, "output": "running shoes"}]},
        }
    }
    text = "\n".join(verification_lines([stats]))
    assert "| positive | 8 | 8 | 1 | 12 | 8 | 0.667 |" in text
    assert 'rejected positive for concept 0: "running shoes"' in text
    assert verification_lines([{"counts": []}]) == []
