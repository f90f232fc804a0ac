"""Judges: rubric parsing, the overall score, the embedded backend and the OpenAI backend.

The OpenAI backend is tested against a real OpenAI-compatible HTTP server on 127.0.0.1 that
answers with scripted replies; the embedded backend uses the real MiniLM and a small target model
from the session's `smollm_dir` fixture (tests/conftest.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from axflow.judge import CallCache, JudgeItem, Rating, build_judge, harmonic_mean, parse_rating
from axflow.judge.rubric import judge_prompt
from chat_server import ScriptedChatServer

# -- rubric -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The concept is clear.\nRating: [[2]]", 2.0),
        ("Rating: [[0]] at first, but on reflection\nRating: [[1]]", 1.0),
        ("**Rating:** [[1]]", 1.0),
        ("Rating: **2**.", 2.0),
        ("rating: '1'", 1.0),
        ('Rating: "0"', 0.0),
        ("Rating: [[1.5]]", 1.5),
        ("Rating: `2`\n\nThat is all.", 2.0),
        ("Rating: [[3]]", None),
        ("Rating: [[-1]]", None),
        ("Rating: [[nan]]", None),
        ("Rating: [[two]]", None),
        ("Rating:", None),
        ("I would give it a 2.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rating(reply: str | None, expected: float | None) -> None:
    assert parse_rating(reply) == expected


def test_harmonic_mean() -> None:
    assert harmonic_mean([2, 2, 2]) == 2.0
    assert harmonic_mean([2, 1, 2]) == pytest.approx(1.5)
    assert harmonic_mean([1, 1, 2]) == pytest.approx(1.2)
    assert harmonic_mean([0, 2, 2]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([])


def test_rating_overall_is_none_when_a_score_is_missing() -> None:
    assert Rating(2.0, 1.0, 2.0).overall == pytest.approx(1.5)
    assert Rating(0.0, 2.0, 2.0).overall == 0.0
    assert Rating(2.0, None, 2.0, failures=1).overall is None


def test_judge_prompts_carry_their_inputs() -> None:
    kw = {"concept": "C{x}", "instruction": "I}{", "generation": "G {generation}"}
    concept = judge_prompt("concept", **kw)
    assert "C{x}" in concept and "G {generation}" in concept and "I}{" not in concept
    assert "I}{" in judge_prompt("instruction", **kw)
    fluency = judge_prompt("fluency", **kw)
    assert "G {generation}" in fluency and "C{x}" not in fluency
    for aspect in ("concept", "instruction", "fluency"):
        assert "Rating: [[s]]" in judge_prompt(aspect, **kw)
    with pytest.raises(ValueError, match="unknown judge aspect"):
        judge_prompt("style", **kw)


def test_build_judge_names_what_is_wrong(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match="unknown judge backend 'gpt'"):
        build_judge({"name": "gpt"}, model_dir=None, cache=cache)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temprature'\]"):
        build_judge({"name": "openai", "temprature": 1.0}, model_dir=None, cache=cache)
    with pytest.raises(ValueError, match="no model directory"):
        build_judge({"name": "embedded"}, model_dir=None, cache=cache)


# -- embedded backend ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small forward passes run fastest on one thread, and CI machines are often oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VIDEO = "references to video and multimedia content"
BREAD = "How do I bake bread at home?"
ON_CONCEPT = "Watch the video tutorial on YouTube, then stream the recorded movie clips in HD."
ON_BREAD = "Mix flour, water, yeast and salt, let the dough rise, then bake it until golden."
FLUENT = "Let the dough rise for an hour in a warm place, then bake it for thirty minutes."
SALAD = "hour rise then dough for the minutes. bake in warm thirty place, it Let a an for"
LOOP = " ".join(["bread"] * 24)


def test_embedded_judge_ranks_concept_instruction_and_fluency(
    tmp_path: Path, smollm_dir: Path
) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    judge = build_judge(
        {"name": "embedded", "batch_size": 4}, model_dir=str(smollm_dir), cache=cache
    )
    items = [
        JudgeItem(VIDEO, BREAD, ON_CONCEPT),
        JudgeItem(VIDEO, BREAD, ON_BREAD),
        JudgeItem(VIDEO, BREAD, FLUENT),
        JudgeItem(VIDEO, BREAD, SALAD),
        JudgeItem(VIDEO, BREAD, LOOP),
        JudgeItem(VIDEO, BREAD, "  "),
    ]
    on_concept, on_bread, fluent, salad, loop, empty = judge.rate(items)

    assert on_concept.concept_score > on_bread.concept_score
    assert on_bread.instruction_score > on_concept.instruction_score
    assert fluent.fluency_score > salad.fluency_score
    assert fluent.perplexity < salad.perplexity
    assert loop.fluency_score == 0.0  # predictable, so only the repetition check catches it
    assert empty == Rating(0.0, 0.0, 0.0, perplexity=None, failures=0)
    assert all(r.failures == 0 for r in (on_concept, on_bread, fluent, salad, loop))

    # A rerun is served from the cache: same ratings, and no model is loaded.
    again = build_judge(
        {"name": "embedded"}, model_dir=str(smollm_dir), cache=CallCache(cache.path)
    )
    assert again.rate(items) == [on_concept, on_bread, fluent, salad, loop, empty]
    assert again._embedder is None and again._lm is None


def test_batched_perplexity_matches_one_at_a_time(smollm_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axflow.judge.embedded import sequence_perplexities

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32).eval()
    # Three generations share BREAD's prompt (one cached prefix), of different lengths.
    pairs = [
        (BREAD, FLUENT),
        ("Hi", "Hello! How can I help you today?"),
        (BREAD, ""),
        (BREAD, SALAD),
        (BREAD, "Flour."),
    ]
    one = sequence_perplexities(model, tok, pairs, batch_size=1)
    batched = sequence_perplexities(model, tok, pairs, batch_size=3)
    assert one[2] is None and batched[2] is None
    scored = [0, 1, 3, 4]
    assert [batched[k] for k in scored] == pytest.approx([one[k] for k in scored], rel=1e-4)
    assert len({one[k] for k in scored}) == 4

    # Reference: the model's own loss over the generation tokens of one unpadded sequence.
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": BREAD}], tokenize=False, add_generation_prompt=True
    )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    for got, text in ((batched[0], FLUENT), (batched[3], SALAD), (batched[4], "Flour.")):
        g_ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + g_ids])
        labels = ids.clone()
        labels[0, : len(p_ids)] = -100
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss
        assert got == pytest.approx(math.exp(loss.item()), rel=1e-4)


# -- openai backend -----------------------------------------------------------------------------


def scripted_judge(prompt: str, nth: int) -> tuple[int, str]:
    """The generation text picks the script: GOOD answers at once, FLAKY is unparseable on the
    first request per prompt, BROKEN is never parseable, ERROR500 fails with HTTP 500 once per
    prompt. Good replies rate concept 2, instruction 1, fluency 2."""
    if "ERROR500" in prompt and nth == 1:
        return 500, "scripted failure"
    if "BROKEN" in prompt or ("FLAKY" in prompt and nth == 1):
        return 200, "I cannot decide on a number for this one."
    score = 2 if "Concept:" in prompt else 1 if "Instruction:" in prompt else 2
    return 200, f"Short reason.\nRating: [[{score}]]"


@pytest.fixture
def judge_server() -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(scripted_judge)
    yield server
    server.close()


def _openai_cfg(base_url: str) -> dict:
    return {
        "name": "openai",
        "base_url": base_url,
        "model": "scripted-judge",
        "api_key_env": "AXFLOW_TEST_NO_SUCH_KEY",
        "max_concurrency": 4,
        "max_retries": 2,
        "transport_retries": 2,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 10,
    }


def test_openai_judge_retries_counts_failures_and_caches(
    tmp_path: Path, judge_server: ScriptedChatServer
) -> None:
    items = [
        JudgeItem("dates", "Say hi.", f"{tag} text") for tag in ("GOOD", "FLAKY", "BROKEN")
    ] + [JudgeItem("dates", "Say hi.", "ERROR500 text")]
    cache = CallCache(tmp_path / "calls.sqlite")
    judge = build_judge(_openai_cfg(judge_server.base_url), model_dir=None, cache=cache)

    good, flaky, broken, error500 = judge.rate(items)
    for rating in (good, flaky, error500):
        assert rating == Rating(2.0, 1.0, 2.0, perplexity=None, failures=0)
        assert rating.overall == pytest.approx(1.5)
    assert broken == Rating(None, None, None, perplexity=None, failures=3)
    assert broken.overall is None
    # GOOD 3 calls; FLAKY 3 x (bad + good); BROKEN 3 x 3 attempts; ERROR500 3 x (500 + good).
    assert judge_server.requests == 3 + 6 + 9 + 6

    # A fresh judge on the same cache file replays everything, re-asks included, with no HTTP.
    before = judge_server.requests
    replay = build_judge(
        _openai_cfg(judge_server.base_url), model_dir=None, cache=CallCache(cache.path)
    )
    assert replay.rate(items) == [good, flaky, broken, error500]
    assert judge_server.requests == before


def test_openai_judge_stops_on_unknown_endpoint(
    tmp_path: Path, judge_server: ScriptedChatServer
) -> None:
    from axflow.judge.openai_judge import JudgeEndpointError

    cfg = _openai_cfg(judge_server.base_url.replace("/v1", "/wrong"))
    judge = build_judge(cfg, model_dir=None, cache=CallCache(tmp_path / "c.sqlite"))
    with pytest.raises(JudgeEndpointError, match="404"):
        judge.rate([JudgeItem("dates", "Say hi.", "GOOD text")])
