"""CallCache: content addressing, persistence, and concurrent use from threads and processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from axflow.calls import CallCache, call_key

PARAMS = {"temperature": 0.7, "max_tokens": 16}


def test_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    with CallCache(path) as cache:
        assert cache.get("m", PARAMS, "hello") is None
        cache.put("m", PARAMS, "hello", "world")
        assert cache.stats.misses == 1 and cache.stats.writes == 1

    reopened = CallCache(path)
    assert reopened.get("m", PARAMS, "hello") == "world"
    assert (reopened.stats.hits, reopened.stats.misses) == (1, 0)
    # The row records what the call was, not just its hash.
    model, params, prompt, response = (
        sqlite3.connect(path)
        .execute("SELECT model, params, prompt, response FROM calls")
        .fetchone()
    )
    assert (model, prompt, response) == ("m", "hello", "world")
    assert params == '{"max_tokens":16,"temperature":0.7}'


def test_key_covers_model_params_and_prompt(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("m", PARAMS, "p", "r")
    # Key order does not matter; any changed value does.
    assert cache.get("m", {"max_tokens": 16, "temperature": 0.7}, "p") == "r"
    assert cache.get("other", PARAMS, "p") is None
    assert cache.get("m", {**PARAMS, "temperature": 1.0}, "p") is None
    assert cache.get("m", PARAMS, "p ") is None
    assert call_key("m", PARAMS, "p") != call_key("m", PARAMS, [{"role": "user", "content": "p"}])


def test_first_write_wins(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("m", PARAMS, "p", "first")
    cache.put("m", PARAMS, "p", "second")
    assert cache.get("m", PARAMS, "p") == "first"
    assert len(cache) == 1


def test_structured_prompts_and_batches(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    prompts = [{"q": i} for i in range(1200)]  # more than one sqlite IN(...) chunk
    cache.put_many("m", PARAMS, prompts[::2], [f"r{i}" for i in range(0, 1200, 2)])
    got = cache.get_many("m", PARAMS, prompts + [prompts[0]])
    assert got[:4] == ["r0", None, "r2", None]
    assert got[-1] == "r0"
    assert cache.stats.hits == 601 and cache.stats.misses == 600


def test_rejects_what_it_cannot_store(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    with pytest.raises(TypeError, match="response text"):
        cache.put("m", PARAMS, "p", {"not": "text"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache.get("m", {"obj": object()}, "p")


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(40):
                cache.put("m", PARAMS, f"{worker}-{i}", f"r{worker}-{i}")
                assert cache.get("m", PARAMS, f"{worker}-{i}") == f"r{worker}-{i}"
                cache.put("m", PARAMS, "shared", f"from {worker}")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 8 * 40 + 1
    assert cache.stats.hits == 8 * 40
    assert cache.get("m", PARAMS, "shared").startswith("from ")


def _write_from_process(path: str, worker: int) -> None:
    cache = CallCache(path)
    for i in range(30):
        cache.put_many("m", PARAMS, [f"{worker}-{i}", "shared"], [f"r{worker}-{i}", f"{worker}"])
    cache.close()


def test_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    CallCache(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_from_process, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = CallCache(path)
    assert len(cache) == 4 * 30 + 1
    assert cache.get_many("m", PARAMS, [f"{w}-29" for w in range(4)]) == [
        f"r{w}-29" for w in range(4)
    ]
