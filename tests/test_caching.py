"""Partial reruns, counted: what a dry run schedules after each kind of change.

The base run is sharded (6 concepts in 3 shards) and mixes an additive method, a factor-free
one and a detection-only one. It is materialized (every output present and up to date) rather
than executed, so each test is a dry run of a few seconds; test_workflow proves on a real run
that Snakemake's decisions there match.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from axflow import codeversion
from axflow.config import compose
from axflow.layout import REPO_ROOT
from axflow.plan import make_plan
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


def test_execution_only_keys_rerun_nothing(base):
    knobs = ["steering.batch_size=5", "extraction.batch_tokens=1024", "judge.batch_size=3"]
    assert planned_jobs([*base, *knobs]) == {}


@contextmanager
def edited(path: Path, *replacements: tuple[str, str], append: str = "") -> Iterator[None]:
    """`path` with each `old` replaced by `new` (each must occur once) and `append` appended,
    restored byte for byte."""
    original = path.read_bytes()
    text = original.decode()
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text += append
    try:
        path.write_bytes(text.encode())
        yield
    finally:
        path.write_bytes(original)
        assert path.read_bytes() == original


DIFFMEAN = REPO_ROOT / "src/axflow/methods/diffmean.py"


def test_docstring_and_comment_edits_rerun_nothing(base):
    with edited(
        DIFFMEAN,
        ('"""DiffMean has no hyper-parameters."""', '"""DiffMean: no hyper-parameters at all."""'),
        ("        positive = data.label == 1\n", "        positive = data.label == 1  # tokens\n"),
        ("(AxBench's batch size", "(AxBench's batch size and\nits"),  # module docstring
    ):
        assert planned_jobs(base) == {}


def test_code_edit_reruns_what_the_code_computes(base):
    # A real change to DiffMean's fit: its train, detect, steer and judge jobs in every shard
    # rerun (their keys carry the method module's digest), and the report; nothing upstream and
    # no other method.
    with edited(DIFFMEAN, ("np.linalg.norm(diff)), 1e-12)", "np.linalg.norm(diff)), 1e-11)")):
        jobs = planned_jobs(base)
    assert jobs == {"train": 3, "detect": 3, "steer": 3, "judge": 3, "report": 1, "all": 1}


def test_detect_code_edit_reruns_detect_and_what_reads_it(base):
    # Detection code: every detect job, steer and judge of the additive method (its strength is
    # the max detection activation), the report; no training.
    detect = REPO_ROOT / "src/axflow/protocol/detection.py"  # what the detect stage calls
    with edited(detect, ('"max_act": float(maxes.max())', '"max_act": 1.0 * float(maxes.max())')):
        jobs = planned_jobs(base)
    assert jobs == {"detect": 9, "steer": 3, "judge": 3, "report": 1, "all": 1}


def test_report_code_edit_reruns_only_the_report(base):
    # The report has no key in its path: its code digest is in its params, which Snakemake's
    # default `params` rerun trigger compares with the recorded run.
    report = REPO_ROOT / "src/axflow/stages/report.py"
    with edited(report, append="\nREPORT_EDITED = True\n"):
        assert planned_jobs(base) == {"report": 1, "all": 1}


def _package(root: Path, modules: dict[str, str]) -> None:
    for name, text in modules.items():
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An `axflow` package in tmp_path that code_digest reads instead of the real one."""
    monkeypatch.setattr(codeversion, "PACKAGE_DIR", tmp_path / "axflow")
    codeversion.clear_cache()
    yield tmp_path
    codeversion.clear_cache()


A = '''"""Module docstring."""

import numpy as np


class Scaler:
    """Class docstring."""

    def scale(self, x):
        """Function docstring."""
        from .b import factor  # lazy, relative

        return np.asarray(x) * factor()
'''


