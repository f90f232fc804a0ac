"""Run Snakemake on this repository's workflow from a test, and count the jobs it plans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from axflow.config import REPO_ROOT
from axflow.jobstats import job_counts


def snakemake(*args: str, overrides: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(REPO_ROOT)]
    if overrides:
        args = (*args, "--config", "overrides=" + " ".join(overrides))
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, check=False, cwd=REPO_ROOT
    )


def planned_jobs(overrides: list[str], *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, per rule (empty when nothing is to be done)."""
    proc = snakemake("--dry-run", *args, overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return job_counts(proc.stdout)


def materialize(overrides: list[str]) -> None:
    """Stand in for a finished run: every output of the DAG exists and is up to date.

    Snakemake lists the outputs (`--summary`); empty files take their place and `--touch` dates
    them in DAG order. A dry run then plans exactly what a change would rerun, in seconds.
    """
    proc = snakemake("--summary", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in proc.stdout.splitlines()[1:]:
        path = Path(line.split("\t")[0])
        if path.name == "weights":  # the one directory output
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    proc = snakemake("--touch", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
