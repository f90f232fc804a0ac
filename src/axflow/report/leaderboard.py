"""The leaderboard: one row per method, every mean over the same concepts, each with its interval.

A method's mean covers every concept of its scope, which is every concept of the run unless the
method's config limits it (`method.<name>.max_concepts`). Inside the scope, a concept the method
could not handle (no parameters, no rated generation) enters at what a method that knows nothing
scores: AUROC 0.5, hard-negative accuracy 0.5, the F1 of flagging every row, and steering scores 0
(AxBench's score for a failed generation). `coverage` says how many concepts were measured rather
than imputed. Comparisons against the baseline (winrate, paired differences) use the concepts both
scopes share, so a limited method is compared on its own subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from axflow import store
from axflow.layout import method_inputs, run_inputs
from axflow.metrics.steering import select_factor, winrate_points
from axflow.metrics.uncertainty import Interval, bootstrap_mean, paired_difference
from axflow.protocol.detection import imbalanced_f1

SUB_SCORES = ["concept_score", "instruction_score", "fluency_score"]
SCORES = [*SUB_SCORES, "overall"]
DETECTION_CHANCE = 0.5
STEERING_FAILED = 0.0


def run_concepts(inputs: dict[str, str]) -> pl.DataFrame:
    """The run's concepts (every shard's data job): id, description and eval row counts."""
    stats = [store.read_json(p) for _, p in run_inputs(inputs, "data_stats")]
    rows = [c for s in stats for c in s["counts"]]
    if not rows:
        return pl.DataFrame(
            schema={
                "concept_id": pl.Int64,
                "eval_positive": pl.Int64,
                "eval_hard_negative": pl.Int64,
            }
        )
    return pl.DataFrame(rows).sort("concept_id")


def steering_rows(ratings: pl.DataFrame) -> pl.DataFrame:
    """Per concept: the selected factor and the held-out means of every judge score at it."""
    rated = ratings.filter(pl.col("overall").is_not_null())
    chosen = select_factor(rated.select("concept_id", "split", "factor", "overall"))
    test = ratings.filter(pl.col("split") == "test").join(
        chosen.select("concept_id", pl.col("factor").alias("chosen")), on="concept_id"
    )
    test = test.filter(pl.col("chosen").is_null() | (pl.col("factor") == pl.col("chosen")))
    means = test.group_by("concept_id").agg([pl.col(c).mean() for c in SCORES])
    return chosen.join(means, on="concept_id", how="left").sort("concept_id")


@dataclass
class MethodResult:
    """One method's per-concept values over its scope, imputed where it had nothing."""

    name: str
    scope: list[int]  # concept ids its means cover
    limit: int | None  # method.<name>.max_concepts, when it narrows the scope
    unmatched: dict[int, str] = field(default_factory=dict)  # in scope, no parameters: why
    detection: pl.DataFrame | None = None  # per concept, with `imputed`
    steering: pl.DataFrame | None = None  # per concept, with `imputed`
    imbalance_ratio: float | None = None
    ratings: dict[str, int] = field(default_factory=dict)  # generations, failures, unrated

    def values(self, table: str, column: str, concepts: list[int]) -> np.ndarray:
        frame = getattr(self, table)
        by_id = dict(zip(frame["concept_id"].to_list(), frame[column].to_list(), strict=True))
        return np.array([by_id[c] for c in concepts], dtype=np.float64)


def _params_facts(paths: list[str]) -> tuple[dict[int, str], set[int]]:
    """(concepts without parameters and why, concepts out of scope by config) of every shard."""
    unmatched, out_of_scope = {}, set()
    for path in paths:
        shard_unmatched, shard_out = store.read_params_scope(path)
        unmatched.update(shard_unmatched)
        out_of_scope.update(shard_out)
    return unmatched, out_of_scope


def _fill(frame: pl.DataFrame, scope: list[int], fills: dict[str, float | None]) -> pl.DataFrame:
    """`frame` restricted to `scope`, one row per concept; a concept without a value in the
    first column of `fills` is imputed (every `fills` column set, `imputed` true)."""
    key = next(iter(fills))
    base = pl.DataFrame({"concept_id": scope}, schema={"concept_id": pl.Int64})
    out = base.join(frame, on="concept_id", how="left")
    missing = pl.col(key).is_null()
    return out.with_columns(
        *[
            pl.when(missing).then(pl.lit(v, dtype=pl.Float64)).otherwise(pl.col(c)).alias(c)
            for c, v in fills.items()
        ],
        missing.alias("imputed"),
    )


