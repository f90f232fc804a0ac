"""AxBench's data synthesis protocol (AXBENCH.md §1.3–1.4), with any generator as the writer.

Per concept:
- **genre**: concepts without one get text/code/math from the writer (<NONE> means text);
- **train positives**: genre-matched *train* instructions, answered by the writer with the concept
  woven in;
- **train negatives**: the *target model's own* answers to each genre's train instructions, shared
  by every concept of that genre (concept_id -1, output concept "EEEEE");
- **eval positives**: *test* instructions of the concept's genre, answered with the concept;
- **eval negatives**: a 70/15/15 text/code/math draw of other test instructions, answered by the
  writer while avoiding the concept;
- **hard negatives** (polysemy): the writer lists words tied to the concept, gives another sense of
  each, checks that the sense shares nothing with the concept, and answers one more test
  instruction per surviving sense using the word in that sense (output concept "word//sense").

Writer responses are cut to `response_tokens` target-model tokens. Every step is one batched call
over all concepts, through the call cache, so a rerun makes no model calls and an added concept
generates only its own rows (and its genre's shared negatives if the genre is new).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from axflow import store
from axflow.calls import row_seed
from axflow.data import prompts
from axflow.data.generators import ChatRequest
from axflow.data.resample import shared_negative_check, write_verified
from axflow.data.sources import split_pool
from axflow.data.validate import SHARED_NEGATIVE_CONCEPT, SHARED_NEGATIVE_ID
from axflow.data.verify import NoVerifier, Verifier

# Genre mix of eval negatives, as in AxBench (26 text / 5 math / 5 code of 36).
EVAL_NEGATIVE_MIX = {"text": 0.70, "code": 0.15, "math": 0.15}
EXAMPLE_COLUMNS = [f.name for f in store.EXAMPLE_FIELDS]
# Token budgets of the short control replies (genre, word list, sense, distinctness check).
CONTROL_TOKENS = {"genre": 16, "words": 64, "sense": 40, "distinct": 96}


def negative_counts(total: int) -> dict[str, int]:
    """Split `total` eval negatives over genres by EVAL_NEGATIVE_MIX (text takes the rest)."""
    code = round(total * EVAL_NEGATIVE_MIX["code"])
    math_ = round(total * EVAL_NEGATIVE_MIX["math"])
    return {"text": total - code - math_, "code": code, "math": math_}


@dataclass
class Synthesis:
    """The synthesized tables plus what each polysemy step found, per concept."""

    concepts: pl.DataFrame
    train: pl.DataFrame
    detect_eval: pl.DataFrame
    polysemy: dict[int, dict[str, Any]] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)


class Truncator:
    """Cut text to at most `n` target-model tokens (and drop <FINAL>-style tags)."""

    def __init__(self, tokenizer, n: int) -> None:
        self.tok, self.n = tokenizer, n

    def __call__(self, text: str) -> str:
        text = prompts.strip_tags(text)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.n else self.tok.decode(ids[: self.n]).strip()


def synthesize(
    concepts: pl.DataFrame,
    pool: pl.DataFrame,
    cfg: dict[str, Any],
    seed: int,
    *,
    writer,
    target,
    overgenerate: float = 1.0,
    verifier: Verifier | None = None,
) -> Synthesis:
    """Run the protocol; `writer` and `target` are generators (data.generators).

    Every written positive, eval negative and hard negative is checked by `verifier`
    (axflow.data.verify; None: no check) and written again until it passes, for at most
    `dataset.max_attempts` rounds of `dataset.candidates` candidates each; rows that never pass
    are left out, so validate_examples names the concept and category that fell short.
    """
    n_tokens = int(cfg["response_tokens"])
    cut = Truncator(target.lm.tokenizer, n_tokens)
    budget = max(n_tokens, math.ceil(n_tokens * overgenerate))
    concepts = _resolve_genres(concepts, writer, seed)
    check_pool(pool, concepts, cfg)
    rows: list[dict[str, Any]] = []  # finished rows: split + example columns
    pending: list[tuple[dict[str, Any], ChatRequest]] = []  # rows waiting for the writer
    verifier = verifier or NoVerifier()

    def row(split, instruction, cid, concept, genre, category):
        return {
            "split": split,
            "input": instruction,
            "output_concept": concept,
            "concept_genre": genre,
            "category": category,
            "dataset_category": "instruction",
            "concept_id": cid,
        }

    def ask(r: dict[str, Any], user: str) -> None:
        s = row_seed(seed, r["split"], r["category"], r["output_concept"], r["input"])
        pending.append((r, ChatRequest(user, seed=s, max_tokens=budget)))

    # Shared training negatives: the target's own answers (at dataset.negative_temperature), per
    # genre in use.
    negatives = []
    for genre in sorted(set(concepts["genre"])):
        n = cfg["train_negative"]
        for ins in split_pool(pool, genre, "train", n, seed=row_seed(seed, "neg", genre)):
            negatives.append(
                row("train", ins, SHARED_NEGATIVE_ID, SHARED_NEGATIVE_CONCEPT, genre, "negative")
            )
    texts = target(
        [
            ChatRequest(
                r["input"],
                seed=row_seed(seed, "train", "negative", r["concept_genre"], r["input"]),
                max_tokens=n_tokens,
                temperature=cfg.get("negative_temperature", 0.0),
            )
            for r in negatives
        ]
    )
    rows += [{**r, "output": cut(t)} for r, t in zip(negatives, texts, strict=True)]

    used_eval: dict[int, set[str]] = {}
    for c in concepts.iter_rows(named=True):
        cid, concept, genre = c["concept_id"], c["concept"], c["genre"]

        def with_concept(ins: str, concept: str = concept) -> str:
            return prompts.WITH_CONCEPT.format(instruction=ins, concept=concept)

        n = cfg["train_positive"]
        for ins in split_pool(pool, genre, "train", n, seed=row_seed(seed, "pos", cid)):
            ask(row("train", ins, cid, concept, genre, "positive"), with_concept(ins))
        n = cfg["eval_positive"]
        pos_eval = split_pool(pool, genre, "test", n, seed=row_seed(seed, "epos", cid))
        for ins in pos_eval:
            ask(row("detect_eval", ins, cid, concept, genre, "positive"), with_concept(ins))
        used = set(pos_eval)
        for neg_genre, n in negative_counts(cfg["eval_negative"]).items():
            if n == 0:
                continue
            draw = split_pool(
                pool,
                neg_genre,
                "test",
                n,
                seed=row_seed(seed, "eneg", cid, neg_genre),
                exclude=used,
            )
            used.update(draw)
            for ins in draw:
                avoid = prompts.AVOID_CONCEPT.format(
                    instruction=ins,
                    concept=concept,
                )
                ask(row("detect_eval", ins, cid, concept, neg_genre, "negative"), avoid)
        used_eval[cid] = used

    polysemy = _contrast_senses(concepts, cfg.get("hard_negatives", 0), writer, seed)
    for c in concepts.iter_rows(named=True):
        cid, concept, genre = c["concept_id"], c["concept"], c["genre"]
        senses = polysemy[cid]["kept"]
        if not senses:
            continue
        draw = split_pool(
            pool,
            genre,
            "test",
            len(senses),
            seed=row_seed(seed, "hard", cid),
            exclude=used_eval[cid],
        )
        for (word, sense), ins in zip(senses, draw, strict=True):
            user = prompts.OTHER_SENSE_RESPONSE.format(
                instruction=ins,
                word=word,
                sense=sense,
                concept=concept,
            )
            ask(row("detect_eval", ins, cid, f"{word}//{sense}", genre, "hard negative"), user)

    names = dict(zip(concepts["concept_id"], concepts["concept"], strict=True))
    written, verification = write_verified(pending, names, writer, verifier, cut, cfg)
    rows += written
    verification["shared_negatives"] = shared_negative_check(rows, concepts, verifier)
    df = pl.DataFrame(rows, schema_overrides={"concept_id": pl.Int64})
    return Synthesis(
        concepts=concepts,
        train=df.filter(pl.col("split") == "train").select(EXAMPLE_COLUMNS),
        detect_eval=df.filter(pl.col("split") == "detect_eval").select(EXAMPLE_COLUMNS),
        polysemy=polysemy,
        verification=verification,
    )


def check_pool(pool: pl.DataFrame, concepts: pl.DataFrame, cfg: dict[str, Any]) -> None:
    """Fail before any generation if a genre/split of the pool is too small for the counts."""
    from axflow.data.validate import DataError

    genres = set(concepts["genre"])
    mix = negative_counts(cfg["eval_negative"])
    have = dict(((g, sp), n) for g, sp, n in pool.group_by("genre", "split").len().iter_rows())
    need: dict[tuple[str, str], int] = {}
    for g in genres:
        need[(g, "train")] = max(cfg["train_positive"], cfg["train_negative"])
    for g in prompts.GENRES:
        for own in genres:  # a concept of genre `own` draws mix[g] negatives of genre g
            n = mix[g] + (cfg["eval_positive"] + cfg.get("hard_negatives", 0) if g == own else 0)
            need[(g, "test")] = max(need.get((g, "test"), 0), n)
    short = [(k, n, have.get(k, 0)) for k, n in sorted(need.items()) if n > have.get(k, 0)]
    if short:
        lines = "; ".join(f"{g}/{sp}: {h} of {n}" for (g, sp), n, h in short)
        raise DataError(
            f"instruction pool (dataset.instructions): too few distinct instructions for the "
            f"configured counts ({lines} needed per concept); add instructions to the pool or "
            f"lower dataset.train_positive/train_negative/eval_positive/eval_negative/"
            f"hard_negatives."
        )


def _resolve_genres(concepts: pl.DataFrame, writer, seed: int) -> pl.DataFrame:
    """Ask the writer for the genre of every concept whose genre is "auto"."""
    auto = concepts.filter(pl.col("genre") == "auto")
    if auto.height == 0:
        return concepts
    replies = writer(
        [
            ChatRequest(
                prompts.GENRE.format(concept=c),
                seed=row_seed(seed, "genre", c),
                max_tokens=CONTROL_TOKENS["genre"],
                temperature=0.0,
            )
            for c in auto["concept"]
        ]
    )
    picked = dict(zip(auto["concept"], map(prompts.parse_genre, replies), strict=True))
    return concepts.with_columns(
        pl.when(pl.col("genre") == "auto")
        .then(pl.col("concept").replace_strict(picked, default=None))
        .otherwise(pl.col("genre"))
        .alias("genre")
    )


def _contrast_senses(
    concepts: pl.DataFrame, limit: int, writer, seed: int
) -> dict[int, dict[str, Any]]:
    """AxBench's polysemy steps: words -> other senses -> distinctness check, per concept.

    Returns {concept_id: {"words": [...], "senses": [(word, sense)], "kept": [(word, sense)]}}
    with at most `limit` kept senses per concept.
    """
    ids, names = concepts["concept_id"].to_list(), concepts["concept"].to_list()
    found: dict[int, dict[str, Any]] = {cid: {"words": [], "senses": [], "kept": []} for cid in ids}
    if limit <= 0:
        return found

    def req(step: str, user: str, *key: Any) -> ChatRequest:
        return ChatRequest(
            user, seed=row_seed(seed, step, *key), max_tokens=CONTROL_TOKENS[step], temperature=0.0
        )

    replies = writer(
        [req("words", prompts.RELATED_WORDS.format(concept=c, n=limit), c) for c in names]
    )
    pairs = []  # (cid, concept, word)
    for cid, concept, reply in zip(ids, names, replies, strict=True):
        found[cid]["words"] = prompts.parse_words(reply, limit)
        pairs += [(cid, concept, w) for w in found[cid]["words"]]
    replies = writer(
        [req("sense", prompts.OTHER_SENSE.format(word=w, concept=c), c, w) for _, c, w in pairs]
    )
    triples = []  # (cid, concept, word, sense)
    for (cid, concept, word), reply in zip(pairs, replies, strict=True):
        sense = prompts.parse_sense(reply)
        if sense is not None:
            found[cid]["senses"].append((word, sense))
            triples.append((cid, concept, word, sense))
    replies = writer(
        [
            req("distinct", prompts.DISTINCT.format(contrast=f"{w}: {s}", concept=c), c, w, s)
            for _, c, w, s in triples
        ]
    )
    for (cid, _, word, sense), reply in zip(triples, replies, strict=True):
        if prompts.parse_verdict(reply) and len(found[cid]["kept"]) < limit:
            found[cid]["kept"].append((word, sense))
    return found
