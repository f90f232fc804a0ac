"""Compose the Hydra config, validate it, and derive every stage's config slice and key.

Each stage reads a *slice* of the config that nests the slice of the stage it depends on, so the
slice alone describes everything the output depends on. A stage's key is a short hash of its
slice; output paths contain the key, so a change reruns exactly the stages that read it.
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

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate(resolved)
    return resolved


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


def stage_key(slice_: Any) -> str:
    """Short content hash of a config slice (stable across runs and machines)."""
    blob = json.dumps(slice_, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class MethodPlan:
    name: str
    kind: str
    detects: bool
    detect_level: str
    steering: str | None  # None: detection only, no steer/judge jobs
    factor_free: bool
    train_key: str
    steer_key: str | None
    judge_key: str | None


@dataclass
class Plan:
    """Every stage slice of one composed config, indexed by stage key."""

    name: str
    cfg: dict[str, Any]
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)  # "stage/key" -> slice
    model_key: str = ""
    data_key: str = ""
    acts_key: str = ""
    methods: list[MethodPlan] = field(default_factory=list)

    def add(self, stage: str, slice_: dict[str, Any]) -> str:
        key = stage_key(slice_)
        self.slices[f"{stage}/{key}"] = slice_
        return key


def make_plan(cfg: dict[str, Any]) -> Plan:
    """Derive the stage slices/keys of a composed config."""
    from axflow.methods import method_class

    plan = Plan(name=cfg["name"], cfg=cfg)
    model = {k: v for k, v in cfg["model"].items() if k != "layer"}
    model_slice = {"model": model}
    plan.model_key = plan.add("model", model_slice)

    dataset = cfg["dataset"]
    data_slice: dict[str, Any] = {
        "dataset": dataset,
        "steering_instructions": cfg["steering"]["instructions_per_concept"],
        "seed": cfg["seed"],
    }
    if dataset["source"] == "synthesize":  # the target model writes the data
        data_slice.update(model=model_slice, generator=cfg["generator"])
    plan.data_key = plan.add("data", data_slice)

    acts_slice = {
        "data": data_slice,
        "model": model_slice,
        "layer": cfg["model"]["layer"],
        "extraction": cfg["extraction"],
    }
    plan.acts_key = plan.add("acts", acts_slice)

    for name, mcfg in cfg["method"].items():
        cls = method_class(mcfg["kind"])
        train_slice = {"acts": acts_slice, "method": mcfg, "method_name": name, "seed": cfg["seed"]}
        train_key = plan.add("train", train_slice)
        steer_key = judge_key = None
        if cls.steering is not None:
            steering = dict(cfg["steering"])
            if cls.factor_free:  # the factor grid cannot change a factor-free method's output
                steering.pop("factors")
            steer_slice = {"train": train_slice, "steering": steering}
            steer_key = plan.add("steer", steer_slice)
            judge_key = plan.add("judge", {"steer": steer_slice, "judge": cfg["judge"]})
        plan.methods.append(
            MethodPlan(
                name=name,
                kind=mcfg["kind"],
                detects=cls.detects,
                detect_level=cls.detect_level,
                steering=cls.steering,
                factor_free=cls.factor_free,
                train_key=train_key,
                steer_key=steer_key,
                judge_key=judge_key,
            )
        )
    return plan
