"""Resume after a crash: tell a stale Snakemake lock from a live run, and clear only a stale one.

A killed Snakemake run leaves its lock in `.snakemake/locks`, and Snakemake then refuses every
later run on those files until `snakemake --unlock`; clearing the lock of a run that is still
alive would let two runs write the same files. So a run started by `axflow run` holds an flock on
`.snakemake/axflow-run.lock` for its whole life (shared, so runs on other outputs can proceed; the
snakemake child inherits it, so it is held until the last of them exits; the kernel drops it on
kill -9), and Snakemake processes started directly (`snakemake ...`) are found by their command
line and working directory. With neither alive, every lock is stale: it is cleared, and so are
the temporary files of writes the crash cut short (`axflow.store` writes `.<name>.*.tmp` beside
the target). `--rerun-incomplete` then reruns the jobs the crash interrupted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RUN_LOCK = Path(".snakemake") / "axflow-run.lock"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"
# What Snakemake prints (LockException) when another run's lock covers this run's files.
LOCKED_MESSAGE = "Directory cannot be locked"


@dataclass
class LiveRun:
    """A Snakemake process working in the directory."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}"


@dataclass
class Claim:
    """This run's hold on the working directory, and what was found and cleared to get it."""

    fd: int  # flock held shared until every process holding it exits: pass it to the child
    exclusive_at_start: bool  # no other `axflow run` was alive in the directory
    live: list[LiveRun] = field(default_factory=list)  # Snakemake processes found alive
    cleared_locks: int = 0  # stale lock files cleared
    removed_temp: list[Path] = field(default_factory=list)  # temp files of interrupted writes

    @property
    def alone(self) -> bool:
        return self.exclusive_at_start and not self.live


def _runs_snakemake(argv: list[str]) -> bool:
    # `snakemake ...`, `python .../bin/snakemake ...` or `python -m snakemake ...`.
    head = argv[:3]
    if any(Path(a).name == "snakemake" for a in head):
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:], strict=False))


def _directory_arg(argv: list[str]) -> str | None:
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("--directory", "-d"):
            return value
    for arg in argv:
        if arg.startswith("--directory="):
            return arg.split("=", 1)[1]
    return None


def live_snakemake(workdir: Path) -> list[LiveRun]:
    """Snakemake processes (other than this one and its ancestors) working in `workdir`."""
    workdir = workdir.resolve()
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = proc.info
        argv = info["cmdline"] or []
        if info["pid"] in skip or info["status"] == psutil.STATUS_ZOMBIE or not argv:
            continue
        if not _runs_snakemake(argv):
            continue
        cwd = Path(info["cwd"]) if info["cwd"] else None
        given = _directory_arg(argv)
        where = {cwd, (cwd / given).resolve() if cwd and given else None}
        if workdir in where:
            found.append(LiveRun(info["pid"], " ".join(argv)))
    return found


def stale_temp_files(results_dir: Path) -> list[Path]:
    """Temporary files and folders that `axflow.store`'s atomic writes leave when killed."""
    found = []
    for root, dirs, files in os.walk(results_dir):  # symlinks (a shared model folder) not followed
        found += [Path(root, n) for n in files + dirs if n.startswith(".") and n.endswith(".tmp")]
    return sorted(found)


def claim_workdir(workdir: Path, results_dir: Path, unlock: Callable[[], None]) -> Claim:
    """Hold the run lock of `workdir`; if no other run is alive there, clear what a crash left.

    `unlock()` clears Snakemake's stale locks (the caller runs `snakemake --unlock`). Returns the
    claim; its `fd` stays locked (shared) until closed or until every process holding it exits.
    """
    lock_path = workdir / RUN_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        exclusive = True
    except BlockingIOError:
        exclusive = False
    claim = Claim(fd=fd, exclusive_at_start=exclusive, live=live_snakemake(workdir))
    if claim.alone:
        locks = list((workdir / SNAKEMAKE_LOCKS).glob("*.lock"))
        if locks:
            unlock()
            claim.cleared_locks = len(locks)
        for path in stale_temp_files(results_dir):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            claim.removed_temp.append(path)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits while another run is in this step
    return claim


def refusal(workdir: Path, live: list[LiveRun]) -> str:
    """The message when Snakemake refused the run because of another run's lock."""
    if live:
        who = "\n".join(f"  {run}" for run in live)
        return (
            f"axflow: another Snakemake run in {workdir} holds the lock on files this run needs:\n"
            f"{who}\nWait for it to finish (or stop it), then run the same command again; "
            "a lock left by a run that is no longer alive is cleared automatically."
        )
    return (
        f"axflow: Snakemake found a lock in {workdir / SNAKEMAKE_LOCKS} while another "
        "`axflow run` was starting or running there; run the same command again once it has "
        "finished (a lock left by a run that is no longer alive is then cleared automatically)."
    )
