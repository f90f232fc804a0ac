"""Random direction: a seeded random unit vector per concept, the floor of every table.

AxBench §2.5 (`Random`, not in the paper's tables): the direction ignores the data, so its
detection AUROC sits near 0.5 and its steering score shows what adding an arbitrary vector of the
same strength does. Scored and steered like any rank-1 method (h·w, factor × max act × w).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from axflow.methods import Method, TokenBatch, register


@dataclass
class RandomConfig:
    """No hyper-parameters: the direction depends only on the seed and the concept."""


@register("random")
class RandomDirection(Method):
    Config = RandomConfig
    trains_on_negatives = False  # drawn from the seed and the concept alone

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        digest = hashlib.sha256(f"{seed}\x00{concept}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        v = rng.standard_normal(data.acts.shape[1])
        return {"direction": (v / np.linalg.norm(v)).astype(np.float32)}
