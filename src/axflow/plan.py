"""Derive every stage's config slice and key from a composed config, per concept shard and per
sweep cell.

Each stage reads a *slice* of the config that nests the slice of the stage it depends on, so the
slice alone describes everything the output depends on. A slice also carries, as `code`, the digest
of the code that computes the stage (`axflow.codeversion`: its modules' normalised syntax trees,
imports followed), so a code fix reruns what it computes while a comment or docstring reruns
nothing. A stage's key (`axflow.layout.stage_key`) names its output folder, so a change reruns
exactly the stages that read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axflow.checks import check_inputs
from axflow.config import ConfigError, compose
from axflow.layout import stage_key
from axflow.protocol.steering import uses_strength


def _method_modules(cls: type) -> list[str]:
    """The modules defining a method class and its axflow base classes."""
    return sorted({c.__module__ for c in cls.__mro__ if c.__module__.split(".")[0] == "axflow"})


def stage_code(stage: str, method: type | None = None) -> str:
    """Digest of the code that computes `stage` (for a method's stages: of `method` too).

    A stage runs its own module (`axflow.stages.<stage>`) and what it imports; train, detect and
    steer also run the method's module. Steering strength for additive methods is computed from
    the detection output, so their steer code is also the detect code.
    """
    from axflow.codeversion import code_digest
    from axflow.stages import stage_module

    modules = [stage_module(stage)]
    if method is not None:
        modules += _method_modules(method)
        if stage == "steer" and uses_strength(method):
            modules.append(stage_module("detect"))
    return code_digest(modules)


def detect_slice(train_slice: dict[str, Any]) -> dict[str, Any]:
    """The detect stage's slice of a trained method: the train slice and the detection code."""
    from axflow.methods import method_class

    cls = method_class(train_slice["method"]["kind"])
    return {"train": train_slice, "code": stage_code("detect", cls)}


@dataclass
class MethodPlan:
    name: str
    kind: str
    detects: bool
    detect_level: str
    steering: str | None  # None: detection only, no steer/judge jobs
    factor_free: bool
    train_keys: list[str]  # one per concept shard, as are the detect, steer and judge keys
    detect_keys: list[str]  # empty unless the method detects
    steer_keys: list[str]
    judge_keys: list[str]


@dataclass
class ShardPlan:
    index: int
    concept_ids: list[int]
    data_key: str
    acts_key: str


@dataclass
class Plan:
    """Every stage slice of one composed config, indexed by stage key."""

    name: str
    cfg: dict[str, Any]
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)  # "stage/key" -> slice
    model_key: str = ""
    shards: list[ShardPlan] = field(default_factory=list)
    methods: list[MethodPlan] = field(default_factory=list)

    def add(self, stage: str, slice_: dict[str, Any]) -> str:
        key = stage_key(slice_)
        self.slices[f"{stage}/{key}"] = slice_
        return key


def _data_slices(cfg: dict[str, Any], model_slice: dict[str, Any]) -> list[dict[str, Any]]:
    """One data slice per non-empty concept shard: the shard's concept ids and digest stand in
    for the concept list, and the instruction files enter by content."""
    from axflow.data import shards, sources

    dataset = cfg["dataset"]
    try:
        concepts = shards.run_concepts(dataset)
    except (ValueError, OSError) as err:
        raise ConfigError(f"config key dataset ({dataset['name']}): {err}") from err
    files = {
        "steering_instructions": shards.resolve(dataset["steering_instructions"])
        or sources.BUILTIN_STEERING_INSTRUCTIONS
    }
    if dataset["source"] == "synthesize":
        try:
            pool = sources.instruction_files(dataset["instructions"], shards.resolve)
        except ValueError as err:
            raise ConfigError(f"config key dataset.instructions: {err}") from err
        files.update({f"instructions.{name}": path for name, path in pool.items()})
    common: dict[str, Any] = {
        "dataset": {k: v for k, v in dataset.items() if k != "max_concepts"},  # ids say it
        "files": {name: _file_digest(name, path) for name, path in files.items()},
        "steering_instructions": cfg["steering"]["instructions_per_concept"],
        "seed": cfg["seed"],
        "code": stage_code("data"),
    }
    if dataset["source"] == "synthesize":  # the target model writes the data
        common.update(model=model_slice, generator=cfg["generator"])
        if dataset.get("verifier") == "judge":  # the judge verifies the written examples
            common["judge"] = cfg["judge"]
    return [{**common, "shard": shard} for shard in shards.split(concepts, cfg["concept_shards"])]


def _file_digest(name: str, path: Path) -> str:
    from axflow.data import shards

    if not Path(path).is_file():
        raise ConfigError(
            f"config key dataset.{name}: {path} is not a file; fix the path (relative paths are "
            "read from the working directory, then the repository root)."
        )
    return shards.file_digest(path)


