"""Entry point of every Snakemake job:
`python -m axflow.stages '<json spec>' --threads N --input ... --output ...`.

The spec (built in rules/common.smk) holds the stage name, its resolved config slice, and the
names of the input and output paths given on the command line. One module per stage computes it
(`STAGES`, imported only when run, so a job loads only its own stage's code); each writes its
outputs atomically and, where it owns a folder, the resolved slice as `config.json`, so every
artefact is self-describing.

The modules of a stage are also what its key's code digest covers (`axflow.config`): this
package's `__init__` runs in every job, so it holds only the entry point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from axflow.registry import Registry

log = logging.getLogger("axflow")

# Stage name -> (module in this package, function): the lazy dispatch table. Module names stay
# relative: a full dotted name in a string here would count as an import of every stage in every
# stage's code digest (`axflow.codeversion`).
STAGES: dict[str, tuple[str, str]] = {
    "model": ("model", "prepare_model_stage"),
    "data": ("data", "dataset_stage"),
    "acts": ("acts", "activations_stage"),
    "train": ("train", "train_stage"),
    "detect": ("detect", "detect_stage"),
    "steer": ("steer", "steer_stage"),
    "judge": ("judge", "judge_stage"),
    "report": ("report", "report_stage"),
    "sweep_report": ("report", "sweep_report_stage"),
}


_REGISTRY: Registry[Callable[[dict[str, Any]], None]] = Registry(
    "stage",
    lazy={name: f"{__name__}.{module}:{function}" for name, (module, function) in STAGES.items()},
    fix="A job spec's `stage` is written by rules/common.smk.",
)


def stage_module(name: str) -> str:
    """Full name of the module that computes stage `name` (e.g. `axflow.stages.train`)."""
    return _REGISTRY.module_of(name)


def stage_function(name: str) -> Callable[[dict[str, Any]], None]:
    """The function that runs stage `name` on a job spec (its module imported now)."""
    return _REGISTRY.get(name)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m axflow.stages")
    parser.add_argument("spec", help="JSON: stage, slice, extra, input/output names, cache_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input", nargs="*", default=[])
    parser.add_argument("--output", nargs="*", default=[])
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    spec["input"] = dict(zip(spec.pop("input_names"), args.input, strict=True))
    spec["output"] = dict(zip(spec.pop("output_names"), args.output, strict=True))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from axflow.store import InputError

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log.info("stage %s", spec["stage"])
    t0 = time.time()
    try:
        stage_function(spec["stage"])(spec)
    except InputError as err:  # it names the file and the fix: the message is the report
        log.error("%s", err)
        sys.exit(1)
    log.info("stage %s done in %.1fs", spec["stage"], time.time() - t0)
