"""Leaderboard and Markdown report of one experiment, computed only from pipeline artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from axflow import store
from axflow.metrics.steering import select_factor

SCORES = ["concept_score", "instruction_score", "fluency_score", "overall"]


def _steering_rows(ratings: pl.DataFrame) -> pl.DataFrame:
    """Per concept: the selected factor and the held-out means of every judge score at it."""
    rated = ratings.filter(pl.col("overall").is_not_null())
    chosen = select_factor(rated.select("concept_id", "split", "factor", "overall"))
    test = ratings.filter(pl.col("split") == "test").join(
        chosen.select("concept_id", pl.col("factor").alias("chosen")), on="concept_id"
    )
    test = test.filter(pl.col("chosen").is_null() | (pl.col("factor") == pl.col("chosen")))
    means = test.group_by("concept_id").agg([pl.col(c).mean() for c in SCORES])
    return chosen.join(means, on="concept_id", how="left").sort("concept_id")


def build_leaderboard(
    methods: list[dict[str, Any]], inputs: dict[str, str]
) -> tuple[pl.DataFrame, dict]:
    """One row per method, plus per-method detail tables for the report."""
    rows, details = [], {}
    for m in methods:
        row: dict[str, Any] = {"method": m["name"], "kind": m["kind"]}
        detail: dict[str, pl.DataFrame] = {}
        if m["detects"]:
            det = pl.from_arrow(store.read_table(inputs[f"detect__{m['name']}"], "detect_metrics"))
            row["detection_auroc"] = det["roc_auc"].mean()
            row["hard_negative_acc"] = det["hard_negative_accuracy"].mean()
            detail["detection"] = det
        else:
            row["detection_auroc"] = row["hard_negative_acc"] = None
        ratings = pl.from_arrow(store.read_table(inputs[f"ratings__{m['name']}"], "ratings"))
        steer = _steering_rows(ratings)
        detail["steering"] = steer
        row["steering_score"] = steer["test_score"].mean()
        for c in ("concept_score", "instruction_score", "fluency_score"):
            row[c] = steer[c].mean()
        row["mean_factor"] = None if m["factor_free"] else steer["factor"].mean()
        row["n_concepts"] = steer.height
        row["generations"] = ratings.height
        row["judge_failures"] = int(ratings["failures"].sum())
        row["unrated"] = int(ratings["overall"].is_null().sum())
        rows.append(row)
        details[m["name"]] = detail
    board = pl.DataFrame(rows, infer_schema_length=None).sort(
        "steering_score", descending=True, nulls_last=True
    )
    return board, details


def _md_table(df: pl.DataFrame) -> str:
    def fmt(v):
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, sep, *body])


def write_report(
    methods: list[dict], cfg: dict, inputs: dict[str, str], outputs: dict[str, str]
) -> None:
    board, details = build_leaderboard(methods, inputs)
    with store.atomic_path(outputs["leaderboard"], ".csv") as tmp:
        board.write_csv(tmp, float_precision=4)
    model, ds, judge, st = cfg["model"], cfg["dataset"], cfg["judge"], cfg["steering"]
    lines = [
        f"# axflow report: {cfg['name']}",
        "",
        f"- model: `{model['name']}` layer {model['layer']} ({model['dtype']})",
        f"- dataset: `{ds['name']}` ({ds['source']})",
        f"- judge: `{judge['name']}`; steering factors {st['factors']}, "
        f"{st['max_new_tokens']} new tokens, temperature {st['temperature']}",
        "- detection: mean over concepts of ROC AUC of max-pooled token scores (hard negatives"
        " excluded); steering: harmonic mean of concept/instruction/fluency scores (0–2) on"
        " held-out instructions at the factor chosen on the selection half.",
        f"- resolved config: `{Path(outputs['config']).name}` beside this file",
        "",
        "## Leaderboard",
        "",
        _md_table(board),
        "",
    ]
    failures = int(board["judge_failures"].sum())
    lines.append(
        f"Judge failures (sub-ratings that could not be obtained, never scored 0): {failures}; "
        f"generations without an overall score: {int(board['unrated'].sum())}."
    )
    for name, detail in details.items():
        lines += ["", f"## {name}", ""]
        if "detection" in detail:
            lines += ["Detection per concept:", "", _md_table(detail["detection"]), ""]
        lines += [
            "Steering per concept (factor chosen on the selection split):",
            "",
            _md_table(detail["steering"]),
            "",
        ]
    with store.atomic_path(outputs["report"], ".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    store.write_json(cfg, outputs["config"])
