"""The Snakemake command line of this repository's workflow with Hydra overrides, as `axflow run`
and `axflow status` start it: one place, so what status plans is what run would run."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from axflow.layout import REPO_ROOT


def snakemake_command(overrides: list[str], cores: str | int = "all") -> list[str]:
    """`python -m snakemake` on the repository's Snakefile; the overrides travel in one
    `--config overrides=...` entry (rules/common.smk reads them back)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--directory", str(REPO_ROOT)]
    if overrides:
        # Padded: Snakemake strips quote characters off both ends of a --config value, and
        # shlex.join quotes an override with brackets ('method=[diffmean,probe]').
        cmd += ["--config", f"overrides= {shlex.join(overrides)} "]
    return cmd


def snakemake_env() -> dict[str, str]:
    """The environment for it: this interpreter's scripts first on PATH, where the jobs'
    `python -m axflow.stages` must resolve."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
