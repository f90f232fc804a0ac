"""Partial reruns, counted: what a dry run schedules after each kind of change.

The base run is sharded (6 concepts in 3 shards) and mixes an additive method, a factor-free
one and a detection-only one. It is materialized (every output present and up to date) rather
than executed, so each test is a dry run of a few seconds; test_workflow proves on a real run
that Snakemake's decisions there match.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from axflow.config import REPO_ROOT, compose, make_plan
from dag import materialize, planned_jobs

BASE = [
    "concept_shards=3",
    "dataset.max_concepts=6",
    "method=[diffmean,prompt,bow]",
    "name=cached",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    results = tmp_path_factory.mktemp("caching") / "results"
    overrides = [*BASE, f"results_dir={results}", f"cache_dir={results}/cache"]
    materialize(overrides)
    return overrides


def test_unchanged_config_reruns_nothing(base):
    assert planned_jobs(base) == {}


def test_execution_only_keys_and_code_edits_rerun_nothing(base):
    knobs = ["steering.batch_size=5", "extraction.batch_tokens=1024", "judge.batch_size=3"]
    assert planned_jobs([*base, *knobs]) == {}
    module = REPO_ROOT / "src/axflow/methods/diffmean.py"  # as if its docstring were edited
    stat = module.stat()
    os.utime(module, (time.time(), time.time()))
    try:
        assert planned_jobs(base) == {}
    finally:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_new_concept_computes_only_its_shard(base):
    grown = [*base, "dataset.max_concepts=7"]
    before = {s.index: s.data_key for s in make_plan(compose(base)).shards}
    after = {s.index: s.data_key for s in make_plan(compose(grown)).shards}
    assert sum(before.get(i) != key for i, key in after.items()) == 1
    jobs = planned_jobs(grown)
    # One shard: its data, its two activation splits, each method's train/detect there, and
    # steer/judge for the two steering methods; then the report.
    assert jobs == {
        "dataset": 1,
        "extract_activations": 2,
        "train": 3,
        "detect": 3,
        "steer": 2,
        "judge": 2,
        "report": 1,
        "all": 1,
    }


def test_new_method_reruns_nothing_upstream_of_training(base):
    jobs = planned_jobs([*base, "method=[diffmean,prompt,bow,pca]"])
    assert jobs == {"train": 3, "detect": 3, "steer": 3, "judge": 3, "report": 1, "all": 1}


def test_judge_change_reruns_only_judge_and_report(base):
    jobs = planned_jobs([*base, "judge.perplexity_thresholds=[30.0,90.0]"])
    assert jobs == {"judge": 6, "report": 1, "all": 1}  # 2 steering methods x 3 shards


def test_factor_grid_change_reruns_only_factor_dependent_steering(base):
    jobs = planned_jobs([*base, "steering.factors=[0.5,2.0]"])
    assert jobs == {"steer": 3, "judge": 3, "report": 1, "all": 1}  # diffmean only


def test_sweep_shares_upstream_work(tmp_path):
    fresh = [
        "method=[diffmean,pca,probe]",
        "model.layer=6,12",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    jobs = planned_jobs(fresh)
    # 2 layers x 3 methods: the data once, activations once per layer (x 2 splits), not 6 times.
    assert jobs["dataset"] == 1 and jobs["extract_activations"] == 2 * 2
    assert jobs["train"] == 6 and jobs["report"] == 2 and jobs["sweep_report"] == 1


def test_sweep_over_a_finished_cell_runs_only_the_new_cells(base):
    layer = compose(base)["model"]["layer"]
    jobs = planned_jobs([*base, f"model.layer={layer},{layer + 1}"])
    # The finished layer's jobs are reused; the new layer runs everything below the data.
    assert "dataset" not in jobs and jobs["extract_activations"] == 3 * 2
    assert jobs["train"] == 9 and jobs["report"] == 2 and jobs["sweep_report"] == 1


def test_profiles_dry_run(base):
    for profile in ("gpu", "slurm", "kubernetes"):  # every other test uses the default
        jobs = planned_jobs(
            [*base, "judge.perplexity_thresholds=[30.0,90.0]"],
            "--profile",
            str(Path(REPO_ROOT) / "workflow/profiles" / profile),
        )
        assert jobs["judge"] == 6, profile


def test_input_files_enter_keys_by_content(tmp_path):
    from axflow.data.sources import BUILTIN_CONCEPTS

    text = BUILTIN_CONCEPTS.read_text()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(text)
    b.write_text(text)

    def shards(path):
        plan = make_plan(compose([*BASE, f"dataset.concepts={path}"]))
        return {s.index: (s.data_key, s.concept_ids) for s in plan.shards}

    assert shards(a) == shards(b)  # the same list under another name reruns nothing
    first, *rest = text.splitlines()
    b.write_text("\n".join([first.replace('"concept": "', '"concept": "edited '), *rest]) + "\n")
    before, after = shards(a), shards(b)
    changed = {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}
    holding_0 = {i for side in (before, after) for i, (_, ids) in side.items() if 0 in ids}
    assert changed and changed == holding_0  # only the shards the edited concept left or joined
