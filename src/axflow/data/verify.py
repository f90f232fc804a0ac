"""Verified synthesis: an independent check of every written example before it enters the dataset.

AxBench trusts its writer (gpt-4o-mini). The default writer here is the 135M target model, which
often ignores the concept it was asked to weave in, so every written example is checked
(`dataset.verifier`), and one that fails is written again (axflow.data.synthesize):

- a **positive** must carry its concept, and not by quoting the concept description word for
  word (the 135M writer sometimes echoes its prompt, which MiniLM scores as on-topic);
- a **negative** (the eval negatives, written avoiding the concept) must not;
- a **hard negative** must not carry the concept, must use its word, and must carry the word's
  other sense (the "word//sense" in its output_concept).

The shared training negatives (the target model's own greedy answers, one pool per genre) are not
resampled: they are shared by every concept of the genre and greedy, so a new attempt would give
the same text. How many of them look like each concept is reported instead.

Verifiers:

- `embedded` (default): cosine similarity of MiniLM (all-MiniLM-L6-v2, the embedded judge's
  embedder and its code: axflow.lm.similarity.minilm_similarities) between the output and the
  concept description. `dataset.verify_thresholds: [absent, present]`: a positive needs a
  similarity >= present; a negative or hard negative needs < absent to the concept; a hard
  negative needs >= absent to "word: sense". Calibrated like the judge's concept thresholds
  (bench/calibrate_verifier.py, AxBench Concept10 2B-L10, gpt-4o-mini outputs):

  ===================================  =====  =====  =====  =====
  similarity to the concept            p25    p50    p75    share passing [0.10, 0.15]
  ===================================  =====  =====  =====  =====
  train positives (own concept)        0.11   0.19   0.31   0.63 (>= 0.15)
  eval positives (own concept)         0.10   0.20   0.32   0.64 (>= 0.15)
  train negatives x each concept       -0.02  0.02   0.07   0.92 (< 0.15 as a positive: 0.08)
  eval negatives (own concept)         -0.03  0.01   0.06   0.87 (< 0.10)
  eval hard negatives (own concept)    0.04   0.09   0.14   0.62 (< 0.10)
  eval hard negatives vs "word: sense" 0.06   0.13   0.25   0.62 (>= 0.10)
  ===================================  =====  =====  =====  =====

  absent = 0.10 is the embedded judge's concept-score-1 threshold (a negative would score 0 on
  its concept scale); present = 0.15 lets 8 % of unrelated answers pass as a positive (0.10: 17 %,
  0.20: 3 %) while keeping 63 % of gpt-4o-mini's positives.
- `judge`: the configured judge's concept score (its concept rubric; for an LLM judge AxBench's
  concept prompt): a positive needs >= 1, a negative or hard negative 0, a hard negative's sense
  >= 1. The judge's other two scores are computed too (its `rate` gives all three) and ignored.
- `none`: everything passes (AxBench: the writer is trusted), one attempt.

**Circularity.** The embedded verifier and the embedded judge's concept score are the same MiniLM
similarity. Positives are selected for high similarity to the concept text and negatives for low,
so the training data a steering direction is fitted on is, by construction, data that MiniLM
finds close to the concept, and the embedded judge then rewards generations MiniLM finds close to
the concept. That can favour methods fitted on the data (DiffMean, probe, PCA, LAT, ...) over the
prompt baseline, which never sees it. Detection AUROC is not scored by MiniLM (it is the
method's own score on the target model's activations), but the eval rows it is computed on are
selected by MiniLM too, so detection is measured on examples MiniLM separates. Use
`dataset.verifier=judge` with an LLM judge, or `verifier=none`, to take MiniLM out of the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from axflow.calls import CallCache
from axflow.rating import JudgeItem

VERIFIERS = ("embedded", "judge", "none")
DEFAULT_THRESHOLDS = (0.10, 0.15)  # [absent, present]


@dataclass(frozen=True)
class Check:
    """One written example to verify; `contrast` is a hard negative's "word//sense"."""

    category: str  # positive | negative | hard negative
    concept: str
    instruction: str
    output: str
    contrast: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether the example passes, and a score to pick the best of several that pass."""

    ok: bool
    score: float
    concept_similarity: float | None = None  # the measurement behind the verdict, for reports


class Verifier(Protocol):
    name: str

    def __call__(self, checks: Sequence[Check]) -> list[Verdict]: ...


def split_contrast(contrast: str) -> tuple[str, str]:
    word, _, sense = contrast.partition("//")
    return word, sense


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def copies_concept(concept: str, text: str) -> bool:
    """True when `text` contains the concept description word for word: a small writer that
    echoes its prompt ("clearly bring in this topic: <concept>") has not woven the concept in."""
    return _norm(concept) in _norm(text)


def uses_word(word: str, text: str) -> bool:
    """True when `word` occurs in `text` as a whole word (any case, plural/suffix allowed)."""
    return bool(re.search(rf"\b{re.escape(word)}", text, re.IGNORECASE))


class NoVerifier:
    """Everything passes (AxBench trusts its writer)."""

    name = "none"

    def __call__(self, checks: Sequence[Check]) -> list[Verdict]:
        return [Verdict(True, 0.0) for _ in checks]


class EmbeddedVerifier:
    """MiniLM similarity to the concept (and to a hard negative's sense), through the call cache."""

    name = "embedded"

    def __init__(
        self, cache: CallCache, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, batch_size=32
    ) -> None:
        if len(thresholds) != 2 or not thresholds[0] <= thresholds[1]:
            raise ValueError(
                "dataset.verify_thresholds must be two numbers [absent, present] with "
                f"absent <= present, got {list(thresholds)}"
            )
        self.absent, self.present = (float(t) for t in thresholds)
        self.cache, self.batch_size = cache, batch_size

    def _similarity(self, items: list[JudgeItem]) -> list[float]:
        from axflow.lm.similarity import minilm_similarities

        return [c for c, _ in minilm_similarities(items, self.cache, batch_size=self.batch_size)]

    def __call__(self, checks: Sequence[Check]) -> list[Verdict]:
        items = [JudgeItem(c.concept, c.instruction, c.output) for c in checks]
        hard = [k for k, c in enumerate(checks) if c.category == "hard negative"]
        senses = [
            JudgeItem(
                ": ".join(split_contrast(checks[k].contrast or "")),
                items[k].instruction,
                items[k].generation,
            )
            for k in hard
        ]
        sims = self._similarity(items + senses)
        sense_sim = dict(zip(hard, sims[len(items) :], strict=True))
        out = []
        for k, (c, sim) in enumerate(zip(checks, sims, strict=False)):
            if not c.output.strip():
                out.append(Verdict(False, -1.0, sim))
            elif c.category == "positive":
                ok = sim >= self.present and not copies_concept(c.concept, c.output)
                out.append(Verdict(ok, sim, sim))
            elif c.category == "negative":
                out.append(Verdict(sim < self.absent, -sim, sim))
            else:
                word, _ = split_contrast(c.contrast or "")
                ok = sim < self.absent and sense_sim[k] >= self.absent and uses_word(word, c.output)
                out.append(Verdict(ok, sense_sim[k] - sim, sim))
        return out


class JudgeVerifier:
    """The configured judge's concept score (0/1/2): positives >= 1, negatives 0."""

    name = "judge"

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    def __call__(self, checks: Sequence[Check]) -> list[Verdict]:
        items = [JudgeItem(c.concept, c.instruction, c.output) for c in checks]
        hard = [k for k, c in enumerate(checks) if c.category == "hard negative"]
        items += [
            JudgeItem(
                ": ".join(split_contrast(checks[k].contrast or "")),
                items[k].instruction,
                items[k].generation,
            )
            for k in hard
        ]
        scores = [r.concept_score for r in self.judge.rate(items)]
        sense = dict(zip(hard, scores[len(checks) :], strict=True))
        out = []
        for k, c in enumerate(checks):
            s = scores[k]
            if s is None or not c.output.strip():  # unparseable: not verified
                out.append(Verdict(False, -1.0))
            elif c.category == "positive":
                out.append(Verdict(s >= 1 and not copies_concept(c.concept, c.output), s))
            elif c.category == "negative":
                out.append(Verdict(s == 0, -s))
            else:
                t = sense[k]
                word, _ = split_contrast(c.contrast or "")
                ok = s == 0 and t is not None and t >= 1 and uses_word(word, c.output)
                out.append(Verdict(ok, (t or 0.0) - s))
        return out


def build_verifier(
    dataset: dict[str, Any], *, cache: CallCache, judge: Callable[[], Any] | None = None
) -> Verifier:
    """The verifier named by `dataset.verifier` (default embedded); `judge()` builds the run's
    judge for `verifier=judge` (the data stage passes it, so this package needs no judge)."""
    name = dataset.get("verifier", "embedded")
    if name == "none":
        return NoVerifier()
    if name == "embedded":
        return EmbeddedVerifier(cache, dataset.get("verify_thresholds", DEFAULT_THRESHOLDS))
    if name == "judge":
        if judge is None:
            raise ValueError(
                "dataset.verifier=judge needs the run's judge config; none was given to the data "
                "stage"
            )
        return JudgeVerifier(judge())
    raise ValueError(f"dataset.verifier is {name!r}; use one of {list(VERIFIERS)}")
