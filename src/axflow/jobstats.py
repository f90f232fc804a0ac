"""Read Snakemake's "Job stats" table: the jobs a run or dry run schedules, per rule."""

from __future__ import annotations


def job_counts(output: str) -> dict[str, int]:
    """Per-rule job counts from snakemake's output (empty when nothing is to be done)."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        rule, count = line.split()
        if rule == "total":
            break
        counts[rule] = int(count)
    return counts
