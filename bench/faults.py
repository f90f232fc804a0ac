"""kill -9 anywhere: the smallest real DAG is SIGKILLed N times at seeded random moments, resumed
with the README's run command, and every artefact is compared with a clean run's.

All runs share one private copy of the repository (so one `.snakemake`, as a user's checkout);
each has its own results folder and call cache (tests/private_runs.py: the DAG, the command, the
comparison). Each run is killed (the whole process group, SIGKILL) at a moment drawn from its own
of N equal slices of the clean run's wall time, the slices taken in seeded random order, so every
stage gets its share and a run cut short by --max-minutes still spreads over them; every other run
then waits for the next atomic write in flight (a `.<name>.*.tmp` beside its target, up to 5 s)
and kills during it. Right after, the same command (`axflow run --cores 2 ...`, what `make run`
runs) is started again from the same directory, nothing in between, and must finish with exit 0.

Counted: runs that could not resume; runs whose artefacts differ from the clean run's (Parquet by
content, tensors, JSON, leaderboard, report, call-cache rows), bit for bit and beyond a relative
float tolerance (tests/private_runs.py REL_TOL: the judge's perplexities follow the job order in
their 6th digit); partial or corrupt files after the resume (temp files; Parquet, safetensors or
JSON that does not load); temp files the kills left. Last line: `kill9_identical_runs: K/N`
(bit for bit, N: the runs done).

    .venv/bin/python bench/faults.py [--n 20] [--seed 0] [--keep DIR] [--ref COMMIT]
                                     [--max-minutes M]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from axflow.concept10 import smollm_dir  # noqa: E402
from private_runs import (  # noqa: E402 - the shared helper lives beside the tests
    REL_TOL,
    cache_differences,
    differences,
    kill_group,
    private_workdir,
    run,
    run_args,
    running_stages,
    stage_model,
    start,
    temp_files,
    unreadable,
)

NAME = "kill9"
WRITE_WAIT_S = 5.0


def kill_at(proc, results: Path, at_s: float, started: float, mid_write: bool) -> float | None:
    """Kill the run's group at `at_s` (or at the next write in flight after it); return the
    moment of the kill, or None if the run ended first."""
    while time.perf_counter() - started < at_s:
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    if mid_write:
        deadline = time.perf_counter() + WRITE_WAIT_S
        while not temp_files(results) and time.perf_counter() < deadline:
            if proc.poll() is not None:
                return None
            time.sleep(0.002)
    if proc.poll() is not None:
        return None
    moment = time.perf_counter() - started
    kill_group(proc)
    return moment


def verdict(identical: bool, close: bool) -> str:
    if identical:
        return "identical"
    return f"equal within rel. {REL_TOL:g} (not bit-identical)" if close else "NOT equal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="killed runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--ref", help="run this commit (default: the working tree as it is)")
    parser.add_argument(
        "--max-minutes", type=float, help="start no run past this much wall time (all so far count)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="axflow-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    workdir = private_workdir(base / "repo", args.ref)
    model_dir = smollm_dir()

    clean = base / "clean"
    stage_model(clean, model_dir)
    t0 = time.perf_counter()
    code = run(workdir, run_args(clean, NAME), base / "clean.log")
    clean_s = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"the clean run failed (exit {code}); see {base / 'clean.log'}")
    print(f"clean run: {clean_s:.1f} s, {len(list(clean.rglob('*.parquet')))} Parquet files")

    stages, counts = Counter(), Counter()
    identical = close = done = 0
    slices = rng.sample(range(args.n), args.n)  # any first runs still spread over the stages
    for i, part in enumerate(slices):
        if args.max_minutes and time.perf_counter() - t0 > args.max_minutes * 60:
            print(f"stopped after {done} of {args.n} runs: --max-minutes {args.max_minutes:g}")
            break
        done += 1
        results = base / f"run{i:02d}"
        stage_model(results, model_dir)
        overrides = run_args(results, NAME)
        log = base / f"run{i:02d}.log"
        at_s = rng.uniform(part, part + 1) * 0.95 * clean_s / args.n
        mid_write = i % 2 == 1
        started = time.perf_counter()
        moment = kill_at(start(workdir, overrides, log), results, at_s, started, mid_write)
        running = running_stages(workdir, results) if moment is not None else []
        left = temp_files(results)
        stages.update(running or ["between jobs" if moment is not None else "not killed"])
        counts["killed"] += moment is not None
        counts["killed mid-write"] += bool(left)
        counts["temp files left by kills"] += len(left)
        resume_start = time.perf_counter()
        code = run(workdir, overrides, log)  # the README's command again, nothing in between
        resume_s = time.perf_counter() - resume_start
        broken = temp_files(results) + unreadable(results)
        diffs, beyond = [], []
        if code == 0:
            diffs = differences(clean, results) + cache_differences(
                clean / "cache", results / "cache"
            )
            beyond = differences(clean, results, REL_TOL) + cache_differences(
                clean / "cache", results / "cache", REL_TOL
            )
        counts["could not resume"] += code != 0
        counts["partial or corrupt after resume"] += len(broken)
        counts[f"differing runs (beyond rel. {REL_TOL:g})"] += bool(beyond)
        ok, equal = code == 0 and not broken and not diffs, code == 0 and not broken and not beyond
        identical += ok
        close += equal
        when = "not killed (ended first)" if moment is None else f"killed at {moment:.1f} s"
        print(
            f"run {i:2d}: {when} during {', '.join(running) or '-'}"
            f"{f' (mid-write, {len(left)} temp files)' if left else ''}; resume exit {code} "
            f"in {resume_s:.1f} s: {verdict(ok, equal)}",
            flush=True,
        )
        for line in [*map(str, broken), *diffs][:8]:
            print(f"    {line}")
        if equal and not args.keep:
            shutil.rmtree(results)
    print(f"wall time: {(time.perf_counter() - t0) / 60:.1f} min, runs under {base}")
    print(f"stage running at the kill: {dict(sorted(stages.items()))}")
    for key in (
        "killed",
        "killed mid-write",
        "temp files left by kills",
        "partial or corrupt after resume",
        "could not resume",
        f"differing runs (beyond rel. {REL_TOL:g})",
    ):
        print(f"{key}: {counts[key]}")
    print(f"kill9_equal_runs_within_rel_{REL_TOL:g}: {close}/{done}")
    print(f"kill9_identical_runs: {identical}/{done}")
    return 0 if close == done else 1


if __name__ == "__main__":
    sys.exit(main())
