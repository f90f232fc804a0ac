"""Synthesis: the protocol's counts per concept, zero model calls on a rerun, an added concept
generating only its own rows, and the OpenAI-compatible writer (retries, accounting, polysemy)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
import torch

from axflow.calls import CallCache
from axflow.data import sources
from axflow.data.generators import ChatRequest, OpenAIGenerator, TargetGenerator
from axflow.data.synthesize import negative_counts, synthesize
from axflow.data.validate import validate_examples
from axflow.lm.models import load_model
from axflow.lm.openai_compat import EndpointError
from chat_server import ScriptedChatServer

COUNTS = {
    "train_positive": 3,
    "train_negative": 2,
    "eval_positive": 2,
    "eval_negative": 3,
    "hard_negatives": 2,
    "response_tokens": 8,
}


@pytest.fixture(scope="module")
def lm(smollm_dir: Path):
    torch.set_num_threads(1)
    return load_model(smollm_dir, dtype="float32", chat=True)


def check_counts(result, hard_max: int) -> None:
    """Every concept has exactly the configured rows per category (validate_examples raises)."""
    validate_examples(
        result.train,
        split="train",
        concepts=result.concepts,
        expected={"positive": COUNTS["train_positive"], "negative": COUNTS["train_negative"]},
        source="synthesized train",
    )
    validate_examples(
        result.detect_eval,
        split="detect_eval",
        concepts=result.concepts,
        expected={"positive": COUNTS["eval_positive"], "negative": COUNTS["eval_negative"]},
        at_most={"hard negative": hard_max},
        source="synthesized eval",
    )


def test_target_synthesis_counts_rerun_and_added_concept(tmp_path, lm):
    concepts = sources.load_concepts()
    pool = sources.load_instruction_pool()
    first = concepts.head(2)  # both text: an added text concept reuses the shared negatives
    cache = CallCache(tmp_path / "calls.sqlite")

    def run(cs):
        gen = TargetGenerator(lm, "smollm-test", {"temperature": 1.0, "batch_size": 32}, cache)
        return synthesize(cs, pool, COUNTS, 7, writer=gen, target=gen), gen.stats

    result, stats = run(first)
    check_counts(result, COUNTS["hard_negatives"])
    eval_neg = result.detect_eval.filter(pl.col("category") == "negative")
    # AxBench's genre mix of eval negatives, and the shared train pool of the target's answers.
    assert dict(eval_neg.group_by("concept_genre").len().iter_rows()) == {
        g: 2 * n for g, n in negative_counts(3).items() if n
    }
    shared = result.train.filter(pl.col("concept_id") == -1)
    assert shared.height == 2 and (shared["output_concept"] == "EEEEE").all()
    assert stats.calls == stats.requests > 0 and stats.completion_tokens > 0
    tok = lm.tokenizer
    outputs = pl.concat([result.train, result.detect_eval])["output"].to_list()
    assert all(len(tok(o, add_special_tokens=False)["input_ids"]) <= 8 for o in outputs)

    again, stats = run(first)
    assert stats.calls == 0 and stats.cached == stats.requests
    assert again.train.equals(result.train) and again.detect_eval.equals(result.detect_eval)

    third = concepts.filter(pl.col("genre") == "text").head(3)
    grown, stats = run(third)
    new_id = third["concept_id"][2]
    poly = grown.polysemy[new_id]
    # Only the new concept's rows and polysemy steps reach the model.
    own = sum(COUNTS[k] for k in ("train_positive", "eval_positive", "eval_negative"))
    steps = 1 + len(poly["words"]) + len(poly["senses"]) + len(poly["kept"])
    assert stats.calls == own + steps
    old = pl.col("concept_id") != new_id
    assert grown.train.filter(old).equals(result.train)
    assert grown.detect_eval.filter(old).equals(result.detect_eval)


def scripted_writer(prompt: str, nth: int) -> tuple[int, str]:
    """A writer that follows the protocol's formats; each genre request first fails with 503."""
    if prompt.startswith("Concept:") and "genres" in prompt:
        return (503, "busy") if nth == 1 else (200, "Math; Text")
    if "single, common English words" in prompt:
        return 200, "1. Bank\n2. spring\n3. bank\n- it's"
    if prompt.startswith("Word: bank"):
        return 200, "the side of a river"
    if prompt.startswith("Word: spring"):
        return 200, "<NONE>"
    if prompt.startswith("Concept A:"):
        return 200, "They share nothing.\nAnswer: <YES>"
    words = re.findall(r"\w+", prompt)
    return 200, "<FINAL> " + " ".join(words[:40])


def test_openai_writer_protocol_retries_and_accounting(tmp_path, lm):
    server = ScriptedChatServer(scripted_writer)
    try:
        cfg = {
            "name": "openai",
            "base_url": server.base_url,
            "model": "scripted-writer",
            "api_key_env": "AXFLOW_TEST_NO_SUCH_KEY",
            "max_concurrency": 4,
            "transport_retries": 2,
            "backoff_s": 0.01,
            "backoff_max_s": 0.02,
            "price_input_per_mtok": 1.0,
            "price_output_per_mtok": 2.0,
        }
        cache = CallCache(tmp_path / "calls.sqlite")
        target = TargetGenerator(lm, "smollm-test", {"batch_size": 32}, cache)
        writer = OpenAIGenerator(cfg, cache)
        concepts = pl.DataFrame(
            {"concept_id": [0, 1], "concept": ["money and finance", "sums of numbers"]}
        ).with_columns(genre=pl.lit("auto"), ref=pl.lit(None, pl.String), sae_id=pl.lit(None))
        pool = sources.load_instruction_pool()
        result = synthesize(
            concepts, pool, COUNTS, 7, writer=writer, target=target, overgenerate=1.5
        )
        # Genre from the writer; one hard negative per concept ("spring" had no other sense).
        assert result.concepts["genre"].to_list() == ["math", "math"]
        check_counts(result, hard_max=1)
        hard = result.detect_eval.filter(pl.col("category") == "hard negative")
        assert hard["output_concept"].to_list() == ["bank//the side of a river"] * 2
        assert result.polysemy[0]["words"] == ["bank", "spring"]
        assert not any(o.startswith("<FINAL>") for o in result.detect_eval["output"])
        # Requests asked 1.5x the target-token budget, with per-request seeds.
        assert 12 in {b["max_tokens"] for b in server.bodies}
        assert all("seed" in b for b in server.bodies)
        st = writer.stats
        assert st.retries == 2 and st.calls == server.requests - 2
        assert st.prompt_tokens > 0 and st.completion_tokens > 0
        expected_cost = (st.prompt_tokens * 1.0 + st.completion_tokens * 2.0) / 1e6
        assert st.cost_usd == pytest.approx(expected_cost)

        before = server.requests
        replay = OpenAIGenerator(cfg, CallCache(cache.path))
        again = synthesize(
            concepts, pool, COUNTS, 7, writer=replay, target=target, overgenerate=1.5
        )
        assert server.requests == before and replay.stats.calls == 0
        assert again.detect_eval.equals(result.detect_eval)

        wrong = OpenAIGenerator({**cfg, "base_url": server.base_url[:-3] + "/nope"}, cache)
        with pytest.raises(EndpointError, match="generator.base_url"):
            wrong([ChatRequest("hello there", seed=1, max_tokens=4)])
    finally:
        server.close()
