"""Where every artefact lives and how a job's inputs are named: the one contract that
`rules/common.smk`, the stages and the report share.

A stage's output folder is named by its key, a short hash of its config slice (the slice nests
its upstream slices, so it describes everything the output depends on). Speed knobs and input
file paths stay in the slice, and so in every `config.json`, but not in the key: they change how
fast a stage runs, never what it writes (files enter the data slice by content digest instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

UNKEYED = {
    "extraction": {"batch_tokens"},
    "steering": {"batch_size"},
    "generator": {"batch_size", "max_concurrency", "max_num_seqs", "max_model_len"},
    "judge": {"batch_size", "embed_batch_size", "max_concurrency"},
    "dataset": {"concepts", "instructions", "steering_instructions"},
}


def _keyed(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict) and k in UNKEYED:
            v = {kk: vv for kk, vv in v.items() if kk not in UNKEYED[k]}
        out[k] = _keyed(v)
    return out


def stage_key(slice_: Any) -> str:
    """Short content hash of a config slice (stable across runs and machines)."""
    blob = json.dumps(_keyed(slice_), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_source(train_slice: dict[str, Any]) -> dict[str, Any]:
    """What a train job reads: its activations' slice (`data`, `model`, `layer`, ...) or, for a
    method that reads no activations, its examples' slice (`data`, `model`; no layer)."""
    return train_slice["acts"] if "acts" in train_slice else train_slice["examples"]


@dataclass(frozen=True)
class Layout:
    """The artefact paths under one `results_dir`."""

    results: str

    def model(self, mkey: str) -> str:
        return f"{self.results}/models/{mkey}/weights"

    def data(self, dkey: str, name: str) -> str:
        return f"{self.results}/data/{dkey}/{name}.parquet"

    def data_stats(self, dkey: str) -> str:
        return f"{self.results}/data/{dkey}/stats.json"

    def acts(self, akey: str, split: str) -> str:
        return f"{self.results}/activations/{akey}/{split}.parquet"

    def train(self, method: str, tkey: str) -> str:
        return f"{self.results}/train/{method}/{tkey}/params.safetensors"

    def detect(self, method: str, dkey: str, name: str) -> str:
        return f"{self.results}/detect/{method}/{dkey}/{name}.parquet"

    def steer(self, method: str, skey: str) -> str:
        return f"{self.results}/steer/{method}/{skey}/generations.parquet"

    def judge(self, method: str, jkey: str) -> str:
        return f"{self.results}/judge/{method}/{jkey}/ratings.parquet"

    def benchmark(self, rule: str, name: str) -> str:
        """The `benchmark:` file of a job (wall seconds, memory, CPU time); `name` is the job's
        wildcards, as in its log file's name."""
        return f"{self.results}/benchmarks/{rule}/{name}.tsv"


# The report's inputs: one name per (kind, index, owner), built and read only here. The owner
# of a method's artefact is the method, of a benchmark file its rule; data stats have none.
METHOD_INPUTS = ("params", "metrics", "pool", "scores", "ratings", "generations")
OWNERS = {
    **{k: "method" for k in METHOD_INPUTS},
    "bench": "rule",
    "data_stats": None,
    "examples": "split",  # a data job's train / detect_eval rows (the report page's examples)
    "template": None,  # the report page's templates: editing one reruns the report
    "judge_validity": None,  # bench/judge_validity.py's record of the run's judge, if any
}
REPORT_PACKAGE = Path(__file__).resolve().parent / "report"


def report_templates() -> list[str]:
    """The report page's Jinja2 templates (axflow.report.html)."""
    return sorted(str(p) for p in (REPORT_PACKAGE / "templates").glob("*.j2"))


def judge_validity_record(cfg: Mapping[str, Any]) -> Path:
    """Where bench/judge_validity.py keeps its measurement of `cfg`'s judge: keyed by the judge
    config and the target model (the embedded judge's fluency is its perplexity), not its layer."""
    model = {k: v for k, v in cfg["model"].items() if k != "layer"}
    key = stage_key({"judge": cfg["judge"], "model": model})
    return REPORT_PACKAGE / "judge_validity" / f"{cfg['judge']['name']}-{key}.json"


def report_input(kind: str, index: int, owner: str | None = None) -> str:
    """The report rule's input name of the `index`-th `kind` artefact of `owner` (shard order
    for a method's artefacts)."""
    if kind not in OWNERS or (OWNERS[kind] is None) != (owner is None):
        raise ValueError(f"report input {kind!r}: owner {owner!r} does not fit {OWNERS}")
    return f"{kind}.{index}" if owner is None else f"{kind}.{owner}.{index}"


def _parsed(inputs: Mapping[str, str]) -> list[tuple[str, str | None, int, str]]:
    """(kind, owner, index, path) of every report input, in index order."""
    rows = []
    for name, path in inputs.items():
        kind, *owner, index = name.split(".")
        rows.append((kind, owner[0] if owner else None, int(index), path))
    return sorted(rows, key=lambda r: r[2])


def run_inputs(inputs: Mapping[str, str], kind: str) -> list[tuple[str | None, str]]:
    """(owner, path) of every `kind` input, in index order."""
    return [(owner, path) for k, owner, _, path in _parsed(inputs) if k == kind]


def method_inputs(inputs: Mapping[str, str], method: str) -> dict[str, list[str]]:
    """A method's input paths per kind, in shard order."""
    out: dict[str, list[str]] = {k: [] for k in METHOD_INPUTS}
    for kind, owner, _, path in _parsed(inputs):
        if kind in out and owner == method:
            out[kind].append(path)
    return out
