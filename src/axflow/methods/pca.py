"""PCA: the first principal component of the positive examples' token activations.

AxBench §2.1: sklearn PCA (centred) on the activations of every token of the positive examples;
a token's score is h·w with w the unit-norm first component.

Deviation from AxBench: a principal component's sign is arbitrary, and AxBench keeps whatever
sign the SVD returns, so a concept can score below 0.5 AUROC purely by sign. With `orient_sign`
(default) w is flipped when needed so that the mean positive token projects higher than the mean
negative token on the training data; set `orient_sign: false` to reproduce AxBench exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Method, TokenBatch, orient_to_positives, register


@dataclass
class PCAConfig:
    orient_sign: bool  # flip w so positives project above negatives (not in AxBench)


@register("pca")
class PCA(Method):
    Config = PCAConfig

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        positive = data.label == 1
        if positive.sum() < 2:
            raise ValueError(f"pca for concept {concept!r}: needs at least 2 positive tokens")
        acts = np.asarray(data.acts, dtype=np.float64)
        from sklearn.decomposition import PCA as SklearnPCA

        pca = SklearnPCA(n_components=1, svd_solver="covariance_eigh", random_state=seed)
        direction = pca.fit(acts[positive]).components_[0]
        direction /= max(float(np.linalg.norm(direction)), 1e-12)
        if self.cfg.orient_sign:
            direction = orient_to_positives(direction, acts, positive)
        return {"direction": direction.astype(np.float32), "bias": np.zeros((), np.float32)}
