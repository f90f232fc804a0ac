"""kill -9, then the same command again: it resumes by itself, or refuses while a run is alive.

The fast tests run `axflow.cli.run_resuming` (the body of `axflow run`) on a two-rule Snakefile
whose second job writes through `axflow.store.atomic_path` and waits inside the write while a
`slow` file exists, so a kill lands mid-write every time. The slow test kills the smallest real
DAG while it extracts activations and compares the resumed run with a clean one
(bench/faults.py does that N times at random moments).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import private_runs
from axflow.cli import run_resuming
from axflow.resume import _runs_snakemake, live_snakemake

SNAKEFILE = """
rule all:
    input: "out/b.txt"

rule a:
    output: "out/a.txt"
    shell: "echo a > {output}"

rule b:
    input: "out/a.txt"
    output: "out/b.txt"
    shell: "echo partial > {output} && python write_b.py {output}"

rule c:
    output: "out/c.txt"
    shell: "echo c > {output}"
"""
WRITE_B = """
import sys, time
from pathlib import Path
from axflow.store import atomic_path

with atomic_path(sys.argv[1], ".txt") as tmp:
    tmp.write_text("b\\n")
    while Path("slow").exists():  # hold the write open until the test lets go
        time.sleep(0.05)
"""
LAUNCH = (
    "import sys; from pathlib import Path; from axflow.cli import run_resuming; "
    "w = Path(sys.argv[1]); sys.exit(run_resuming(sys.argv[2:], w, w / 'out'))"
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "write_b.py").write_text(WRITE_B)
    (tmp_path / "slow").touch()
    return tmp_path


def snakemake_cmd(workdir: Path, *targets: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "1",
        "--directory",
        str(workdir),
        *targets,
    ]


def start(cmd: list[str], workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=workdir, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def start_axflow_run(workdir: Path) -> subprocess.Popen:
    return start([sys.executable, "-c", LAUNCH, str(workdir), *snakemake_cmd(workdir)], workdir)


def temp_files(workdir: Path) -> list[Path]:
    return list((workdir / "out").glob(".b.txt.*.tmp"))


def wait_mid_write(proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while not temp_files(workdir):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "job b never started its write"
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def locks(workdir: Path) -> list[Path]:
    return list((workdir / ".snakemake" / "locks").glob("*.lock"))


@pytest.mark.slow  # a workflow run: make test's second step
def test_killed_run_resumes_by_itself(workdir: Path, capfd) -> None:
    run = start_axflow_run(workdir)
    wait_mid_write(run, workdir)
    kill_group(run)
    assert locks(workdir) and temp_files(workdir)
    assert (workdir / "out/b.txt").read_text() == "partial\n"
    # What a plain rerun meets (the default profile adds --rerun-incomplete): the stale lock.
    plain_cmd = [*snakemake_cmd(workdir), "--rerun-incomplete"]
    plain = subprocess.run(plain_cmd, cwd=workdir, capture_output=True, text=True)
    assert plain.returncode != 0 and "Directory cannot be locked" in plain.stderr

    (workdir / "slow").unlink()
    assert run_resuming(snakemake_cmd(workdir), workdir, workdir / "out") == 0
    err = capfd.readouterr().err
    assert "cleared the lock a stopped run left" in err
    assert "removed 1 temporary files of interrupted writes" in err
    assert (workdir / "out/b.txt").read_text() == "b\n"  # the incomplete job ran again
    assert not temp_files(workdir) and not locks(workdir)
    assert run_resuming(snakemake_cmd(workdir), workdir, workdir / "out") == 0
    assert "Nothing to be done" in capfd.readouterr().err


def test_refuses_while_a_run_holds_the_lock(workdir: Path, capfd) -> None:
    live = start_axflow_run(workdir)
    try:
        wait_mid_write(live, workdir)
        held = locks(workdir)
        assert run_resuming(snakemake_cmd(workdir), workdir, workdir / "out") == 3
        err = capfd.readouterr().err
        assert "another Snakemake run" in err and "Wait for it to finish" in err
        snakemake_pid = next(p.pid for p in psutil.Process(live.pid).children())
        assert f"pid {snakemake_pid}:" in err
        assert locks(workdir) == held and temp_files(workdir)  # the live run's files untouched
        (workdir / "slow").unlink()
        assert live.wait(timeout=60) == 0
        assert (workdir / "out/b.txt").read_text() == "b\n"
    finally:
        if live.poll() is None:
            kill_group(live)


def test_a_direct_snakemake_run_counts_as_alive(workdir: Path, capfd) -> None:
    """`snakemake` started without axflow holds no axflow lock; it is found by its process."""
    live = start(snakemake_cmd(workdir), workdir)
    try:
        wait_mid_write(live, workdir)
        assert [r.pid for r in live_snakemake(workdir)] == [live.pid]
        assert run_resuming(snakemake_cmd(workdir), workdir, workdir / "out") == 3
        assert f"pid {live.pid}:" in capfd.readouterr().err
        assert temp_files(workdir) and locks(workdir)
        (workdir / "slow").unlink()
        assert live.wait(timeout=60) == 0
    finally:
        if live.poll() is None:
            kill_group(live)


def test_a_run_on_other_outputs_proceeds(workdir: Path) -> None:
    live = start_axflow_run(workdir)
    try:
        wait_mid_write(live, workdir)
        cmd = snakemake_cmd(workdir, "out/c.txt")
        assert run_resuming(cmd, workdir, workdir / "out") == 0
        assert (workdir / "out/c.txt").read_text() == "c\n" and live.poll() is None
        (workdir / "slow").unlink()
        assert live.wait(timeout=60) == 0
    finally:
        if live.poll() is None:
            kill_group(live)


def test_snakemake_processes_are_recognised() -> None:
    assert _runs_snakemake(["/x/.venv/bin/python", "/x/.venv/bin/snakemake", "--cores", "2"])
    assert _runs_snakemake(["python3", "-m", "snakemake", "-n"])
    assert _runs_snakemake(["snakemake", "--unlock"])
    assert not _runs_snakemake(["python", "-m", "axflow.stages", "{}"])
    assert not _runs_snakemake(["grep", "x", "y", "snakemake"])


def _kill_when_running(proc: subprocess.Popen, workdir: Path, results: Path, stage: str) -> None:
    deadline = time.monotonic() + 900
    while stage not in private_runs.running_stages(workdir, results):
        assert proc.poll() is None, f"the run ended before {stage} started"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    private_runs.kill_group(proc)


@pytest.mark.slow
def test_killed_dag_resumes_to_the_clean_result(tmp_path: Path, smollm_dir: Path) -> None:
    """The smallest real DAG, killed while it extracts activations and its resume killed while
    it steers, ends equal to a clean run: every artefact, the leaderboard (exactly) and the call
    cache."""
    pr = private_runs
    workdir = pr.private_workdir(tmp_path / "repo")
    clean, killed, log = tmp_path / "clean", tmp_path / "killed", tmp_path / "run.log"
    for results in (clean, killed):
        pr.stage_model(results, smollm_dir)
    assert pr.run(workdir, pr.run_args(clean, "kill9"), log) == 0, log.read_text()[-3000:]
    for stage in ("extract_activations", "steer"):
        run = pr.start(workdir, pr.run_args(killed, "kill9"), log)
        _kill_when_running(run, workdir, killed, stage)
        assert list((workdir / ".snakemake" / "locks").glob("*.lock"))  # the kill left its lock
    assert pr.run(workdir, pr.run_args(killed, "kill9"), log) == 0, log.read_text()[-3000:]
    assert "cleared the lock a stopped run left" in log.read_text()
    assert not pr.temp_files(killed) and not pr.unreadable(killed)
    # Equal, but for the judge's perplexities in their 6th digit (private_runs.REL_TOL says why).
    assert pr.differences(clean, killed, pr.REL_TOL) == []
    assert pr.cache_differences(clean / "cache", killed / "cache", pr.REL_TOL) == []
