"""`axflow` command: run the workflow with Hydra overrides, or check the environment.

axflow run model.layer=20 'method=[diffmean,probe]' --cores 2
axflow run model.layer=6,12 'method=[diffmean,probe]'   # a Hydra sweep: one DAG, one leaderboard
axflow config judge=openai          # print the composed, validated config (one per sweep cell)
axflow status model.layer=20        # per rule: jobs done, jobs to run and why (axflow.status)
axflow doctor judge=openai          # is this machine ready for that config? (axflow.doctor)

After a crash (kill -9, power loss) `axflow run` resumes by itself: with no other run alive in
the directory it clears the stale lock and reruns the interrupted jobs; while one is alive and
holds the files it needs, it refuses and names it (axflow.resume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.errors import HydraException

from axflow.checks import planning_error
from axflow.config import ConfigError
from axflow.layout import REPO_ROOT
from axflow.plan import make_sweep
from axflow.resume import LOCKED_MESSAGE, claim_workdir, live_snakemake, refusal
from axflow.workflow_command import snakemake_command, snakemake_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the benchmark DAG (snakemake) with Hydra overrides")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.layer=20")
    run.add_argument("--cores", default="all")
    run.add_argument("--dry-run", "-n", action="store_true")
    show = sub.add_parser("config", help="print the composed config for these overrides")
    show.add_argument("overrides", nargs="*")
    status = sub.add_parser("status", help="per rule: jobs done, jobs to run and why (a dry run)")
    status.add_argument("overrides", nargs="*")
    doctor = sub.add_parser("doctor", help="check the model, vLLM, endpoints, disk for a config")
    doctor.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.cmd == "doctor":  # reports a bad config as one of its checks
        from axflow.doctor import run_doctor

        return run_doctor(args.overrides)
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
    if args.cmd == "status":
        from axflow.status import show_status

        return show_status(sweep, args.overrides)
    cmd = snakemake_command(args.overrides, args.cores)
    if args.dry_run:
        return subprocess.call([*cmd, "--dry-run"], cwd=REPO_ROOT, env=snakemake_env())
    results_dir = REPO_ROOT / sweep.cells[0].plan.cfg["results_dir"]
    return run_resuming(cmd, REPO_ROOT, results_dir)


def run_resuming(cmd: list[str], workdir: Path, results_dir: Path) -> int:
    """Run snakemake so that it resumes after a crash (`axflow.resume`), or refuse clearly."""
    env = snakemake_env()

    def unlock() -> None:
        done = subprocess.run([*cmd, "--unlock"], cwd=workdir, env=env, capture_output=True)
        if done.returncode:
            sys.exit(f"axflow: `snakemake --unlock` failed in {workdir}:\n{done.stderr.decode()}")

    claim = claim_workdir(workdir, results_dir, unlock)
    if claim.cleared_locks:
        print(
            f"axflow: no run is alive in {workdir}: cleared the lock a stopped run left "
            "(snakemake --unlock); its unfinished jobs rerun",
            file=sys.stderr,
        )
    if claim.removed_temp:
        print(
            f"axflow: removed {len(claim.removed_temp)} temporary files of interrupted writes "
            f"under {results_dir}",
            file=sys.stderr,
        )
    # stderr passes through here to catch Snakemake's lock refusal; the claim's fd goes with it.
    proc = subprocess.Popen(
        [*cmd, "--rerun-incomplete"],
        cwd=workdir,
        env=env,
        stderr=subprocess.PIPE,
        pass_fds=(claim.fd,),
    )
    os.close(claim.fd)
    refused = False
    try:
        for line in proc.stderr:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            refused |= LOCKED_MESSAGE.encode() in line
    except KeyboardInterrupt:  # Ctrl-C reached snakemake too: let it stop its jobs
        pass
    code = proc.wait()
    if code != 0 and refused:
        print(refusal(workdir, claim.live or live_snakemake(workdir)), file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
