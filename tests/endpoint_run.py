"""The endpoint path run for real, once per test process: the workflow's data job with
generator=openai, then the judge job's entry point with judge=openai, both against a loopback
FaultServer that injects faults into first asks, with a fake key in the environment.

Used by test_endpoint_faults (faults survived and counted through Snakemake, reruns make no
calls) and test_secrets (the key appears in no file under results/ nor in Snakemake's log).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from axflow import store
from axflow.config import compose
from axflow.layout import REPO_ROOT
from dag import snakemake, stand_in_model
from fault_server import Fault, FaultServer, ok, status

KEY_ENV = "AXFLOW_TEST_ENDPOINT_KEY"
GOOD_RATING = "Clear enough.\nRating: [[2]]"
# A prompt's first ask gets FAULTS[crc32(prompt) % len]; later asks answer normally.
FAULTS = [
    None,
    None,
    status(500),
    status(503),
    status(429, retry_after="1"),
    Fault("hang", seconds=2.5),
    Fault("slow", seconds=0.25),
    Fault("truncated"),
    Fault("empty_choices"),
    Fault("wrong_model"),
]
KIND_OF = {  # server-side fault -> how the client counts it
    "http_500": lambda f: f.kind == "status" and f.status == 500,
    "http_503": lambda f: f.kind == "status" and f.status == 503,
    "http_429": lambda f: f.kind == "status" and f.status == 429,
    "invalid_json": lambda f: f.kind == "truncated",
    "empty_choices": lambda f: f.kind == "empty_choices",
    "wrong_model": lambda f: f.kind == "wrong_model",
}
TIMEOUTS = ("hang", "slow")
ENDPOINT = [
    "backoff_s=0.02",
    "backoff_max_s=1.5",
    "timeout_s=1.0",
    "transport_retries=6",
    "max_concurrency=8",
]
DATA = [
    "dataset.max_concepts=2",
    "dataset.train_positive=3",
    "dataset.train_negative=2",
    "dataset.eval_positive=2",
    "dataset.eval_negative=2",
    "dataset.response_tokens=8",
    "dataset.hard_negatives=1",
    "dataset.verifier=none",
]


def writer_reply(prompt: str) -> str:
    """A writer that follows the synthesis protocol's reply formats."""
    if prompt.startswith("Concept:") and "genres" in prompt:
        return "Text"
    if "single, common English words" in prompt:
        return "bank"
    if prompt.startswith("Word:"):
        return "the side of a river"
    if prompt.startswith("Concept A:"):
        return "They share nothing.\nAnswer: <YES>"
    if prompt.startswith("Please act as an impartial judge") or "Rating:" in prompt:
        return GOOD_RATING
    return "<FINAL> " + " ".join(prompt.split()[:12])


class Script:
    """First asks get a fault chosen by the prompt's checksum; the judge prompts of the
    generation tagged <REJECT> get a 400 whose body echoes the Authorization header (a key a
    careless server leaks), and those tagged <GARBAGE> never get a rating."""

    def __init__(self) -> None:
        self.injected: list[Fault] = []

    def __call__(self, prompt: str, nth: int) -> Fault:
        if "<REJECT>" in prompt:
            return Fault("status", "bad request from {auth}", status=400)
        if "<GARBAGE>" in prompt:
            return ok("A fine text, I suppose.")
        fault = FAULTS[zlib.crc32(prompt.encode()) % len(FAULTS)] if nth == 1 else None
        if fault is None:
            return ok(writer_reply(prompt))
        self.injected.append(fault)
        return Fault(
            fault.kind, writer_reply(prompt), fault.status, fault.retry_after, fault.seconds
        )


@dataclass
class EndpointRun:
    results: Path
    key: str
    server: FaultServer
    script: Script
    started: float
    data_injected: list[Fault]  # what the server injected during the data job
    data_stats: dict
    data_rerun_stats: dict
    data_rerun_calls: int
    judge_injected: list[Fault]
    ratings: pl.DataFrame
    judge_log: str
    judge_rerun_calls: int


def counts_by_kind(injected: list[Fault]) -> dict[str, int]:
    """What the client should count for the faults the server injected (timeouts aside)."""
    return {k: sum(map(is_kind, injected)) for k, is_kind in KIND_OF.items()}


