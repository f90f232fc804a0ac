"""AxBench-style dataset synthesis with the target model as the generator (AXBENCH.md §1.3–1.4).

Per concept: positives answer genre-matched *train* instructions while weaving in the concept;
training negatives are the target model's own answers, shared per genre (concept_id -1, output
concept "EEEEE"); detection eval has positives on *test* instructions and per-concept negatives
on a genre-balanced draw of test instructions. Responses are capped at `response_tokens`
target-model tokens. Every generation goes through the persistent call cache, keyed by model,
sampling parameters, seed and prompt, so a rerun or an added concept only generates what is new.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from axflow.data.sources import split_pool
from axflow.judge.cache import CallCache
from axflow.lm.generate import GenerationRequest, generate
from axflow.lm.models import LoadedModel
from axflow.lm.prompts import format_prompt

NEGATIVE_CONCEPT = "EEEEE"
GENRES = ("text", "code", "math")
# Genre mix of eval negatives, as in AxBench (26 text / 5 math / 5 code of 36).
EVAL_NEGATIVE_MIX = {"text": 0.70, "code": 0.15, "math": 0.15}

WITH_CONCEPT = (
    "{instruction}\n\nIn your answer, clearly bring in this topic: {concept}. "
    "Mention it several times."
)


def row_seed(seed: int, *parts: Any) -> int:
    """A stable per-row seed from the run seed and the row's identity."""
    blob = "\x1f".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def negative_counts(total: int) -> dict[str, int]:
    """Split `total` eval negatives over genres by EVAL_NEGATIVE_MIX (text takes the rest)."""
    code = round(total * EVAL_NEGATIVE_MIX["code"])
    math = round(total * EVAL_NEGATIVE_MIX["math"])
    return {"text": total - code - math, "code": code, "math": math}


class CachedGenerator:
    """Target-model generation through the call cache; only cache misses reach the model."""

    def __init__(self, lm: LoadedModel, model_id: str, cfg: dict, max_new_tokens: int, cache):
        self.lm, self.model_id, self.cache = lm, model_id, cache
        self.params = {
            "temperature": cfg["temperature"],
            "max_new_tokens": max_new_tokens,
            "engine": "hf",
        }
        self.batch_size = cfg["batch_size"]
        self.calls = 0

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[str]:
        keyed = [(p, {**self.params, "seed": s}) for p, s in zip(prompts, seeds, strict=True)]
        out = [self.cache.get(self.model_id, params, p) for p, params in keyed]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            texts = generate(
                self.lm,
                [GenerationRequest(prompts[i], seed=seeds[i]) for i in todo],
                layer=None,
                max_new_tokens=self.params["max_new_tokens"],
                temperature=self.params["temperature"],
                batch_size=self.batch_size,
            )
            self.calls += len(todo)
            for i, text in zip(todo, texts, strict=True):
                self.cache.put(self.model_id, keyed[i][1], keyed[i][0], text)
                out[i] = text
        return out


def synthesize(
    concepts: pl.DataFrame,
    pool: pl.DataFrame,
    cfg: dict[str, Any],
    seed: int,
    gen: CachedGenerator,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (train, detect_eval) example tables in the store's "examples" schema."""
    tok, chat = gen.lm.tokenizer, gen.lm.chat
    jobs: list[dict[str, Any]] = []  # one dict per row to generate

    def add(split, instruction, concept_row, category, genre, with_concept):
        concept = concept_row["concept"] if concept_row is not None else NEGATIVE_CONCEPT
        user = (
            WITH_CONCEPT.format(instruction=instruction, concept=concept)
            if with_concept
            else instruction
        )
        jobs.append(
            {
                "split": split,
                "input": instruction,
                "output_concept": concept,
                "concept_genre": genre,
                "category": category,
                "concept_id": concept_row["concept_id"] if concept_row is not None else -1,
                "prompt": format_prompt(tok, user, chat),
                "seed": row_seed(seed, split, category, concept, instruction),
            }
        )

    used_genres = sorted(set(concepts["genre"]))
    for genre in used_genres:
        for ins in split_pool(
            pool, genre, "train", cfg["train_negative"], seed=row_seed(seed, "neg", genre)
        ):
            add("train", ins, None, "negative", genre, with_concept=False)
    for row in concepts.iter_rows(named=True):
        cid, genre = row["concept_id"], row["genre"]
        pos_train = split_pool(
            pool, genre, "train", cfg["train_positive"], seed=row_seed(seed, "pos", cid)
        )
        for ins in pos_train:
            add("train", ins, row, "positive", genre, with_concept=True)
        pos_eval = split_pool(
            pool, genre, "test", cfg["eval_positive"], seed=row_seed(seed, "epos", cid)
        )
        for ins in pos_eval:
            add("detect_eval", ins, row, "positive", genre, with_concept=True)
        for neg_genre, n in negative_counts(cfg["eval_negative"]).items():
            if n == 0:
                continue
            for ins in split_pool(
                pool,
                neg_genre,
                "test",
                n,
                seed=row_seed(seed, "eneg", cid, neg_genre),
                exclude=pos_eval,
            ):
                add("detect_eval", ins, row, "negative", neg_genre, with_concept=False)

    outputs = gen([j["prompt"] for j in jobs], [j["seed"] for j in jobs])
    rows = [
        {
            **{
                k: j[k]
                for k in (
                    "split",
                    "input",
                    "output_concept",
                    "concept_genre",
                    "category",
                    "concept_id",
                )
            },
            "output": out,
            "dataset_category": "instruction",
        }
        for j, out in zip(jobs, outputs, strict=True)
    ]
    df = pl.DataFrame(rows)
    columns = [
        "input",
        "output",
        "output_concept",
        "concept_genre",
        "category",
        "dataset_category",
        "concept_id",
    ]
    train = df.filter(pl.col("split") == "train").select(columns)
    detect_eval = df.filter(pl.col("split") == "detect_eval").select(columns)
    return train, detect_eval


def open_cache(cache_dir: str) -> CallCache:
    from pathlib import Path

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return CallCache(Path(cache_dir) / "calls.sqlite")
