"""Run Snakemake on this repository's workflow from a test, and count the jobs it plans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from axflow.jobstats import job_counts
from axflow.layout import REPO_ROOT


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


def benchmarks(overrides: list[str]) -> dict[Path, Path]:
    """Each job's `benchmark:` file and its first output, from a forced dry run's job list."""
    proc = snakemake("--dry-run", "--forceall", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[Path, Path] = {}
    output = None
    for line in proc.stdout.splitlines():
        field, _, value = line.strip().partition(": ")
        if field == "output":
            output = Path(value.split(", ")[0])
        elif field == "benchmark":
            out[Path(value)] = output
    return out


def materialize(overrides: list[str]) -> None:
    """Stand in for a finished run: every output of the DAG exists and is up to date.

    Snakemake lists the outputs (`--summary`); empty files take their place and `--touch` dates
    them in DAG order. Benchmark files (inputs of the report, not in `--summary`, not touched)
    exist too, each dated as its job's output. A dry run then plans exactly what a change would
    rerun, in seconds.
    """
    proc = snakemake("--summary", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timed = benchmarks(overrides)
    for line in proc.stdout.splitlines()[1:]:
        path = Path(line.split("\t")[0])
        if path.name == "weights":  # the one directory output
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    for path in timed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    proc = snakemake("--touch", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path, output in timed.items():
        mtime = output.stat().st_mtime_ns
        os.utime(path, ns=(mtime, mtime))
