"""Config composition, validation errors that name the key, and stage keys."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hydra.errors import ConfigCompositionException

from axflow.config import ConfigError, compose, overrides_from_snakemake
from axflow.layout import stage_key
from axflow.lm.models import ModelNotFound, resolve_model_dir
from axflow.plan import make_plan, make_sweep


def test_default_config_composes_and_plans():
    plan = make_plan(compose())
    names = [m.name for m in plan.methods]
    assert {"diffmean", "pca", "lat", "probe", "prompt", "bow"} <= set(names)
    prompt = next(m for m in plan.methods if m.name == "prompt")
    assert prompt.factor_free and prompt.detects and prompt.detect_level == "sequence"
    bow = next(m for m in plan.methods if m.name == "bow")
    assert bow.steering is None and bow.steer_keys == []  # detection only: no steer/judge jobs


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
    assert changed["probe"].train_keys != base["probe"].train_keys
    for name in base.keys() - {"probe"}:
        assert changed[name].train_keys == base[name].train_keys


def test_missing_real_model_names_the_config_key(tmp_path):
    cfg = compose(["model=gemma2_2b_it"])["model"]
    with pytest.raises(ModelNotFound, match="model.path"):
        resolve_model_dir(cfg)
    with pytest.raises(ModelNotFound, match="model.path"):
        resolve_model_dir({**cfg, "path": str(tmp_path)})
    with pytest.raises(ModelNotFound, match="model.hf_id"):
        resolve_model_dir({**cfg, "source": "hf_cache", "cache_dir": str(tmp_path)})


def test_sweep_expands_the_hydra_grid():
    sweep = make_sweep(
        ["model.layer=6,12", "method=diffmean,probe", "judge.perplexity_thresholds=[30.0,90.0]"]
    )
    assert sweep.is_grid and len(sweep.cells) == 4
    assert [c.swept for c in sweep.cells][:2] == [
        {"model.layer": "6", "method": "diffmean"},
        {"model.layer": "6", "method": "probe"},
    ]
    assert {c.plan.cfg["model"]["layer"] for c in sweep.cells} == {6, 12}
    assert all(c.plan.cfg["judge"]["perplexity_thresholds"] == [30.0, 90.0] for c in sweep.cells)
    assert len({c.path for c in sweep.cells}) == 4
    # One data shard for all cells, one activation slice per layer.
    assert len({k for k in sweep.slices if k.startswith("data/")}) == 1
    assert len({k for k in sweep.slices if k.startswith("acts/")}) == 2
    single = make_sweep(["model.layer=6"])
    assert not single.is_grid and single.cells[0].path == "default"


def test_sweep_errors_name_the_key():
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        make_sweep(["model.not_a_key=1,2"])
    with pytest.raises(ConfigError, match="config key name"):
        make_sweep(["name=a,b"])


def test_sweep_report_puts_swept_keys_in_columns(tmp_path):
    from axflow.report import write_sweep_report

    cells, inputs = [], {}
    for i, layer in enumerate(("6", "12")):
        board = tmp_path / f"board{i}.csv"
        pl.DataFrame(
            {
                "method": ["diffmean", "probe"],
                "detection_auroc": [0.6 + i / 10, 0.7],
                "imbalanced_f1": [0.5, 0.4],
                "steering_score": [0.2, None],
                "winrate": [None, None],
            }
        ).write_csv(board)
        inputs[f"leaderboard__{i}"] = str(board)
        cells.append({"path": f"sw/cells/model.layer={layer}", "swept": {"model.layer": layer}})
    out = {"leaderboard": str(tmp_path / "all.csv"), "report": str(tmp_path / "report.md")}
    write_sweep_report(cells, inputs, out)
    merged = pl.read_csv(out["leaderboard"], schema_overrides={"model.layer": pl.String})
    assert merged.columns[:2] == ["model.layer", "method"] and merged.height == 4
    row = merged.filter((pl.col("model.layer") == "12") & (pl.col("method") == "diffmean"))
    assert row["detection_auroc"].item() == pytest.approx(0.7)
    assert "model.layer" in Path(out["report"]).read_text()


def test_cli_reports_hydra_errors_without_a_traceback(capsys):
    from axflow.cli import main

    assert main(["config", "method=nope,diffmean"]) == 2
    assert "Could not find 'method/nope'" in capsys.readouterr().err