def test_code_digest_ignores_docstrings_comments_and_formatting(fake_package):
    _package(
        fake_package,
        {"axflow.__init__": "", "axflow.a": A, "axflow.b": "def factor():\n    return 2\n"},
    )
    before = codeversion.code_digest(["axflow.a"])
    reworded = (
        A.replace("Module docstring.", "Another module docstring, longer.")
        .replace('    """Class docstring."""\n', "")
        .replace("Function docstring.", "What it does.")
        .replace("# lazy, relative", "")
        .replace(
            "return np.asarray(x) * factor()",
            "return (\n            np.asarray(x)\n            * factor()\n        )  # wrapped",
        )
    )
    _package(fake_package, {"axflow.a": "# a comment\n" + reworded})
    codeversion.clear_cache()
    assert codeversion.code_digest(["axflow.a"]) == before


def test_code_digest_changes_with_code_and_follows_lazy_imports(fake_package):
    b = 'import importlib\n\n\ndef factor():\n    return importlib.import_module("axflow.c").K\n'
    modules = {
        "axflow.__init__": "",
        "axflow.a": A,
        "axflow.b": b,
        "axflow.c": "K = 2\n",
        "axflow.d": "K = 3\n",
    }
    _package(fake_package, modules)
    assert codeversion.closure(["axflow.a"]) == ["axflow", "axflow.a", "axflow.b", "axflow.c"]
    digests = {codeversion.code_digest(["axflow.a"])}
    for name, text in [
        ("axflow.a", A.replace("* factor()", "+ factor()")),  # the module itself
        ("axflow.b", b.replace("return", "return 1 +")),  # imported inside a function
        ("axflow.c", "K = 4\n"),  # named by a string (importlib), two imports away
    ]:
        _package(fake_package, {name: text})
        codeversion.clear_cache()
        digests.add(codeversion.code_digest(["axflow.a"]))
    assert len(digests) == 4
    _package(fake_package, {"axflow.d": "K = 5\n"})  # not imported: no change
    codeversion.clear_cache()
    assert codeversion.code_digest(["axflow.a"]) in digests


def test_stage_closures_of_the_real_package():
    judge = codeversion.closure(["axflow.stages.judge"])
    assert {"axflow.judge.embedded", "axflow.judge.openai_judge"} <= set(judge)  # by name
    train = codeversion.closure(["axflow.stages.train", "axflow.methods.diffmean"])
    assert "axflow.methods.probe" not in train and "axflow.stages.detect" not in train
    data = codeversion.closure(["axflow.stages.data"])  # data.shards imports layout.REPO_ROOT
    assert "axflow.data.shards" in data and not codeversion.PLANNING & set(data)
    report = codeversion.closure(["axflow.stages.report"])
    assert "axflow.report" in report and not any(m.startswith("axflow.methods") for m in report)


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


def test_training_negatives_rerun_only_the_methods_that_read_negatives(base):
    jobs = planned_jobs([*base, "training.negatives=genre"])
    # diffmean and bow x 3 shards; prompt reads no negatives, bow does not steer
    assert jobs == {"train": 6, "detect": 6, "steer": 3, "judge": 3, "report": 1, "all": 1}


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
    # The finished layer's jobs are reused; the new layer runs everything below the data, for
    # the one method that reads activations (prompt and BoW are layer-free: reused as well).
    assert "dataset" not in jobs and jobs["extract_activations"] == 3 * 2
    assert jobs["train"] == jobs["detect"] == jobs["steer"] == jobs["judge"] == 3
    assert jobs["report"] == 2 and jobs["sweep_report"] == 1


def test_layer_sweep_computes_layer_free_methods_once(tmp_path):
    fresh = [
        "method=[diffmean,prompt,bow]",
        "model.layer=6,12",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    jobs = planned_jobs(fresh)
    # diffmean once per layer; prompt and BoW once in all (their slices hold no layer).
    assert jobs["train"] == jobs["detect"] == 2 + 1 + 1  # prompt detects too
    assert jobs["steer"] == jobs["judge"] == 2 + 1


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