def make_plan(cfg: dict[str, Any]) -> Plan:
    """Derive the stage slices/keys of a composed config, per concept shard."""
    from axflow.methods import method_class

    plan = Plan(name=cfg["name"], cfg=cfg)
    model = {k: v for k, v in cfg["model"].items() if k != "layer"}
    model_slice = {"model": model, "code": stage_code("model")}
    plan.model_key = plan.add("model", model_slice)
    judge_code = stage_code("judge")

    acts_slices = []
    for data_slice in _data_slices(cfg, model_slice):
        acts_slice = {
            "data": data_slice,
            "model": model_slice,
            "layer": cfg["model"]["layer"],
            "extraction": cfg["extraction"],
            "code": stage_code("acts"),
        }
        acts_slices.append(acts_slice)
        plan.shards.append(
            ShardPlan(
                index=data_slice["shard"]["shard"],
                concept_ids=data_slice["shard"]["ids"],
                data_key=plan.add("data", data_slice),
                acts_key=plan.add("acts", acts_slice),
            )
        )

    for name, mcfg in cfg["method"].items():
        cls = method_class(mcfg["kind"])
        steering = dict(cfg["steering"])
        if cls.factor_free:  # the factor grid cannot change a factor-free method's output
            steering.pop("factors")
        mplan = MethodPlan(
            name=name,
            kind=mcfg["kind"],
            detects=cls.detects,
            detect_level=cls.detect_level,
            steering=cls.steering,
            factor_free=cls.factor_free,
            train_keys=[],
            detect_keys=[],
            steer_keys=[],
            judge_keys=[],
        )
        for acts_slice in acts_slices:
            # A method that reads no activations trains on the examples alone: no layer in its
            # slice, so a layer sweep computes it once.
            source = (
                {"acts": acts_slice}
                if cls.reads_activations
                else {"examples": {k: acts_slice[k] for k in ("data", "model")}}
            )
            train_slice = {
                **source,
                "method": mcfg,
                "method_name": name,
                "seed": cfg["seed"],
                "code": stage_code("train", cls),
            }
            if cls.trains_on_negatives:  # which negatives: only what reads them reruns
                train_slice["training"] = cfg["training"]
            mplan.train_keys.append(plan.add("train", train_slice))
            if cls.detects:
                mplan.detect_keys.append(plan.add("detect", detect_slice(train_slice)))
            if cls.steering is not None:
                steer_slice = {
                    "train": train_slice,
                    "steering": steering,
                    "code": stage_code("steer", cls),
                }
                mplan.steer_keys.append(plan.add("steer", steer_slice))
                judge_slice = {"steer": steer_slice, "judge": cfg["judge"], "code": judge_code}
                mplan.judge_keys.append(plan.add("judge", judge_slice))
        plan.methods.append(mplan)
    return plan


@dataclass
class Cell:
    """One point of a sweep: its overrides, the swept values, and where its report goes."""

    overrides: list[str]
    swept: dict[str, str]  # swept key -> this cell's value (the sweep report's columns)
    path: str  # relative to results_dir: <name> alone, or <name>/cells/<slug> in a sweep
    plan: Plan


@dataclass
class Sweep:
    """Every cell of a Hydra sweep; their stage slices are shared where equal (same keys)."""

    name: str
    cells: list[Cell]
    slices: dict[str, dict[str, Any]]

    @property
    def is_grid(self) -> bool:
        return bool(self.cells[0].swept)


def _slug(swept: dict[str, str]) -> str:
    import re

    text = ",".join(f"{k}={v}" for k, v in swept.items())
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", text).strip("-")
    return slug if len(slug) <= 80 else f"{slug[:66]}-{stage_key(text)}"


def expand_sweep(overrides: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """Hydra's sweep grammar (`model.layer=6,12 method=diffmean,probe`, `range()`, `choice()`) as
    the cartesian product Hydra's BasicSweeper would launch: each cell's overrides and swept values.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    swept_keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    (cells,) = BasicSweeper.split_arguments(parsed, None)
    out = []
    for cell in cells:
        values = dict(item.split("=", 1) for item in cell)
        out.append((cell, {k.lstrip("+~"): values[k] for k in swept_keys}))
    return out


def make_sweep(overrides: list[str] | None = None) -> Sweep:
    """Compose and plan every cell of `overrides` (a plain override list is a one-cell sweep)."""
    cells: list[Cell] = []
    slices: dict[str, dict[str, Any]] = {}
    for cell_overrides, swept in expand_sweep(list(overrides or [])):
        cfg = compose(cell_overrides)
        check_inputs(cfg)
        plan = make_plan(cfg)
        first = cells[0].plan.cfg if cells else plan.cfg
        for key in ("name", "results_dir", "cache_dir"):
            if plan.cfg[key] != first[key]:
                raise ConfigError(f"config key {key}: cannot be swept (one sweep, one {key})")
        path = plan.name if not swept else f"{plan.name}/cells/{_slug(swept)}"
        cells.append(Cell(overrides=cell_overrides, swept=swept, path=path, plan=plan))
        slices.update(plan.slices)
    return Sweep(name=cells[0].plan.name, cells=cells, slices=slices)