def _judge_job(results: Path, weights: Path, judge_cfg: dict, gens: Path, tag: str) -> str:
    """The judge job through its entry point (`python -m axflow.stages`, as STAGE_CMD runs it)."""
    spec = {
        "stage": "judge",
        "slice": {
            "judge": judge_cfg,
            "steer": {"train": {"acts": {"model": {"model": {"name": "smollm2_135m"}}}}},
        },
        "extra": None,
        "input_names": ["generations", "model"],
        "output_names": ["ratings", "config"],
        "cache_dir": str(results / "cache"),
    }
    out = results / "judge" / "endpoint" / tag
    log = results / "logs" / "judge" / f"endpoint_{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "axflow.stages", json.dumps(spec), "--input", str(gens)]
    cmd += [str(weights), "--output", str(out / "ratings.parquet"), str(out / "config.json")]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT, check=False)
    text = log.read_text()
    assert proc.returncode == 0, text
    return text


def _generations(results: Path) -> Path:
    tags = ["a fine reply", "<REJECT> a reply", "<GARBAGE> a reply", "another reply"]
    rows = [
        {
            "concept_id": k,
            "concept": "rivers and their banks",
            "input_id": 0,
            "split": "test",
            "factor": 1.0,
            "strength": 1.0,
            "instruction": f"Describe a walk {k}.",
            "prompt": f"Describe a walk {k}.",
            "generation": text,
            "seed": k,
        }
        for k, text in enumerate(tags)
    ]
    path = results / "steer" / "endpoint" / "generations.parquet"
    path.parent.mkdir(parents=True)
    store.write_table(pl.DataFrame(rows), path, "generations")
    return path


@functools.cache
def endpoint_run(results: Path, smollm_dir: Path) -> EndpointRun:
    """Run once per process (callers pass the same session folder); later calls reuse it."""
    key = f"sk-axflow-fake-{uuid.uuid4().hex}"
    script = Script()
    server = FaultServer(script)
    started = time.time()
    os.environ[KEY_ENV] = key
    try:
        weights = stand_in_model(results, smollm_dir, DATA)
        endpoint = [f"base_url={server.base_url}", f"api_key_env={KEY_ENV}", *ENDPOINT]
        overrides = [
            *DATA,
            "generator=openai",
            "generator.model=fault-writer",
            *[f"generator.{o}" for o in endpoint],
            f"results_dir={results}",
            f"cache_dir={results}/cache",
        ]
        proc = snakemake("--until", "dataset", overrides=overrides)
        logs = {str(p): p.read_text() for p in results.glob("logs/**/*.log")}
        assert proc.returncode == 0, proc.stdout + proc.stderr + "\n".join(logs.values())
        (stats_path,) = results.glob("data/*/stats.json")
        data_stats = json.loads(stats_path.read_text())
        data_injected = list(script.injected)
        before = server.requests
        proc = snakemake("--until", "dataset", "--forcerun", "dataset", overrides=overrides)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rerun_stats = json.loads(stats_path.read_text())
        data_rerun_calls = server.requests - before

        judge_cfg = compose(
            ["judge=openai", "judge.model=fault-judge", *[f"judge.{o}" for o in endpoint]]
        )["judge"]
        gens = _generations(results)
        mark = len(script.injected)
        judge_log = _judge_job(results, weights, judge_cfg, gens, "first")
        ratings = pl.read_parquet(results / "judge" / "endpoint" / "first" / "ratings.parquet")
        judge_injected = script.injected[mark:]
        before = server.requests
        _judge_job(results, weights, judge_cfg, gens, "rerun")
        judge_rerun_calls = server.requests - before
    finally:
        os.environ.pop(KEY_ENV, None)
    return EndpointRun(
        results=results,
        key=key,
        server=server,
        script=script,
        started=started,
        data_injected=data_injected,
        data_stats=data_stats,
        data_rerun_stats=rerun_stats,
        data_rerun_calls=data_rerun_calls,
        judge_injected=judge_injected,
        ratings=ratings,
        judge_log=judge_log,
        judge_rerun_calls=judge_rerun_calls,
    )
