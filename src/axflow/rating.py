"""What a judge rates and what it returns, shared by the judges and by whoever asks them (the
judge stage, the data verifier) without depending on any judge backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeItem:
    """One generation to rate, with the concept it was steered towards and its instruction."""

    concept: str
    instruction: str
    generation: str


@dataclass(frozen=True)
class Rating:
    """Scores of one generation; a sub-score the judge could not produce is None, never 0."""

    concept_score: float | None
    instruction_score: float | None
    fluency_score: float | None
    perplexity: float | None = None
    failures: int = 0  # how many of the three sub-scores could not be obtained

    @property
    def overall(self) -> float | None:
        """AxBench's overall score (harmonic mean), or None if any sub-score is missing."""
        scores = (self.concept_score, self.instruction_score, self.fluency_score)
        if any(s is None for s in scores):
            return None
        return harmonic_mean(scores)  # type: ignore[arg-type]


def harmonic_mean(scores: Sequence[float]) -> float:
    """AxBench's overall score: 0 if any score is 0, else n / sum(1/s)."""
    if len(scores) == 0:
        raise ValueError("harmonic_mean needs at least one score")
    if any(s is None or math.isnan(s) for s in scores):
        raise ValueError(f"harmonic_mean got a missing score in {list(scores)}; drop the item")
    if any(s < 0 for s in scores):
        raise ValueError(f"harmonic_mean needs non-negative scores, got {list(scores)}")
    if any(s == 0 for s in scores):
        return 0.0
    return len(scores) / sum(1.0 / s for s in scores)
