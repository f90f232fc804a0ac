"""LAT (linear artificial tomography): first principal component of paired positive differences.

AxBench §2.1: shuffle the positive examples' token activations, pair the first half with the
second half, unit-normalise each difference, and take the first principal component (sklearn,
centred) of those differences; a token's score is h·w. The shuffle uses the fit seed.

Deviation from AxBench: as for PCA, the component's sign is arbitrary; with `orient_sign`
(default) w is flipped when needed so that the mean positive token projects higher than the mean
negative token on the training data. `orient_sign: false` reproduces AxBench.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Method, TokenBatch, orient_to_positives, register


@dataclass
class LATConfig:
    orient_sign: bool  # flip w so positives project above negatives (not in AxBench)


@register("lat")
class LAT(Method):
    Config = LATConfig

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        positive = data.label == 1
        if positive.sum() < 4:
            raise ValueError(f"lat for concept {concept!r}: needs at least 4 positive tokens")
        acts = np.asarray(data.acts, dtype=np.float64)
        pos = acts[positive]
        order = np.random.default_rng(seed).permutation(len(pos))
        half = len(pos) // 2
        diffs = pos[order[:half]] - pos[order[half : 2 * half]]
        diffs /= np.maximum(np.linalg.norm(diffs, axis=1, keepdims=True), 1e-12)
        from sklearn.decomposition import PCA as SklearnPCA

        pca = SklearnPCA(n_components=1, svd_solver="covariance_eigh", random_state=seed)
        direction = pca.fit(diffs).components_[0]
        direction /= max(float(np.linalg.norm(direction)), 1e-12)
        if self.cfg.orient_sign:
            direction = orient_to_positives(direction, acts, positive)
        return {"direction": direction.astype(np.float32), "bias": np.zeros((), np.float32)}
