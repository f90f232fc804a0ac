"""Judge validity records: how well a judge config separates Concept10 ground truth, measured by
`bench/judge_validity.py` and shown in the report of every run judged by that config.

A record is JSON in `judge_validity/<judge>-<key>.json` beside this module
(`axflow.layout.judge_validity_record`), keyed by what decides the judge's scores: the judge
config (speed knobs left out, as in stage keys) and the target model. A run whose judge config
and model match gets the record as a report input; any other run's report says that none was
measured. The record carries the judge code's digest, and the report says when the code changed
since the measurement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CRITERIA = ("concept", "instruction", "fluency")


def judge_code_digest() -> str:
    """Digest of the code that rates (the judge stage and what it imports)."""
    from axflow.codeversion import code_digest

    return code_digest(["axflow.stages.judge"])


def read_validity(path: str | Path) -> dict[str, Any]:
    """A validity record, checked for the three criteria the report shows."""
    record = json.loads(Path(path).read_text())
    missing = [c for c in CRITERIA if c not in record.get("criteria", {})]
    if missing:
        raise ValueError(
            f"{path}: judge validity record lacks criteria {missing}; rerun "
            "bench/judge_validity.py --write with this config to replace it"
        )
    return record


def shares(counts: list[int]) -> list[float]:
    """Counts of scores 0 / 1 / 2 as shares (zeros when there is no item)."""
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def validity_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (criterion, ground-truth group): items, failures and the 0/1/2 shares."""
    rows = []
    for criterion in CRITERIA:
        groups = record["criteria"][criterion]["groups"]
        # Groups expected to score high first, as the bench lists them.
        for group, g in sorted(groups.items(), key=lambda kv: (-kv[1]["expected"], kv[0])):
            rows.append(
                {
                    "criterion": criterion,
                    "group": group,
                    "expected": g["expected"],
                    "n_items": sum(g["counts"]),
                    "failures": g.get("failures", 0),
                    "shares": shares(g["counts"]),
                }
            )
    return rows


def auroc_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per separation the bench measured: criterion, what against what, AUROC."""
    return [
        {"criterion": criterion, "comparison": name, "auroc": value}
        for criterion in CRITERIA
        for name, value in record["criteria"][criterion]["auroc"].items()
    ]
