"""Which rows train a concept: its own positives plus shared negatives.

Negatives are written once per genre (concept id -1), so a concept's detector learns its concept
against ordinary text, never against another concept's positives. AxBench trains a concept
against its own genre's negatives only (`training.negatives=genre`); its eval negatives, though,
mix genres (~70/15/15 text/code/math), so by default (`all`) a concept trains against every
genre's: a direction fitted against math answers alone need not rank a poem below a positive.
"""

from __future__ import annotations

import numpy as np

SHARED_NEGATIVE_ID = -1


NEGATIVES = ("all", "genre")


def concept_rows(
    concept_ids: np.ndarray,
    categories: np.ndarray,
    genres: np.ndarray,
    cid: int,
    genre: str,
    negatives: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of concept `cid`'s training set, which of them are positives).

    The arrays describe the training rows (or tokens, one entry per token): their concept id,
    category and genre. `negatives`: "all" shared negatives, or those of the concept's "genre".
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"training.negatives={negatives!r}: use one of {', '.join(NEGATIVES)}")
    concept_ids, categories, genres = map(np.asarray, (concept_ids, categories, genres))
    positive = (concept_ids == cid) & (categories == "positive")
    shared = concept_ids == SHARED_NEGATIVE_ID
    if negatives == "genre":
        shared &= genres == genre
    rows = np.flatnonzero(positive | shared)
    return rows, positive[rows]
