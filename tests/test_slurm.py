"""The tiny sharded DAG on a real SLURM cluster: every job goes through sbatch and completes, and
the leaderboard (and every Parquet artefact) equals a local run's.

tests/slurm/start.sh starts the cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd from
Debian's packages, on loopback); it needs root and skips the test where there is none. The run
uses the site profile workflow/profiles/slurm with tests/slurm/profile layered over it (this
cluster's partition, no GPUs, 2 threads a job) and snakemake-executor-plugin-slurm.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from axflow.config import REPO_ROOT, compose
from axflow.plan import make_plan
from dag import planned_jobs, snakemake, stand_in_model

pytestmark = pytest.mark.slow

START = REPO_ROOT / "tests/slurm/start.sh"
SKIPPED = 77  # start.sh: this machine cannot host the cluster

# The smallest DAG with two shards: 2 concepts (one a shard), one additive method.
OVERRIDES = [
    "concept_shards=2",
    "dataset.max_concepts=2",
    "dataset.train_positive=6",
    "dataset.train_negative=6",
    "dataset.eval_positive=4",
    "dataset.eval_negative=4",
    "dataset.response_tokens=12",
    "dataset.hard_negatives=1",
    "dataset.max_attempts=1",
    "steering.instructions_per_concept=2",
    "steering.factors=[0.5,1.0]",
    "steering.max_new_tokens=6",
    "steering.temperature=0",
    "model.dtype=float32",  # exact: engines and reruns agree token for token
    "steering.engine=hf",
    "generator.engine=hf",
    "method=[diffmean]",
    "name=slurm",
]


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """The local cluster, started here unless it is up already."""
    proc = subprocess.run([str(START)], capture_output=True, text=True, check=False)
    if proc.returncode == SKIPPED:
        pytest.skip(f"no SLURM cluster on this machine: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_args(results: Path, smollm_dir: Path) -> list[str]:
    """Overrides writing to `results`, with the session's prepared model standing in for the
    prepare_model job (the same code, run once per machine), as in test_workflow."""
    stand_in_model(results, smollm_dir, OVERRIDES)
    return [*OVERRIDES, f"results_dir={results}", f"cache_dir={results}/cache"]


def sacct_jobs(since: datetime) -> list[dict[str, str]]:
    """Jobs (allocations, not steps) submitted since `since`, with the plugin's comment."""
    fields = ["JobIDRaw", "JobName", "State", "ExitCode", "Comment"]
    proc = subprocess.run(
        [
            "sacct", "--allusers", "--allocations", "--parsable2", "--noheader",
            f"--starttime={since:%Y-%m-%dT%H:%M:%S}", f"--format={','.join(fields)}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [dict(zip(fields, line.split("|"), strict=True)) for line in proc.stdout.splitlines()]


def test_tiny_sharded_dag_on_slurm_matches_local(slurm_cluster, smollm_dir, tmp_path):
    local = run_args(tmp_path / "local", smollm_dir)
    cluster = run_args(tmp_path / "slurm", smollm_dir)
    assert len(make_plan(compose(OVERRIDES)).shards) == 2
    planned = planned_jobs(cluster)
    assert planned["dataset"] == 2 and planned["judge"] == 2, planned  # one chain per shard

    proc = snakemake(overrides=local)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    since = datetime.now().replace(microsecond=0)
    time.sleep(1)  # sacct's start time has whole seconds
    proc = snakemake(
        "--profile", str(REPO_ROOT / "workflow/profiles/slurm"),
        "--workflow-profile", str(REPO_ROOT / "tests/slurm/profile"),
        "--slurm-logdir", str(tmp_path / "slurm_logs"),
        overrides=cluster,
    )  # fmt: skip
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm*/**/*.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs

    # Every job but the target rule (no command: Snakemake runs it in-process) went through
    # sbatch, once, and completed.
    jobs = sacct_jobs(since)
    assert jobs and all(j["State"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs
    submitted: dict[str, int] = {}
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        submitted[rule] = submitted.get(rule, 0) + 1
    assert submitted == {rule: n for rule, n in planned.items() if rule != "all"}, jobs
    assert len({j["JobName"] for j in jobs}) == 1  # one Snakemake run (the plugin's run id)

    boards = [pl.read_csv(tmp_path / name / "slurm/leaderboard.csv") for name in ("local", "slurm")]
    assert boards[0].height == 1 and boards[0]["n_concepts"].item() == 2
    assert boards[1].equals(boards[0]), (boards[0], boards[1])
    # Beneath it, every Parquet artefact (data to ratings, both shards) is equal too.
    tables = [
        {p.relative_to(tmp_path / name): p for p in (tmp_path / name).rglob("*.parquet")}
        for name in ("local", "slurm")
    ]
    assert tables[0].keys() == tables[1].keys() and len(tables[0]) >= 20
    for path, local_file in tables[0].items():
        assert pl.read_parquet(tables[1][path]).equals(pl.read_parquet(local_file)), path
