"""DiffMean: the difference between the mean positive-token and mean negative-token activation.

AxBench §2.1: w = mean(acts of every token of positive examples) − mean(acts of every token of
negative examples), unit-normalised; a token's score is h·w. Closed form, so no hyper-parameters
(AxBench's batch size and epoch count only feed its data loader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Method, TokenBatch, register


@dataclass
class DiffMeanConfig:
    """DiffMean has no hyper-parameters."""


@register("diffmean")
class DiffMean(Method):
    Config = DiffMeanConfig

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        acts = np.asarray(data.acts, dtype=np.float64)
        positive = data.label == 1
        if positive.all() or not positive.any():
            raise ValueError(
                f"diffmean for concept {concept!r}: training tokens need both positive and "
                "negative examples"
            )
        diff = acts[positive].mean(axis=0) - acts[~positive].mean(axis=0)
        direction = diff / max(float(np.linalg.norm(diff)), 1e-12)
        return {"direction": direction.astype(np.float32), "bias": np.zeros((), np.float32)}
