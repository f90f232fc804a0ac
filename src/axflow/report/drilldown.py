"""The report page's per-concept drill-down: each method's detection AUROC, its chosen factor and
held-out scores, and what it generated there (the best and the worst rated generation)."""

from __future__ import annotations

from typing import Any

import polars as pl

from axflow.report.leaderboard import MethodResult

MAX_CHARS = 600  # of a sample generation shown on the page


def _by_concept(frame: pl.DataFrame | None) -> dict[int, pl.DataFrame]:
    if frame is None or frame.is_empty():
        return {}
    return {k[0]: v for k, v in frame.partition_by("concept_id", as_dict=True).items()}


def _clip(text: str | None) -> str:
    if text is None:
        return "(generation not available)"
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " …"


def sample_generations(rated: pl.DataFrame | None, factor: float | None) -> list[dict[str, Any]]:
    """The best and the worst held-out generation at `factor` (every held-out row when the
    method ignores the factor), ranked by the judge's overall score."""
    if rated is None:
        return []
    rows = rated.filter(pl.col("split") == "test")
    if factor is not None:
        rows = rows.filter(pl.col("factor") == factor)
    rows = rows.sort("overall", "input_id", descending=[True, False], nulls_last=True)
    if rows.is_empty():
        return []
    picks = [("best", rows.row(0, named=True))]
    if rows.height > 1:
        picks.append(("worst", rows.row(rows.height - 1, named=True)))
    return [
        {
            "which": which,
            "factor": r["factor"],
            "instruction": r.get("instruction") or "",
            "generation": _clip(r.get("generation")),
            "scores": [r["concept_score"], r["instruction_score"], r["fluency_score"]],
            "overall": r["overall"],
        }
        for which, r in picks
    ]


def concept_sections(
    concepts: pl.DataFrame,
    results: dict[str, MethodResult],
    tables: dict[str, dict[str, pl.DataFrame | None]],
    names: dict[int, str],
) -> list[dict[str, Any]]:
    """One entry per concept of the run, methods in leaderboard order of `results`."""
    detection = {n: _by_concept(r.detection) for n, r in results.items()}
    steering = {n: _by_concept(r.steering) for n, r in results.items()}
    rated = {n: _by_concept(t["rated"]) for n, t in tables.items()}
    out = []
    for cid in concepts["concept_id"].to_list():
        entry: dict[str, Any] = {
            "id": cid,
            "name": names.get(cid, ""),
            "detection": [],
            "steering": [],
        }
        for method in results:
            det = detection[method].get(cid)
            if det is not None:
                d = det.row(0, named=True)
                entry["detection"].append(
                    {
                        "method": method,
                        "auroc": d["roc_auc"],
                        "lo": d.get("roc_auc_lo"),
                        "hi": d.get("roc_auc_hi"),
                        "hard_negative": d.get("hard_negative_accuracy"),
                        "imputed": d["imputed"],
                    }
                )
            steer = steering[method].get(cid)
            if steer is not None:
                s = steer.row(0, named=True)
                entry["steering"].append(
                    {
                        "method": method,
                        "factor": s["factor"],
                        "score": s["steering_score"],
                        "scores": [s["concept_score"], s["instruction_score"], s["fluency_score"]],
                        "imputed": s["imputed"],
                        "samples": sample_generations(rated[method].get(cid), s["factor"]),
                    }
                )
        out.append(entry)
    return out
