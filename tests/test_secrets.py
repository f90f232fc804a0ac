"""API keys come from the environment only and never reach a file the run writes.

A config that carries a key is refused while the DAG is planned, naming the key to remove and
`api_key_env`; the endpoint path (the workflow's data job with generator=openai, the judge job
with judge=openai, tests/endpoint_run.py) runs with a fake key, which the server must receive
and which must appear in no file under results/ (artefacts, logs, config.json, the call cache)
nor in Snakemake's log of that run, even though the server echoes it in an error body.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from axflow.calls import CallCache
from axflow.config import ConfigError, compose
from axflow.judge import build_judge
from axflow.layout import REPO_ROOT
from axflow.secrets import check_no_secrets
from endpoint_run import KEY_ENV, endpoint_run

FAKE = "sk-proj-0123456789abcdefABCDEF"


@pytest.mark.parametrize("group", ["judge", "generator"])
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+{g}.api_key=" + FAKE, "{g}.api_key"),
        ("{g}.api_key_env=" + FAKE, "{g}.api_key_env"),
        ("{g}.base_url=https://user:pw@example.org/v1", "{g}.base_url"),
        ("+{g}.extra.headers.Authorization='Bearer " + FAKE + "'", "{g}.extra.headers"),
        ("{g}.model=" + FAKE, "{g}.model"),
    ],
)
def test_config_cannot_carry_a_key(group: str, override: str, named: str) -> None:
    backend = "judge=openai" if group == "judge" else "generator=openai"
    with pytest.raises(ConfigError) as err:
        compose([backend, override.format(g=group)])
    message = str(err.value)
    assert f"config key {named.format(g=group)}" in message
    assert "environment" in message or "api_key_env" in message


def test_a_key_in_the_environment_may_not_be_copied_into_the_config(monkeypatch) -> None:
    monkeypatch.setenv("AXFLOW_TEST_LIVE_KEY", "local-server-key-1234")
    ok = {"name": "openai", "api_key_env": "AXFLOW_TEST_LIVE_KEY", "model": "m"}
    check_no_secrets(ok, "judge")
    with pytest.raises(ValueError, match="judge.model"):
        check_no_secrets({**ok, "model": "m local-server-key-1234"}, "judge")


def test_backends_refuse_a_key_in_their_config(tmp_path: Path) -> None:
    """Built outside the workflow (no planning step), a backend still refuses one."""
    from axflow.data.generators import OpenAIGenerator

    cfg = {**compose(["judge=openai"])["judge"], "api_key": FAKE}
    cache = CallCache(tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match=r"judge\.api_key: keys are read from the environment"):
        build_judge(cfg, model_dir=None, cache=cache)
    gcfg = {**compose(["generator=openai"])["generator"], "token": FAKE}
    with pytest.raises(ValueError, match=r"generator\.token: keys are read from the environment"):
        OpenAIGenerator(gcfg, cache)


def files_holding(needle: bytes, paths) -> list[str]:
    return [str(p) for p in paths if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow  # a workflow run: make test's second step
def test_endpoint_run_leaves_no_key_in_results(tmp_path_factory, smollm_dir: Path) -> None:
    run = endpoint_run(tmp_path_factory.getbasetemp() / "endpoint_run", smollm_dir)
    key = run.key.encode()
    # The key was used: every request carried it, including those whose error body echoed it.
    assert set(run.server.auth) == {f"Bearer {run.key}"} and run.server.requests > 20
    assert run.server.kinds["status"] > 0 and "judge request rejected (400)" in run.judge_log
    files = sorted(run.results.rglob("*"))
    kinds = {p.suffix for p in files if p.is_file()}
    assert {".parquet", ".json", ".log", ".sqlite"} <= kinds, kinds
    assert any(p.name == "config.json" for p in files)
    assert files_holding(key, files) == []
    # Snakemake's own log and metadata of these runs (the repository's .snakemake folder).
    snake = [p for p in (REPO_ROOT / ".snakemake").rglob("*") if p.is_file()]
    recent = [p for p in snake if p.stat().st_mtime >= run.started - 1]
    assert any(p.parent.name == "log" for p in recent)
    assert files_holding(key, recent) == []
    assert "***" in run.judge_log  # the key the server echoed, masked in the judge job's log
    assert KEY_ENV not in __import__("os").environ  # the fake key left the environment again
