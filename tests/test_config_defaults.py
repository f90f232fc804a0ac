"""Config defaults are written once, in `config/<group>/<option>.yaml`: the config dataclasses of
methods, judges and generators declare types and checks but no default, and every field they
declare is set by the YAML of each option that uses them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from axflow.data.generators import OpenAIGeneratorConfig, TargetGenerator, overgenerate
from axflow.defaults import build_config, option_defaults
from axflow.judge import config_from_dict
from axflow.judge.embedded import EmbeddedJudgeConfig
from axflow.judge.openai_judge import OpenAIJudgeConfig
from axflow.methods import COMMON_KEYS, build_method, method_class

CONFIG = Path(__file__).resolve().parents[1] / "config"
METHOD_KINDS = sorted(p.stem for p in (CONFIG / "method").glob("*.yaml"))
# Backend options and the dataclass each one's keys build; vllm_server runs the openai client.
BACKENDS = {
    ("judge", "embedded"): EmbeddedJudgeConfig,
    ("judge", "openai"): OpenAIJudgeConfig,
    ("judge", "vllm_server"): OpenAIJudgeConfig,
    ("generator", "openai"): OpenAIGeneratorConfig,
    ("generator", "vllm_server"): OpenAIGeneratorConfig,
    ("generator", "target"): None,  # no dataclass: TargetGenerator reads its keys itself
}
# Keys a group's YAML may set besides the dataclass fields: the workflow reads them itself.
WORKFLOW_KEYS = {
    "method": COMMON_KEYS,
    "judge": {"name", "serve"},
    "generator": {"name", "serve", "batch_size", "engine"},
}


def _options() -> list[tuple[str, str, type | None]]:
    methods = [("method", k, method_class(k).Config) for k in METHOD_KINDS]
    return methods + [(g, o, cls) for (g, o), cls in BACKENDS.items()]


OPTIONS = _options()
IDS = [f"{g}/{o}" for g, o, _ in OPTIONS]


def test_every_backend_option_is_listed():
    for group in ("judge", "generator"):
        shipped = {p.stem for p in (CONFIG / group).glob("*.yaml")}
        assert shipped == {o for g, o in BACKENDS if g == group}


@pytest.mark.parametrize(("group", "option", "cls"), OPTIONS, ids=IDS)
def test_no_config_dataclass_writes_a_default(group, option, cls):
    if cls is None:
        return
    with_default = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert not with_default, (
        f"{cls.__qualname__} writes a default for {with_default}; the default belongs in "
        f"config/{group}/{option}.yaml only"
    )


@pytest.mark.parametrize(("group", "option", "cls"), OPTIONS, ids=IDS)
def test_yaml_sets_exactly_the_dataclass_fields(group, option, cls):
    keys = set(option_defaults(group, option)) - WORKFLOW_KEYS[group]
    if cls is None:  # generator=target: the in-process writer's own keys
        assert keys == {"temperature", "max_num_seqs", "max_model_len"}
        return
    fields = {f.name for f in dataclasses.fields(cls)}
    assert keys == fields, (
        f"config/{group}/{option}.yaml: missing {sorted(fields - keys)}, "
        f"not a field of {cls.__qualname__}: {sorted(keys - fields)}"
    )


@pytest.mark.parametrize(("group", "option", "cls"), OPTIONS, ids=IDS)
def test_defaults_read_as_hydra_reads_them(group, option, cls):
    path = CONFIG / group / f"{option}.yaml"
    assert option_defaults(group, option) == OmegaConf.to_container(OmegaConf.load(path))
    assert "defaults" not in option_defaults(group, option)  # the file is the whole option


@pytest.mark.parametrize("kind", METHOD_KINDS)
def test_a_method_built_from_its_kind_alone_takes_the_yaml_values(kind):
    full = yaml.safe_load((CONFIG / "method" / f"{kind}.yaml").read_text())
    assert build_method({"kind": kind}).cfg == build_method(full).cfg
    fields = {f.name for f in dataclasses.fields(method_class(kind).Config)}
    assert dataclasses.asdict(build_method({"kind": kind}).cfg) == {
        k: v for k, v in full.items() if k in fields
    }


def test_the_drifted_defaults_resolve_to_the_yaml_the_pipeline_used():
    # ProbeConfig said weight_decay=1e-3, EmbeddedJudgeConfig batch_size=8 and the openai
    # generator base_url=localhost; the composed config (so every run) used the YAML's values.
    assert build_method({"kind": "probe"}).cfg.weight_decay == 0.0
    judge = config_from_dict(EmbeddedJudgeConfig, {"name": "embedded"}, "embedded")
    assert judge.batch_size == 16
    gen = build_config(OpenAIGeneratorConfig, {}, group="generator", option="openai")
    assert gen.base_url == "https://api.openai.com/v1"
    assert config_from_dict(OpenAIJudgeConfig, {}, "vllm_server").timeout_s == 300.0


def test_generator_helpers_take_their_defaults_from_the_yaml():
    target = TargetGenerator(None, "m", {"batch_size": 4}, cache=None)  # type: ignore[arg-type]
    assert (target.temperature, target.batch_size) == (1.0, 4)
    assert overgenerate({"name": "openai"}) == 1.5
    assert overgenerate({"name": "openai", "overgenerate": 2.0}) == 2.0
    assert overgenerate({"name": "target", "overgenerate": 2.0}) == 1.0


def test_build_config_names_the_key_and_the_file():
    @dataclasses.dataclass
    class Demo:
        lr: float

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\].*config/method/probe.yaml"):
        build_config(Demo, {"lrr": 1.0}, group="method", option="probe")
    assert build_config(Demo, {}, group="method", option="probe").lr == 5e-3
    with pytest.raises(ValueError, match=r"no value for \['lr'\].*config/method/diffmean.yaml"):
        build_config(Demo, {}, group="method", option="diffmean")
    with pytest.raises(ValueError, match=r"config/method/nothing.yaml"):
        build_config(Demo, {}, group="method", option="nothing")


@pytest.mark.parametrize("overrides", [[], ["experiment=full_cpu", "judge=openai"]])
def test_composed_configs_carry_every_value_so_keys_cover_them(overrides):
    """The stage keys hash the composed slices: with every field in them, no value a job uses
    comes from a file the key does not see."""
    from axflow.config import compose

    cfg = compose(overrides)
    for name, mcfg in cfg["method"].items():
        fields = {f.name for f in dataclasses.fields(method_class(mcfg["kind"]).Config)}
        assert fields <= set(mcfg), f"method.{name} lacks {sorted(fields - set(mcfg))}"
    for (group, option), cls in BACKENDS.items():
        if cfg[group]["name"] == option and cls is not None:
            fields = {f.name for f in dataclasses.fields(cls)}
            assert fields <= set(cfg[group]), f"{group} lacks {sorted(fields - set(cfg[group]))}"
