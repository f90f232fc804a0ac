"""Compose the Hydra config (overrides, `protocol=` presets) and validate it against the schema.

What the composed config plans (stage slices, keys, sweep cells) is `axflow.plan`.
"""

from __future__ import annotations

from typing import Any

from axflow.layout import REPO_ROOT

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
    from axflow.secrets import check_no_secrets

    for group in ("generator", "judge"):
        gcfg = cfg[group]
        if gcfg["name"] == "vllm_server" and gcfg.get("base_url") and not gcfg.get("model"):
            raise ConfigError(
                f"config key {group}.model: not set, but {group}.base_url is, so it must name "
                "the model that server serves (its --served-model-name)"
            )
        try:
            check_no_secrets(gcfg, group)  # keys come from the environment only
        except ValueError as err:
            raise ConfigError(str(err)) from None
