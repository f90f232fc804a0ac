"""`axflow` command: run the workflow with Hydra overrides, or check the environment.

axflow run model.layer=20 'method=[diffmean,probe]' --cores 2
axflow run model.layer=6,12 'method=[diffmean,probe]'   # a Hydra sweep: one DAG, one leaderboard
axflow config judge=openai          # print the composed, validated config (one per sweep cell)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

from hydra.errors import HydraException

from axflow.checks import planning_error
from axflow.config import ConfigError
from axflow.layout import REPO_ROOT
from axflow.plan import make_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the benchmark DAG (snakemake) with Hydra overrides")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.layer=20")
    run.add_argument("--cores", default="all")
    run.add_argument("--dry-run", "-n", action="store_true")
    show = sub.add_parser("config", help="print the composed config for these overrides")
    show.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        sweep = make_sweep(args.overrides)  # fail fast, before snakemake starts
    except (ConfigError, HydraException) as err:  # Hydra's own message: unknown key or group
        print(planning_error(err), file=sys.stderr)
        return 2
    if args.cmd == "config":
        if not sweep.is_grid:
            print(json.dumps(sweep.cells[0].plan.cfg, indent=2))
        else:
            cells = [{"cell": c.path, "swept": c.swept, "config": c.plan.cfg} for c in sweep.cells]
            print(json.dumps(cells, indent=2))
        return 0
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(args.cores),
        "--directory",
        str(REPO_ROOT),
    ]
    if args.dry_run:
        cmd.append("--dry-run")
    if args.overrides:
        cmd += ["--config", "overrides=" + shlex.join(args.overrides)]
    return subprocess.call(cmd, cwd=REPO_ROOT)


if __name__ == "__main__":
    sys.exit(main())
