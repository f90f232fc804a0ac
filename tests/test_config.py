"""Config composition, validation errors that name the key, and stage keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from axflow.config import ConfigError, compose, make_plan, overrides_from_snakemake, stage_key
from axflow.lm.models import ModelNotFound, resolve_model_dir


def test_default_config_composes_and_plans():
    plan = make_plan(compose())
    names = [m.name for m in plan.methods]
    assert {"diffmean", "pca", "lat", "probe", "prompt", "bow"} <= set(names)
    prompt = next(m for m in plan.methods if m.name == "prompt")
    assert prompt.factor_free and prompt.detects and prompt.detect_level == "sequence"
    bow = next(m for m in plan.methods if m.name == "bow")
    assert bow.steering is None and bow.steer_key is None  # detection only: no steer/judge jobs


def test_full_cpu_experiment_plans_every_shipped_method():
    shipped = {
        p.stem for p in (Path(__file__).resolve().parents[1] / "config/method").glob("*.yaml")
    }
    plan = make_plan(compose(["experiment=full_cpu"]))
    assert {m.name for m in plan.methods} == shipped
    kinds = {m.name: (m.steering, m.factor_free) for m in plan.methods}
    assert kinds["loreft"] == kinds["lora"] == kinds["sft"] == ("model", True)


def test_snakemake_config_pairs_become_hydra_overrides():
    pairs = {
        "overrides": "model.layer=20 'steering.factors=[0.5,1.0]'",
        "method": ["diffmean", "probe"],
    }
    assert overrides_from_snakemake(pairs) == [
        "model.layer=20",
        "steering.factors=[0.5,1.0]",
        "method=[diffmean,probe]",
    ]
    cfg = compose(overrides_from_snakemake(pairs))
    assert cfg["model"]["layer"] == 20 and set(cfg["method"]) == {"diffmean", "probe"}


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="steering.factors"):
        compose(["steering.factors=[]"])
    with pytest.raises(ConfigError, match="extraction.positions"):
        compose(["extraction.positions=everywhere"])


def test_unknown_key_is_rejected_by_hydra():
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose(["model.not_a_key=1"])


def test_unknown_method_key_names_method_and_key():
    with pytest.raises(ConfigError, match="method.probe.*lr_typo"):
        compose(["+method.probe.lr_typo=0.1"])


def test_stage_key_depends_on_content_only():
    assert stage_key({"a": 1, "b": [1, 2]}) == stage_key({"b": [1, 2], "a": 1})
    assert stage_key({"a": 1}) != stage_key({"a": 2})


def test_method_change_changes_only_that_method_keys():
    base = {m.name: m for m in make_plan(compose()).methods}
    changed = {m.name: m for m in make_plan(compose(["method.probe.epochs=3"])).methods}
    assert changed["probe"].train_key != base["probe"].train_key
    for name in base.keys() - {"probe"}:
        assert changed[name].train_key == base[name].train_key


def test_missing_real_model_names_the_config_key(tmp_path):
    cfg = compose(["model=gemma2_2b_it"])["model"]
    with pytest.raises(ModelNotFound, match="model.path"):
        resolve_model_dir(cfg)
    with pytest.raises(ModelNotFound, match="model.path"):
        resolve_model_dir({**cfg, "path": str(tmp_path)})
    with pytest.raises(ModelNotFound, match="model.hf_id"):
        resolve_model_dir({**cfg, "source": "hf_cache", "cache_dir": str(tmp_path)})
