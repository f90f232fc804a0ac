# Config composition, validation, stage keys and path helpers. Rules stay thin: they call
# `python -m axflow.stage <stage> <spec>` where spec carries the stage's resolved config slice.
import json

from axflow.config import compose, make_plan, overrides_from_snakemake, stage_key

PLAN = make_plan(compose(overrides_from_snakemake(config)))
CFG = PLAN.cfg
RES = CFG["results_dir"]
METHODS = {m.name: m for m in PLAN.methods}


wildcard_constraints:
    key="[0-9a-f]{12}",
    method="[A-Za-z0-9_]+",
    split="train|detect_eval",


def slice_of(stage, key):
    return PLAN.slices[f"{stage}/{key}"]


def upstream_key(stage, key, parent):
    """Key of the `parent` slice nested in a `stage` slice (equal slices give equal keys)."""
    return stage_key(slice_of(stage, key)[parent])


def model_path(mkey):
    return f"{RES}/models/{mkey}/weights"


def data_path(dkey, name):
    return f"{RES}/data/{dkey}/{name}.parquet"


def acts_path(akey, split):
    return f"{RES}/activations/{akey}/{split}.parquet"


def train_path(method, tkey):
    return f"{RES}/train/{method}/{tkey}/params.safetensors"


def detect_path(method, tkey, name):
    return f"{RES}/detect/{method}/{tkey}/{name}.parquet"


def steer_path(method, skey):
    return f"{RES}/steer/{method}/{skey}/generations.parquet"


def judge_path(method, jkey):
    return f"{RES}/judge/{method}/{jkey}/ratings.parquet"


def report_outputs():
    return [f"{RES}/{PLAN.name}/{name}" for name in ("report.md", "leaderboard.csv")]


def stage_spec(stage, slice_stage=None, extra=None):
    """A params function giving the JSON job spec of `stage` (slice, inputs, outputs, threads)."""

    def spec(wildcards, input, output, threads):
        key = wildcards.get("key")
        return json.dumps(
            {
                "stage": stage,
                "slice": slice_of(slice_stage or stage, key) if key else None,
                "extra": extra,
                "input": {k: v for k, v in input.items()},
                "output": {k: v for k, v in output.items()},
                "threads": threads,
                "cache_dir": CFG["cache_dir"],
            },
            sort_keys=True,
        )

    return spec


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
    acts = slice_of("train", wildcards.key)["acts"]
    dkey = stage_key(acts["data"])
    return {
        "acts": acts_path(stage_key(acts), "train"),
        "examples": data_path(dkey, "train"),
        "concepts": data_path(dkey, "concepts"),
        "model": model_path(
            stage_key(acts["model"])
        ),  # loaded only by methods that use it
    }


def detect_inputs(wildcards):
    acts = slice_of("train", wildcards.key)["acts"]
    dkey = stage_key(acts["data"])
    return {
        "params": train_path(wildcards.method, wildcards.key),
        "acts": acts_path(stage_key(acts), "detect_eval"),
        "examples": data_path(dkey, "detect_eval"),
        "concepts": data_path(dkey, "concepts"),
        "model": model_path(stage_key(acts["model"])),
    }


def steer_inputs(wildcards):
    tkey = upstream_key("steer", wildcards.key, "train")
    acts = slice_of("train", tkey)["acts"]
    dkey = stage_key(acts["data"])
    inputs = {
        "model": model_path(stage_key(acts["model"])),
        "concepts": data_path(dkey, "concepts"),
        "prompts": data_path(dkey, "steer_prompts"),
        "params": train_path(wildcards.method, tkey),
    }
    method = METHODS[wildcards.method]
    if method.detects and method.steering == "add":
        # Strength = factor x the concept's max detection activation (explicit dependency).
        inputs["detect_metrics"] = detect_path(wildcards.method, tkey, "metrics")
    return inputs


def judge_inputs(wildcards):
    skey = upstream_key("judge", wildcards.key, "steer")
    acts = slice_of("judge", wildcards.key)["steer"]["train"]["acts"]
    return {
        "generations": steer_path(wildcards.method, skey),
        "model": model_path(stage_key(acts["model"])),
    }


def report_inputs(wildcards):
    inputs = {}
    for m in PLAN.methods:
        inputs[f"params__{m.name}"] = train_path(m.name, m.train_key)
        if m.detects:
            inputs[f"detect__{m.name}"] = detect_path(m.name, m.train_key, "metrics")
            inputs[f"pool__{m.name}"] = detect_path(m.name, m.train_key, "pool")
            inputs[f"scores__{m.name}"] = detect_path(m.name, m.train_key, "scores")
        if m.steering is not None:
            inputs[f"ratings__{m.name}"] = judge_path(m.name, m.judge_key)
    return inputs


def report_extra():
    """What the report needs beyond its inputs: the methods' facts and the resolved config."""
    methods = [
        {
            "name": m.name,
            "kind": m.kind,
            "detects": m.detects,
            "detect_level": m.detect_level,
            "steering": m.steering,
            "factor_free": m.factor_free,
        }
        for m in PLAN.methods
    ]
    return {"methods": methods, "config": CFG}
