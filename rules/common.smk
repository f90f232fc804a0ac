# Config composition, validation, stage keys and path helpers. Rules stay thin: they call
# `python -m axflow.stages <spec> --input ... --output ...` (STAGE_CMD), the spec carrying the
# stage's resolved config slice.
import json
import re
import sys

from axflow.checks import PLANNING_ERRORS, planning_error
from axflow.codeversion import code_digest
from axflow.config import overrides_from_snakemake
from axflow.layout import (
    Layout,
    judge_validity_record,
    report_input,
    report_templates,
    stage_key,
    train_source,
)
from axflow.plan import detect_slice, make_sweep
from axflow.data.shards import dataset_scope
from axflow.methods import method_class
from axflow.protocol.steering import uses_strength
from axflow.stages import stage_module

# A plain override list is a one-cell sweep; a Hydra sweep (`model.layer=6,12`) has one cell per
# point, and equal stage slices across cells are one job (content-addressed keys).
try:
    SWEEP = make_sweep(overrides_from_snakemake(config))
except PLANNING_ERRORS as err:  # the message names key, file and fix; no traceback
    sys.exit(planning_error(err))
CELLS = {cell.path: cell for cell in SWEEP.cells}
CFG = SWEEP.cells[0].plan.cfg  # results_dir and cache_dir cannot be swept
RES = CFG["results_dir"]
LAYOUT = Layout(RES)
# Per-method jobs (train, detect, steer, judge) take half the cores, so two run side by side:
# their start-up (imports, model loads, engine init) is single-threaded and a small model's
# batches use a second thread poorly. The one-per-run jobs (dataset, extraction) keep every core;
# a job asking every core waits until both slots are free (a train job that did so started only
# when the other chains were nearly done).
METHOD_JOB_THREADS = max(1, workflow.cores // 2)
# When a slot frees, start what unlocks the most work first: extraction (every activation method
# waits on it), a method's train job (its chain waits on it), then its steer job (the longest of
# each chain, and the judge waits on it), then the judge; detection jobs are short and fill the
# gaps. Snakemake maximises the sum of the priorities it starts, and extraction asks for every
# core, so it outranks any two half-core jobs: otherwise it waits until both slots are free.
PRIORITY = {"extract_activations": 9, "train": 4, "steer": 3, "judge": 2, "detect": 1}
STAGE_CMD = (
    "python -m axflow.stages {params.spec:q} --threads {threads}"
    " --input {input:q} --output {output:q} > {log:q} 2>&1"
)


wildcard_constraints:
    key="[0-9a-f]{12}",
    method="[A-Za-z0-9_]+",
    split="train|detect_eval",
    cell="|".join(re.escape(path) for path in CELLS),


def slice_of(stage, key):
    return SWEEP.slices[f"{stage}/{key}"]


def upstream_key(stage, key, parent):
    """Key of the `parent` slice nested in a `stage` slice (equal slices give equal keys)."""
    return stage_key(slice_of(stage, key)[parent])


# Artefact paths: `axflow.layout`, shared with the stages and the report.
model_path = LAYOUT.model
data_path = LAYOUT.data
acts_path = LAYOUT.acts
train_path = LAYOUT.train
detect_path = LAYOUT.detect
steer_path = LAYOUT.steer
judge_path = LAYOUT.judge
bench_path = LAYOUT.benchmark


def report_outputs():
    """The sweep's merged report (its own folder, so a plain run's report is never taken for
    it), or the single experiment's."""
    folder = f"{RES}/{SWEEP.name}/sweep" if SWEEP.is_grid else f"{RES}/{SWEEP.name}"
    return [f"{folder}/{name}" for name in ("report.md", "leaderboard.csv")]


def stage_spec(stage, extra=None):
    """A params function giving the JSON job spec of `stage`: its slice, the names of its inputs
    and outputs, and the call cache. Paths and threads travel on the command line (STAGE_CMD)
    instead, so the spec, and with it Snakemake's between-workflow cache hash, does not depend
    on `results_dir` or the machine. A keyed stage's slice carries its code digest (`code`).
    """

    def spec(wildcards, input, output):
        key = wildcards.get("key")
        return json.dumps(
            {
                "stage": stage,
                "slice": slice_of(stage, key) if key else None,
                "extra": extra(wildcards) if callable(extra) else extra,
                "input_names": list(input.keys()),
                "output_names": list(output.keys()),
                "cache_dir": CFG["cache_dir"],
            },
            sort_keys=True,
        )

    return spec


def code_param(stage):
    """The code digest of a stage without a key in its output path (the reports), as a rule
    param: Snakemake's default `params` rerun trigger then reruns the stage when its code
    changes. (The spec cannot carry it: a param computed from input or output names is
    "derived", and Snakemake leaves derived params out of that trigger.)"""
    return code_digest([stage_module(stage)])


# Input functions, one per rule, mapping a stage key to its upstream artefacts.
def data_inputs(wildcards):
    if slice_of("data", wildcards.key)["dataset"]["source"] == "synthesize":
        return {"model": model_path(upstream_key("data", wildcards.key, "model"))}
    return {}


def acts_inputs(wildcards):
    dkey = upstream_key("acts", wildcards.key, "data")
    return {
        "model": model_path(upstream_key("acts", wildcards.key, "model")),
        "examples": data_path(dkey, wildcards.split),
    }


def train_inputs(wildcards):
    train = slice_of("train", wildcards.key)
    source = train_source(train)
    dkey = stage_key(source["data"])
    inputs = {
        "examples": data_path(dkey, "train"),
        "concepts": data_path(dkey, "concepts"),
        "model": model_path(
            stage_key(source["model"])
        ),  # loaded only by methods that use it
    }
    if "acts" in train:
        inputs["acts"] = acts_path(stage_key(train["acts"]), "train")
    return inputs


def detect_inputs(wildcards):
    tkey = upstream_key("detect", wildcards.key, "train")
    train = slice_of("train", tkey)
    source = train_source(train)
    dkey = stage_key(source["data"])
    inputs = {
        "params": train_path(wildcards.method, tkey),
        "examples": data_path(dkey, "detect_eval"),
        "concepts": data_path(dkey, "concepts"),
        "model": model_path(stage_key(source["model"])),
    }
    if "acts" in train:
        inputs["acts"] = acts_path(stage_key(train["acts"]), "detect_eval")
    return inputs


def steer_inputs(wildcards):
    tkey = upstream_key("steer", wildcards.key, "train")
    source = train_source(slice_of("train", tkey))
    dkey = stage_key(source["data"])
    inputs = {
        "model": model_path(stage_key(source["model"])),
        "concepts": data_path(dkey, "concepts"),
        "prompts": data_path(dkey, "steer_prompts"),
        "params": train_path(wildcards.method, tkey),
    }
    train = slice_of("train", tkey)
    method = method_class(train["method"]["kind"])
    if uses_strength(method):
        # Strength = factor x the concept's max detection activation (explicit dependency).
        dkey = stage_key(detect_slice(train))
        inputs["detect_metrics"] = detect_path(wildcards.method, dkey, "metrics")
    return inputs


def judge_inputs(wildcards):
    skey = upstream_key("judge", wildcards.key, "steer")
    source = train_source(slice_of("judge", wildcards.key)["steer"]["train"])
    return {
        "generations": steer_path(wildcards.method, skey),
        "model": model_path(stage_key(source["model"])),
    }


def report_inputs(wildcards):
    """Every shard's artefacts of every method, named by `axflow.layout.report_input`."""
    plan = CELLS[wildcards.cell].plan
    inputs = {
        report_input("data_stats", s.index): LAYOUT.data_stats(s.data_key)
        for s in plan.shards
    }
    for s in plan.shards:  # example rows of the report page
        for split in ("train", "detect_eval"):
            name = report_input("examples", s.index, split)
            inputs[name] = data_path(s.data_key, split)
    for m in plan.methods:
        for s, tkey in enumerate(m.train_keys):
            inputs[report_input("params", s, m.name)] = train_path(m.name, tkey)
        for s, dkey in enumerate(m.detect_keys):
            for what in ("metrics", "pool", "scores"):
                inputs[report_input(what, s, m.name)] = detect_path(m.name, dkey, what)
        for s, jkey in enumerate(m.judge_keys):
            inputs[report_input("ratings", s, m.name)] = judge_path(m.name, jkey)
        for s, skey in enumerate(m.steer_keys):
            inputs[report_input("generations", s, m.name)] = steer_path(m.name, skey)
    for i, (rule, name) in enumerate(sorted(timed_jobs(plan))):
        inputs[report_input("bench", i, rule)] = bench_path(rule, name)
    # Files of the repository, not results: `local` keeps a storage profile from prefixing them.
    for i, path in enumerate(report_templates()):
        inputs[report_input("template", i)] = local(path)
    if judge_validity_record(plan.cfg).exists():
        inputs[report_input("judge_validity", 0)] = local(
            str(judge_validity_record(plan.cfg))
        )
    return inputs


def timed_jobs(plan):
    """(rule, wildcards) of every job upstream of a cell's report that has a benchmark file,
    for the report's time per rule; keys derived as the input functions derive them, so the
    report asks for no job it would not run anyway. Not extract_activations: Snakemake forbids
    a benchmark file where a rule is eligible for between-workflow caching (`cache`)."""
    jobs = set()
    for m in plan.methods:
        for rule, keys in (
            ("train", m.train_keys),
            ("detect", m.detect_keys),
            ("steer", m.steer_keys),
            ("judge", m.judge_keys),
        ):
            jobs.update((rule, f"{m.name}_{key}") for key in keys)
        for tkey in m.train_keys:
            source = train_source(slice_of("train", tkey))
            jobs.add(("prepare_model", stage_key(source["model"])))
            jobs.add(("dataset", stage_key(source["data"])))
    jobs.update(("dataset", s.data_key) for s in plan.shards)
    return jobs


def report_extra(wildcards):
    """What the report needs beyond its inputs: the methods' facts and the resolved config."""
    plan = CELLS[wildcards.cell].plan
    methods = [
        {
            "name": m.name,
            "kind": m.kind,
            "detects": m.detects,
            "detect_level": m.detect_level,
            "steering": m.steering,
            "factor_free": m.factor_free,
        }
        for m in plan.methods
    ]
    return {
        "methods": methods,
        "config": plan.cfg,
        "scope": dataset_scope(plan.cfg["dataset"]),  # "N of M concepts" in the header
    }


def sweep_inputs(wildcards):
    return {
        f"{kind}__{i}": f"{RES}/{cell.path}/{name}"
        for i, cell in enumerate(SWEEP.cells)
        for kind, name in (
            ("leaderboard", "leaderboard.csv"),
            ("config", "config.json"),
        )
    }


def sweep_extra():
    return [{"path": cell.path, "swept": cell.swept} for cell in SWEEP.cells]
