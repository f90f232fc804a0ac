"""Run Snakemake on this repository's workflow from a test, and count the jobs it plans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from axflow.jobstats import job_counts
from axflow.layout import REPO_ROOT

# The tiny DAG (the session fixture `tiny_run` in conftest.py runs it once).
TINY = [
    "dataset.max_concepts=3",
    "dataset.train_positive=6",
    "dataset.train_negative=6",
    "dataset.eval_positive=4",
    "dataset.eval_negative=4",
    "dataset.response_tokens=12",
    "dataset.hard_negatives=1",
    "dataset.max_attempts=1",  # verification runs in the DAG; its resampling is tested on its own
    "steering.instructions_per_concept=2",
    "steering.factors=[0.5,1.0]",
    "steering.max_new_tokens=6",
    "steering.temperature=0",  # greedy: the vllm engine must reproduce these generations exactly
    # hf here (vllm is the default): one vLLM start-up per steer job would slow the tiny DAG;
    # test_vllm_engine_reproduces_the_greedy_generations reruns its steering on vllm.
    "model.dtype=float32",  # exact: engines and reruns agree token for token
    "steering.engine=hf",
    "generator.engine=hf",  # likewise for the data job's writer (tests/test_vllm_engine.py: vllm)
    "method=[diffmean,prompt,bow,random]",
    "+method.random.max_concepts=2",  # the generic per-method concept limit
    "name=tiny",
]


def stand_in_model(results: Path, model_dir: Path, overrides: list[str]) -> Path:
    """Put the session's prepared model where this config's prepare_model job would write it
    (the same code, run once per machine), with an empty benchmark file (an input of the report:
    without it the job would run after all); the key holds the model config, dtype included."""
    from axflow.config import compose
    from axflow.plan import make_plan

    key = make_plan(compose(list(overrides))).model_key
    weights = results / "models" / key / "weights"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.symlink_to(model_dir.resolve(), target_is_directory=True)
    bench = results / "benchmarks" / "prepare_model" / f"{key}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("s\th:m:s\n")  # a header without a row: no time to report
    return weights


def run_args(results: Path, extra: list[str] = ()) -> list[str]:
    return [*TINY, f"results_dir={results}", f"cache_dir={results}/cache", *extra]


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
        if path.name in ("weights", "figures"):  # the directory outputs
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