def _method_result(
    m: dict[str, Any], inputs: dict[str, str], cfg: dict[str, Any], concepts: pl.DataFrame
) -> MethodResult:
    shards = method_inputs(inputs, m["name"])
    unmatched, out_of_scope = _params_facts(shards["params"])
    scope = [c for c in concepts["concept_id"].to_list() if c not in out_of_scope]
    limit = cfg["method"].get(m["name"], {}).get("max_concepts") if out_of_scope else None
    result = MethodResult(
        m["name"], scope, limit, {c: w for c, w in unmatched.items() if c not in out_of_scope}
    )
    if m["detects"]:
        tables, ratios = [], []
        for metrics, pool, scores in zip(
            shards["metrics"], shards["pool"], shards["scores"], strict=True
        ):
            det = pl.from_arrow(store.read_table(metrics, "detect_metrics"))
            pool = pl.from_arrow(store.read_table(pool, "pool_scores"))
            if pool.height:  # the pool stays within a shard (its concepts scored its rows)
                columns = ["concept_id", "category", "max_act"]
                scored = pl.from_arrow(store.read_table(scores, "detect_scores", columns))
                f1, ratio = imbalanced_f1(
                    scored, pool, cfg["report"]["imbalance_factor"], cfg["seed"]
                )
                det = det.join(f1, on="concept_id", how="left")
                ratios.append(ratio)
            tables.append(det)
        det = pl.concat(tables, how="diagonal_relaxed")
        fills: dict[str, float | None] = {
            "roc_auc": DETECTION_CHANCE,
            "roc_auc_lo": DETECTION_CHANCE,
            "roc_auc_hi": DETECTION_CHANCE,
        }
        if ratios:
            result.imbalance_ratio = float(np.mean(ratios))
            # Flagging every row is the best F1 of a scorer that knows nothing: 2P / (2P + N).
            fills["imbalanced_f1"] = 2 / (2 + result.imbalance_ratio)
        for column in fills:
            if column not in det.columns:
                det = det.with_columns(pl.lit(None, dtype=pl.Float64).alias(column))
        det = _fill(det, scope, fills)
        hard = concepts.select("concept_id", "eval_hard_negative")
        det = det.join(hard, on="concept_id", how="left").with_columns(
            pl.when(pl.col("imputed") & (pl.col("eval_hard_negative") > 0))
            .then(pl.lit(DETECTION_CHANCE))
            .otherwise(pl.col("hard_negative_accuracy"))
            .alias("hard_negative_accuracy")
        )
        result.detection = det.drop("eval_hard_negative").sort("concept_id")
    if m["steering"] is not None:
        ratings = pl.concat(
            [pl.from_arrow(store.read_table(p, "ratings")) for p in shards["ratings"]]
        )
        steer = steering_rows(ratings).rename({"test_score": "steering_score"})
        fills = {"steering_score": STEERING_FAILED} | {c: STEERING_FAILED for c in SUB_SCORES}
        result.steering = _fill(steer.drop("overall"), scope, fills).sort("concept_id")
        result.ratings = {
            "generations": ratings.height,
            "judge_failures": int(ratings["failures"].sum()),
            "unrated": int(ratings["overall"].is_null().sum()),
        }
    return result


def _with_interval(row: dict[str, Any], name: str, interval: Interval) -> None:
    row[name], row[f"{name}_lo"], row[f"{name}_hi"] = interval.value, interval.lo, interval.hi


def build_leaderboard(
    methods: list[dict[str, Any]], inputs: dict[str, str], cfg: dict[str, Any]
) -> tuple[pl.DataFrame, dict[str, MethodResult], pl.DataFrame]:
    """(one row per method, each method's per-concept results, the run's concepts)."""
    concepts = run_concepts(inputs)
    seed = cfg["seed"]
    results = {m["name"]: _method_result(m, inputs, cfg, concepts) for m in methods}
    baseline = results.get(cfg["report"]["winrate_baseline"] or "")
    rows = []
    for m in methods:
        r = results[m["name"]]
        row: dict[str, Any] = {
            "method": m["name"],
            "kind": m["kind"],
            "scope": "all" if r.limit is None else f"first {r.limit} per shard",
            "n_concepts": len(r.scope),
        }
        measured = []
        _with_interval(row, "detection_auroc", Interval.empty())
        row["hard_negative_acc"] = row["imbalanced_f1"] = None
        if r.detection is not None:
            det = r.detection
            _with_interval(row, "detection_auroc", bootstrap_mean(det["roc_auc"], seed=seed))
            row["hard_negative_acc"] = det["hard_negative_accuracy"].mean()
            if "imbalanced_f1" in det.columns:
                row["imbalanced_f1"] = det["imbalanced_f1"].mean()
            measured.append(det.height - int(det["imputed"].sum()))
        _with_interval(row, "steering_score", Interval.empty())
        for c in SUB_SCORES:
            row[c] = None
        row["mean_factor"] = None
        if r.steering is not None:
            steer = r.steering
            _with_interval(
                row, "steering_score", bootstrap_mean(steer["steering_score"], seed=seed)
            )
            for c in SUB_SCORES:
                row[c] = steer[c].mean()
            if not m["factor_free"]:
                row["mean_factor"] = steer["factor"].mean()
            measured.append(steer.height - int(steer["imputed"].sum()))
        row["coverage"] = min(measured) / len(r.scope) if measured and r.scope else None
        for name in ("winrate", "detection_delta", "steering_delta"):
            _with_interval(row, name, Interval.empty())
        if baseline is not None:  # the baseline itself: Δ 0, winrate 0.5
            shared = [c for c in r.scope if c in set(baseline.scope)]
            for table, column, name in (
                ("detection", "roc_auc", "detection_delta"),
                ("steering", "steering_score", "steering_delta"),
            ):
                if getattr(r, table) is not None and getattr(baseline, table) is not None:
                    a, b = r.values(table, column, shared), baseline.values(table, column, shared)
                    _with_interval(row, name, paired_difference(a, b, seed=seed))
                    if table == "steering":
                        points = winrate_points(a, b)
                        _with_interval(row, "winrate", bootstrap_mean(points, seed=seed))
        row["unmatched"] = len(r.unmatched)
        for k in ("generations", "judge_failures", "unrated"):
            row[k] = r.ratings.get(k)
        rows.append(row)
    board = pl.DataFrame(rows, infer_schema_length=None)
    first = ["method", "kind", "scope", "n_concepts", "coverage"]
    board = board.select(*first, pl.exclude(first)).sort(
        ["steering_score", "detection_auroc"], descending=True, nulls_last=True
    )
    return board, results, concepts
