"""What a rerun costs: no-op rerun time, the jobs a judge-only change schedules, and the
scheduler's overhead per job on a 1000-shard DAG.

Needs a finished default experiment (`make run`); the 1000-shard DAG is only planned (a dry run
over 4000 generated concepts, results in a temporary folder). A concept's shard is a hash of its
description, so with 4 concepts per shard nearly every shard has some. Last line:
`dag_noop_rerun_s: <seconds>` (goal: 0 jobs in under 10 s).

    .venv/bin/python bench/dag.py [--shards 1000] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from axflow.jobstats import job_counts

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args: str, overrides: list[str] = (), cores: int = 2) -> tuple[float, str]:
    """Run snakemake in the repository; return (wall seconds, stdout) or exit on failure."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), *args]
    if overrides:
        cmd += ["--config", "overrides=" + " ".join(overrides)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--concepts-per-shard", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    _, planned = snakemake("--dry-run", cores=args.cores)
    if job_counts(planned):
        sys.exit(f"the default experiment is not finished; run `make run` first:\n{planned}")

    noop_s, out = snakemake(cores=args.cores)  # a real run, which must find nothing to do
    noop_jobs = sum(v for k, v in job_counts(out).items() if k != "all")
    print(f"no-op rerun: {noop_jobs} jobs executed in {noop_s:.2f} s")

    judge = ["judge.perplexity_thresholds=[30.0,90.0]"]
    _, out = snakemake("--dry-run", overrides=judge, cores=args.cores)
    print(f"judge-only change ({judge[0]}): {json.dumps(job_counts(out))}")

    with tempfile.TemporaryDirectory() as tmp:
        concepts = Path(tmp) / "concepts.jsonl"
        with concepts.open("w") as f:
            for i in range(args.shards * args.concepts_per_shard):
                genre = ("text", "code", "math")[i % 3]
                f.write(json.dumps({"concept": f"synthetic concept number {i}", "genre": genre}))
                f.write("\n")
        big = [
            f"dataset.concepts={concepts}",
            "dataset.max_concepts=null",
            f"concept_shards={args.shards}",
            f"results_dir={tmp}/results",
            f"cache_dir={tmp}/cache",
            "method=[diffmean]",
        ]
        dry_s, out = snakemake("--dry-run", overrides=big, cores=args.cores)
    jobs = sum(job_counts(out).values())
    n = args.shards * args.concepts_per_shard
    print(f"{args.shards}-shard dry run ({n} concepts): {jobs} jobs planned in {dry_s:.1f} s")
    print(f"scheduling overhead: {1000 * dry_s / jobs:.1f} ms per job")
    print(f"dag_noop_rerun_s: {noop_s:.2f}")


if __name__ == "__main__":
    main()
