"""`axflow status`: per rule, the jobs done and the jobs a run would start now, and why each runs.

Snakemake answers both without running a job: a dry run lists the jobs it would run, each with
its reasons; a forced dry run lists every job of the DAG, so the others are done. Both start at
once, on the command `axflow run` uses (`axflow.workflow_command`). Snakemake's reasons are
shortened here. One needs more: an output folder is named by the key of its config slice, so a
changed config or code shows as a missing output under a new key; the nearest earlier run of
the stage (the `config.json` in a sibling folder) names the config keys and code that changed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from axflow.layout import REPO_ROOT, UNKEYED
from axflow.plan import Sweep
from axflow.workflow_command import snakemake_command, snakemake_env

# Snakemake's reason clauses (snakemake.jobs.Reason) and what each means here.
REASONS = {
    "Missing output files": "missing output",
    "Incomplete output files": "incomplete output (an interrupted or still running job)",
    "Updated input files": "updated input",
    "Input files updated by another job": "an input is rebuilt first",
    "Set of input files has changed since last execution": "changed set of input files",
    "Code has changed since last execution": "changed rule code",
    "Params have changed since last execution": "changed params",
    "Software environment definition has changed since last execution": "changed software env",
    "Forced execution": "forced",
}
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
TARGET_RULE = "all"  # the Snakefile's default target: it computes nothing
SHOWN_KEYS = 4  # changed config keys named per job


@dataclass
class Job:
    rule: str
    fields: dict[str, str] = field(default_factory=dict)  # output, wildcards, reason, ...

    @property
    def name(self) -> str:
        return f"{self.rule} {self.fields.get('wildcards', '')}".strip()


def parse_jobs(dry_run: str) -> list[Job]:
    """The jobs of a Snakemake dry run's listing, in its order."""
    jobs: list[Job] = []
    job = None  # the job whose indented fields follow
    for line in dry_run.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            job = Job(header.group(1))
            jobs.append(job)
        elif not line.startswith("    "):
            job = None
        elif job is not None and ": " in line:
            name, _, value = line.strip().partition(": ")
            job.fields.setdefault(name, value)
    return [j for j in jobs if j.rule != TARGET_RULE]


def show_status(sweep: Sweep, overrides: list[str], out: TextIO | None = None) -> int:
    """Print the status of the run `overrides` describes (on stdout by default); Snakemake's
    exit code."""
    out = out or sys.stdout
    cmd = [*snakemake_command(overrides), "--dry-run", "--nolock", "--rerun-incomplete"]
    runs = [
        subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=snakemake_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (cmd, [*cmd, "--forceall"])
    ]
    (todo_out, todo_err), (all_out, all_err) = outputs = [run.communicate() for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        if run.returncode:  # Snakemake writes its errors to stdout too
            said = (stdout + stderr)[-4000:]
            print(f"axflow status: snakemake's dry run failed:\n{said}", file=sys.stderr)
            return run.returncode
    todo, every = parse_jobs(todo_out), parse_jobs(all_out)
    results = resolve(sweep.cells[0].plan.cfg["results_dir"])
    rules = list(dict.fromkeys(j.rule for j in every))
    total, pending = Counter(j.rule for j in every), Counter(j.rule for j in todo)
    done = len(every) - len(todo)
    print(f"axflow status: {results}: {len(every)} jobs, {done} done, {len(todo)} to run", file=out)
    width = max(map(len, ["rule", *rules]))
    print(f"  {'rule':<{width}}  {'done':>6}  {'to run':>6}", file=out)
    for rule in rules:
        print(f"  {rule:<{width}}  {total[rule] - pending[rule]:>6}  {pending[rule]:>6}", file=out)
    if not todo:
        print("Nothing to run: every job is done.", file=out)
        return 0
    print("To run, and why:", file=out)
    earlier = EarlierRuns(sweep, results)
    for job in sorted(todo, key=lambda j: rules.index(j.rule)):  # upstream rules first
        print(f"  {job.name}: {'; '.join(reasons(job, earlier, results))}", file=out)
    return 0


def reasons(job: Job, earlier: EarlierRuns, results: Path) -> list[str]:
    """Snakemake's reasons for `job`, shortened; a missing output says what changed."""
    out = []
    for clause in job.fields.get("reason", "").split("; "):
        head, _, detail = clause.partition(": ")
        short = REASONS.get(head, clause)
        if head == "Missing output files":
            short += f" ({earlier.explain(job)})"
        elif head == "Updated input files":
            short += ": " + ", ".join(relative(p, results) for p in detail.split(", ")[:3])
        elif head == "Params have changed since last execution" and detail:
            short += f": {detail}"
        out.append(short)
    return out


class EarlierRuns:
    """The config slices of the stage runs already in `results`, by output folder."""

    def __init__(self, sweep: Sweep, results: Path) -> None:
        self.results = results
        self.planned = {name.rpartition("/")[2]: s for name, s in sweep.slices.items()}
        self._read: dict[Path, dict[str, Any] | None] = {}

    def explain(self, job: Job) -> str:
        """Why a missing output's key is new: the config keys and code that differ from the
        nearest earlier run of the stage, or that the stage never ran."""
        wildcards = job.fields.get("wildcards", "").split(", ")
        key = dict(w.split("=", 1) for w in wildcards if "=" in w).get("key", "")
        folder = resolve(job.fields.get("output", "").split(", ")[0]).parent
        planned = self.planned.get(key)
        if planned is None or folder.name != key:
            return "not made yet"
        siblings = [d for d in folder.parent.glob("*") if d.is_dir() and d != folder]
        if not siblings:
            return "the stage never ran here"
        planned = json.loads(json.dumps(planned))  # as config.json holds it
        found = [(d, s) for d in siblings if (s := self._slice(d)) is not None]
        if not found:
            return "new key"
        nearest, changes = min(
            ((d, changed_keys(planned, s)) for d, s in found), key=lambda c: len(c[1])
        )
        code = [k for k in changes if k.rpartition(".")[2] == "code"]
        config = [k for k in changes if k not in code]
        said = []
        if config:
            more = f" (+{len(config) - SHOWN_KEYS} more)" if len(config) > SHOWN_KEYS else ""
            said.append("changed config " + ", ".join(config[:SHOWN_KEYS]) + more)
        if code:
            said.append("changed code " + ", ".join(code))
        return f"new key; vs {relative(nearest, self.results)}: {'; '.join(said) or 'same'}"

    def _slice(self, folder: Path) -> dict[str, Any] | None:
        if folder not in self._read:
            try:
                self._read[folder] = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError):
                self._read[folder] = None
        return self._read[folder]


def changed_keys(new: Any, old: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two slices, leaving out the speed knobs that
    keys ignore (`axflow.layout.UNKEYED`)."""
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return [] if new == old else [prefix.rstrip(".")]
    out = []
    for k in sorted(set(new) | set(old)):
        parent = prefix.rstrip(".").rpartition(".")[2]
        if k in UNKEYED.get(parent, ()):
            continue
        out += changed_keys(new.get(k), old.get(k), f"{prefix}{k}.")
    return out


def resolve(path: str) -> Path:
    """A path as the jobs see it: they run in the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def relative(path: str | Path, results: Path) -> str:
    p = resolve(str(path))
    return str(p.relative_to(results)) if p.is_relative_to(results) else str(p)
