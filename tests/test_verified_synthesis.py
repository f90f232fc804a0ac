"""Verified synthesis: a positive that fails verification is written again, a negative that
carries its concept is rejected and written again, and a row that never passes within
dataset.max_attempts is the clear shortfall error naming the concept and category.

The writer is a real in-process generator (a CachedGenerator backend, so the call cache and its
accounting are the production ones) that returns scripted texts: the first seed it sees for a
prompt gets the scripted first answer, every later seed the later one. The verifier is the real
default (MiniLM similarity, axflow.data.verify.EmbeddedVerifier).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from axflow.calls import CallCache
from axflow.data import sources
from axflow.data.generators import CachedGenerator, ChatRequest, _Reply
from axflow.data.synthesize import synthesize
from axflow.data.validate import DataError, validate_examples
from axflow.data.verify import EmbeddedVerifier, NoVerifier

CONCEPT = "ocean waves and the sea shore"
ON_TOPIC = "The ocean waves roll onto the sandy shore as the sea tide rises; surfers ride them."
OFF_TOPIC = "Choosing the best pair of running shoes involves checking comfort, fit and price."
LEAKY = "Beside the ocean, waves crash on the sea shore while I write this list of tips."
NEUTRAL = "To bake bread, mix flour, water, yeast and salt, then knead the dough."
COUNTS = {
    "train_positive": 2,
    "train_negative": 2,
    "eval_positive": 2,
    "eval_negative": 3,
    "hard_negatives": 0,
    "response_tokens": 40,
}


class ScriptedWriter(CachedGenerator):
    """Answers by prompt kind; `script[kind]` is (first answer, answer for every later seed)."""

    model_id = "scripted"
    temperature = 1.0

    def __init__(self, cache: CallCache, tokenizer, script: dict[str, tuple[str, str]]) -> None:
        self.lm = SimpleNamespace(tokenizer=tokenizer)  # synthesize cuts with the target's
        self.script = script
        self.seeds: dict[str, list[int]] = {}
        self.batches = 0
        super().__init__(cache)

    def _generate(self, requests: list[ChatRequest], params: list[dict]) -> list[_Reply]:
        self.batches += 1
        out = []
        for r, p in zip(requests, params, strict=True):
            seen = self.seeds.setdefault(r.user, [])
            if r.seed not in seen:
                seen.append(r.seed)
            kind = (
                "positive"
                if "clearly bring in this topic" in r.user
                else "negative"
                if "do not mention" in r.user
                else "other"
            )
            first, later = self.script.get(kind, (NEUTRAL, NEUTRAL))
            text = first if seen.index(r.seed) == 0 else later
            self.cache.put(self.model_id, p, r.user, text)
            out.append(_Reply(text))
        return out


@pytest.fixture(scope="module")
def tokenizer(smollm_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture()
def concepts() -> pl.DataFrame:
    return pl.DataFrame({"concept_id": [0], "concept": [CONCEPT], "genre": ["text"]}).with_columns(
        ref=pl.lit(None, pl.String), sae_id=pl.lit(None, pl.Int64)
    )


def run(tmp_path, tokenizer, concepts, script, **cfg):
    cache = CallCache(tmp_path / "calls.sqlite")
    writer = ScriptedWriter(cache, tokenizer, script)
    verifier = EmbeddedVerifier(cache)
    pool = sources.load_instruction_pool()
    result = synthesize(
        concepts, pool, {**COUNTS, **cfg}, 7, writer=writer, target=writer, verifier=verifier
    )
    return result, writer


def per_category(result) -> dict[str, dict]:
    return {row["category"]: row for row in result.verification["per_concept"]}


def test_failed_positive_and_concept_carrying_negative_are_resampled(tmp_path, tokenizer, concepts):
    script = {"positive": (OFF_TOPIC, ON_TOPIC), "negative": (LEAKY, NEUTRAL)}
    result, writer = run(tmp_path, tokenizer, concepts, script, max_attempts=3, candidates=1)
    rows = pl.concat([result.train, result.detect_eval]).filter(pl.col("concept_id") == 0)
    positives = rows.filter(pl.col("category") == "positive")["output"].to_list()
    negatives = rows.filter(pl.col("category") == "negative")["output"].to_list()
    # Every row was filled by its second attempt: the off-topic first positive and the first
    # negative, which mentions the ocean, were rejected.
    assert positives == [ON_TOPIC] * 4 and negatives == [NEUTRAL] * 3
    stats = per_category(result)
    assert stats["positive"]["accepted"] == 4 and stats["positive"]["passed"] == 4
    assert stats["positive"]["candidates"] == 8 and stats["positive"]["attempts"] == 8
    assert stats["negative"]["accepted"] == 3 and stats["negative"]["candidates"] == 6
    rejected = result.verification["rejected_examples"]
    assert rejected["positive"][0]["output"] == OFF_TOPIC
    assert rejected["negative"][0]["output"] == LEAKY
    assert rejected["negative"][0]["concept_similarity"] >= 0.10
    # Each attempt is a new seed (a new cache key), and a round is one batched writer call.
    assert all(len(seeds) == 2 for u, seeds in writer.seeds.items() if "topic" in u)
    assert writer.batches == 3  # shared negatives, round 1, round 2
    validate_examples(
        result.detect_eval,
        split="detect_eval",
        concepts=concepts,
        expected={"positive": 2, "negative": 3},
        source="verified eval",
    )

    # A rerun is served from the cache: no writer call, the same rows.
    again, replay = run(tmp_path, tokenizer, concepts, script, max_attempts=3, candidates=1)
    assert replay.stats.calls == 0 and again.detect_eval.equals(result.detect_eval)


def test_best_of_n_in_one_batched_round(tmp_path, tokenizer, concepts):
    script = {"positive": (OFF_TOPIC, ON_TOPIC), "negative": (LEAKY, NEUTRAL)}
    result, writer = run(tmp_path, tokenizer, concepts, script, max_attempts=1, candidates=3)
    stats = per_category(result)
    assert stats["positive"]["accepted"] == 4 and stats["positive"]["candidates"] == 12
    assert stats["positive"]["passed"] == 8  # candidates 2 and 3 of each row pass
    assert writer.batches == 2  # shared negatives, one round for every candidate


def test_shortfall_after_max_attempts_names_concept_and_category(tmp_path, tokenizer, concepts):
    script = {"positive": (ON_TOPIC, ON_TOPIC), "negative": (LEAKY, LEAKY)}
    result, _ = run(tmp_path, tokenizer, concepts, script, max_attempts=2, candidates=2)
    stats = per_category(result)
    assert stats["negative"]["short"] == 3 and stats["negative"]["candidates"] == 12
    assert stats["negative"]["passed"] == 0 and stats["positive"]["short"] == 0
    assert result.detect_eval.filter(pl.col("category") == "negative").height == 0
    with pytest.raises(DataError, match=r"concept 0 \('ocean waves.*missing 3 negative"):
        validate_examples(
            result.detect_eval,
            split="detect_eval",
            concepts=concepts,
            expected={"positive": 2, "negative": 3},
            source="verified eval",
        )

    # shortfall=keep_best fills each such row with its best failing candidate, counted.
    kept, _ = run(
        tmp_path, tokenizer, concepts, script, max_attempts=2, candidates=2, shortfall="keep_best"
    )
    assert per_category(kept)["negative"]["unverified"] == 3
    assert (
        kept.detect_eval.filter(pl.col("category") == "negative")["output"].to_list() == [LEAKY] * 3
    )


def test_no_verifier_keeps_every_first_answer(tmp_path, tokenizer, concepts):
    cache = CallCache(tmp_path / "calls.sqlite")
    script = {"positive": (OFF_TOPIC, ON_TOPIC), "negative": (LEAKY, NEUTRAL)}
    writer = ScriptedWriter(cache, tokenizer, script)
    pool = sources.load_instruction_pool()
    cfg = {**COUNTS, "max_attempts": 5, "candidates": 4}
    result = synthesize(concepts, pool, cfg, 7, writer=writer, target=writer, verifier=NoVerifier())
    positives = result.train.filter(pl.col("category") == "positive")["output"].to_list()
    assert positives == [OFF_TOPIC] * 2 and writer.batches == 2
