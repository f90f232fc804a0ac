"""The smallest real DAG, run in a private copy of the repository: start, kill, resume, compare.

A private copy keeps `.snakemake` (locks, incomplete markers) and the code under test apart from
other runs in the checkout; it holds the working tree, or the commit AXFLOW_TEST_REF names (for a
checkout others are editing). Runs use exactly what `make run` runs (`.venv/bin/axflow run --cores
2`, venv on PATH) with the overrides below; the prepared test model stands in for prepare_model.
Used by tests/test_kill9.py, tests/test_concurrent_runs.py and bench/faults.py.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal
from safetensors import safe_open

from dag import stand_in_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# 2 concepts, DiffMean and the prompt baseline, a few tokens everywhere (tests/test_workflow.py's
# TINY, smaller): every stage runs, deterministic given the seed and the call cache.
SMALLEST = [
    "dataset.max_concepts=2",
    "dataset.train_positive=4",
    "dataset.train_negative=4",
    "dataset.eval_positive=4",
    "dataset.eval_negative=4",
    "dataset.response_tokens=8",
    "dataset.hard_negatives=1",
    "dataset.max_attempts=1",
    "steering.instructions_per_concept=2",
    "steering.factors=[0.5,1.0]",
    "steering.max_new_tokens=6",
    "steering.temperature=0",
    "model.dtype=float32",  # exact: engines and reruns agree token for token
    "steering.engine=hf",
    "generator.engine=hf",
    "method=[diffmean,prompt]",
]
# Where an artefact's path starts (below the results folder) -> the rule that writes it.
STAGE_OF = {
    "models": "prepare_model",
    "data": "dataset",
    "activations": "extract_activations",
    "train": "train",
    "detect": "detect",
    "steer": "steer",
    "judge": "judge",
}
# Not compared: per-run timings and logs, the shared stand-in model, the call cache (compared
# on its own: `cache_differences`), and report.html (report.md's content with per-run timings).
SKIP_DIRS = {"logs", "benchmarks", "models", "cache"}
SKIP_FILES = {"report.html"}


def private_workdir(dest: Path, ref: str | None = None) -> Path:
    """Copy the repository's files to `dest`: the working tree (tracked and untracked files, not
    ignored ones), or the commit `ref` (default: $AXFLOW_TEST_REF, if set)."""
    dest.mkdir(parents=True, exist_ok=True)
    ref = ref or os.environ.get("AXFLOW_TEST_REF") or None
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src, dst = REPO / os.fsdecode(name), dest / os.fsdecode(name)
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    return dest


def run_args(results: Path, name: str, cache_dir: Path | None = None) -> list[str]:
    cache = cache_dir or results / "cache"
    return [*SMALLEST, f"name={name}", f"results_dir={results}", f"cache_dir={cache}"]


def stage_model(results: Path, model_dir: Path) -> None:
    """The prepared model as this results folder's prepare_model output, at SMALLEST's key."""
    stand_in_model(results, model_dir, SMALLEST)


def run_command(overrides: list[str]) -> list[str]:
    """What `make run` runs, with these overrides."""
    return [str(BIN / "axflow"), "run", "--cores", "2", *overrides]


def run_env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(workdir / "src"),  # the copy's code, not the checkout's editable install
    }


def start(workdir: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    """Start a run in its own process group (so the whole group can be killed)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            run_command(overrides),
            cwd=workdir,
            env=run_env(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(workdir: Path, overrides: list[str], log: Path, timeout: float = 1800) -> int:
    proc = start(workdir, overrides, log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return -9


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group and wait until every member is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for _ in range(1000):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise RuntimeError(f"process group {proc.pid} survived SIGKILL")


def temp_files(results: Path) -> list[Path]:
    """Temporary files of atomic writes (`.<name>.*.tmp`) under a results folder."""
    found = []
    for root, dirs, files in os.walk(results):
        found += [Path(root, n) for n in files + dirs if n.startswith(".") and n.endswith(".tmp")]
    return found


def running_stages(workdir: Path, results: Path) -> list[str]:
    """Rules whose outputs Snakemake has marked incomplete (started, not finished)."""
    stages = set()
    for marker in (workdir / ".snakemake" / "incomplete").glob("*"):
        try:
            path = Path(base64.b64decode(marker.name).decode())
        except ValueError:
            continue
        if path.is_relative_to(results):
            first = path.relative_to(results).parts[0]
            stages.add(STAGE_OF.get(first, "report"))
    return sorted(stages)


def artefacts(results: Path) -> list[Path]:
    """Every compared artefact, relative to the results folder."""
    out = []
    for path in results.rglob("*"):
        rel = path.relative_to(results)
        skipped = rel.parts[0] in SKIP_DIRS or path.name in SKIP_FILES or path.name[0] == "."
        if path.is_file() and not skipped:
            out.append(rel)
    return sorted(out)


def unreadable(results: Path) -> list[str]:
    """Artefacts a reader would reject: Parquet, safetensors or JSON that does not load."""
    bad = []
    for rel in artefacts(results):
        path = results / rel
        try:
            if path.suffix == ".parquet":
                pl.read_parquet(path)
            elif path.suffix == ".safetensors":
                with safe_open(path, "np") as f:
                    [f.get_tensor(k) for k in f.keys()]
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as err:  # noqa: BLE001 - any failure to read is what is counted
            bad.append(f"{rel}: {type(err).__name__}: {err}")
    return bad


# Float tolerance where exact equality is not expected: the embedded judge's perplexities depend
# on which other sequences share their padded batch, and that follows the job order (which a
# resume or a concurrent run changes) through the call cache; they differ in the 6th digit.
REL_TOL = 1e-4


def _close(a: object, b: object, rel_tol: float) -> bool:
    """JSON-like values equal, floats within `rel_tol` of each other."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    return a == b


def _untimed(obj: object) -> object:
    """`obj` without the wall times it records (keys naming seconds)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if "seconds" not in k}
    return [_untimed(v) for v in obj] if isinstance(obj, list) else obj


def _json(path: Path, results: Path) -> object:
    obj = json.loads(path.read_text().replace(str(results), "<results>"))
    if isinstance(obj, dict):
        obj.pop("generators", None)  # stats.json: work this process did (calls, cached hits)
        obj.pop("cache_dir", None)  # where the cache lives, not what it holds
    return _untimed(obj)


def _tensors(path: Path) -> tuple[object, dict[str, np.ndarray]]:
    with safe_open(path, "np") as f:
        return _untimed(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}


def _report(path: Path) -> list[str]:
    """report.md without what differs by run, not by result: the wall time per job (its last
    section) and the generators' call accounting (cache hits, seconds), as in stats.json."""
    text = path.read_text().split("## Time per rule", 1)[0]
    return [line for line in text.splitlines() if "from the call cache" not in line]


def _frames_equal(a: pl.DataFrame, b: pl.DataFrame, rel_tol: float) -> bool:
    if a.equals(b):
        return True
    if not rel_tol:
        return False
    try:
        assert_frame_equal(a, b, check_exact=False, rel_tol=rel_tol, abs_tol=0.0)
    except AssertionError:
        return False
    return True


def differences(clean: Path, other: Path, rel_tol: float = 0.0) -> list[str]:
    """How `other`'s artefacts differ from `clean`'s (empty: identical). Parquet by content,
    safetensors by tensors and metadata, JSON by value (results paths, wall times and stats.json's
    call accounting aside), report.md but its timings and accounting, anything else byte for byte.
    With `rel_tol`, Parquet floats may differ by that much (relative)."""
    diffs = []
    names_a, names_b = set(artefacts(clean)), set(artefacts(other))
    diffs += [f"missing: {rel}" for rel in sorted(names_a - names_b)]
    diffs += [f"extra: {rel}" for rel in sorted(names_b - names_a)]
    for rel in sorted(names_a & names_b):
        a, b = clean / rel, other / rel
        try:
            if rel.suffix == ".parquet":
                same = _frames_equal(pl.read_parquet(a), pl.read_parquet(b), rel_tol)
            elif rel.suffix == ".safetensors":
                (meta_a, ta), (meta_b, tb) = _tensors(a), _tensors(b)
                same = meta_a == meta_b and ta.keys() == tb.keys()
                same = same and all(np.array_equal(ta[k], tb[k]) for k in ta)
            elif rel.suffix == ".json":
                same = _json(a, clean) == _json(b, other)
            elif rel.name == "report.md":
                same = _report(a) == _report(b)
            else:
                same = a.read_bytes() == b.read_bytes()
        except Exception as err:  # noqa: BLE001 - an unreadable file is a difference
            diffs.append(f"unreadable: {rel}: {err}")
            continue
        if not same:
            diffs.append(f"differs: {rel}")
    return diffs


def cache_rows(cache_dir: Path) -> list[tuple[str, str, str, str, str]]:
    """Every row of a call cache, sorted: (key, model, params, prompt, response)."""
    with sqlite3.connect(cache_dir / "calls.sqlite") as conn:
        rows = conn.execute("SELECT key, model, params, prompt, response FROM calls").fetchall()
    return sorted(rows)


def cache_differences(a: Path, b: Path, rel_tol: float = 0.0) -> list[str]:
    """How two call caches differ: calls stored twice (under two keys), keys only in one cache,
    responses that differ (JSON responses compared with floats within `rel_tol`)."""
    rows_a, rows_b = cache_rows(a), cache_rows(b)
    diffs = []
    for label, rows in (("first", rows_a), ("second", rows_b)):
        doubled = len(rows) - len({tuple(r[1:4]) for r in rows})
        diffs += [f"{label} cache: {doubled} calls stored twice"] if doubled else []
    by_a, by_b = {r[0]: r for r in rows_a}, {r[0]: r for r in rows_b}
    for label, keys in (
        ("first", by_a.keys() - by_b.keys()),
        ("second", by_b.keys() - by_a.keys()),
    ):
        diffs += [f"only in the {label} cache: {len(keys)} rows"] if keys else []
    changed = sum(
        by_a[k][:4] != by_b[k][:4]
        or not (by_a[k][4] == by_b[k][4] or _json_close(by_a[k][4], by_b[k][4], rel_tol))
        for k in by_a.keys() & by_b.keys()
    )
    return diffs + ([f"responses that differ: {changed}"] if changed else [])


def _json_close(a: str, b: str, rel_tol: float) -> bool:
    if not rel_tol:
        return False
    try:
        return _close(json.loads(a), json.loads(b), rel_tol)
    except ValueError:
        return False
