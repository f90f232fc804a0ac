"""BoW: bag-of-words logistic regression, a detection-only baseline that never sees the model.

AxBench §2.3: scikit-learn `CountVectorizer` (default tokenisation, lowercase) and
`LogisticRegression` (l2, C = 100, lbfgs, max_iter 1000) on the binarised training texts; a
sequence's score is P(positive). Departure: words are counted with `HashingVectorizer`
(the same tokenisation, 2^16 buckets, raw counts) so the fitted model is two plain arrays that the
train stage can stack over concepts; collisions among the few thousand words of a concept's data
are rare. The chat template is the same on every example, so the text is instruction + response.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Example, Method, TokenBatch, register


@dataclass
class BowConfig:
    C: float  # inverse L2 strength (AxBench's best of its grid)
    max_iter: int
    n_features: int  # hashing buckets

    def __post_init__(self) -> None:
        if self.C <= 0 or self.max_iter < 1 or self.n_features < 2:
            raise ValueError(
                f"method bow: C={self.C} must be > 0, max_iter={self.max_iter} ≥ 1 and "
                f"n_features={self.n_features} ≥ 2"
            )


def _text(ex: Example) -> str:
    return f"{ex.instruction}\n{ex.response}"


@register("bow")
class BagOfWords(Method):
    Config = BowConfig
    detect_level = "sequence"
    steering = None
    reads_activations = False

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(
            n_features=self.cfg.n_features, alternate_sign=False, norm=None, lowercase=True
        )

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        from sklearn.linear_model import LogisticRegression

        labels = np.array([ex.label for ex in data.examples])
        if labels.min() == labels.max():
            raise ValueError(f"bow for concept {concept!r}: need positive and negative examples")
        X = self._vectorizer().transform([_text(ex) for ex in data.examples])
        clf = LogisticRegression(C=self.cfg.C, max_iter=self.cfg.max_iter, random_state=seed)
        clf.fit(X, labels)
        return {
            "coef": clf.coef_[0].astype(np.float32),
            "intercept": np.asarray(clf.intercept_[0], np.float32),
        }

    def sequence_scores(
        self, params: dict[str, np.ndarray], examples: list[Example], *, concept: str
    ) -> np.ndarray:
        X = self._vectorizer().transform([_text(ex) for ex in examples])
        logits = X @ params["coef"].astype(np.float64) + float(params["intercept"])
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
