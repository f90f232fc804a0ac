"""Which rows train a concept (AxBench): its own positives plus the shared negatives of its genre.

Negatives are written once per genre (concept id -1) and shared by every concept of that genre,
so a concept's detector learns its concept against the genre's ordinary text, never against
another concept's positives.
"""

from __future__ import annotations

import numpy as np

SHARED_NEGATIVE_ID = -1


def concept_rows(
    concept_ids: np.ndarray, categories: np.ndarray, genres: np.ndarray, cid: int, genre: str
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of concept `cid`'s training set, which of them are positives).

    The arrays describe the training rows (or tokens, one entry per token): their concept id,
    category and genre.
    """
    concept_ids, categories, genres = map(np.asarray, (concept_ids, categories, genres))
    positive = (concept_ids == cid) & (categories == "positive")
    shared = (concept_ids == SHARED_NEGATIVE_ID) & (genres == genre)
    rows = np.flatnonzero(positive | shared)
    return rows, positive[rows]
