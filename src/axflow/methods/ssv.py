"""SSV: a supervised steering vector trained through the LM (AxBench `SteeringVector`).

AxBench §2.1: h ← h + w at every token after the shared chat prefix of block `layer`'s output;
loss = LM cross-entropy on the response tokens of the concept's positives only (negatives are not
used). w starts as the constant vector 0.01 and is never normalised. AdamW, linear decay, no
warm-up, no gradient clipping. Detection: ReLU(h·w) per token.

Steering: AxBench adds factor × maxact × w with the *trained* w, not a unit vector, so its length
is part of the method; `steering_vector` returns w as is (overriding the unit-norm default).
`maxact` comes from ReLU(h·w) with the same w, so the added norm scales with |w|².

Departures: the model trains in fp32 (AxBench: bf16); examples are cut to `max_length` tokens in
all (AxBench cuts responses at 128 tokens and keeps the whole instruction). The seed only orders
the batches (the init is a constant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from axflow.lm.models import hidden_size
from axflow.methods import Method, TokenBatch, register
from axflow.methods._lm_rank1 import relu_scores, require_layer, train_vector
from axflow.methods._lm_training import TrainConfig


@dataclass
class SSVConfig(TrainConfig):
    method_name: ClassVar[str] = "ssv"
    init: float  # every entry of w before training (AxBench fills the weight with 0.01)

    def __post_init__(self) -> None:
        super().__post_init__()


@register("ssv")
class SSV(Method):
    Config = SSVConfig
    trains_on_negatives = False  # LM loss on the positives only

    # Per-step LM loss (response cross-entropy, before each update) of the last `fit`.
    loss_history: list[float]

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        positives = [ex for ex in data.examples if ex.label == 1]
        if not positives:
            raise ValueError(
                f"ssv for concept {concept!r}: no positive examples as text (TokenBatch.examples)"
            )
        layer = require_layer(self.runtime, "ssv")
        lm = self.runtime.lm

        def edit(h: torch.Tensor, w: torch.Tensor, pos: torch.Tensor):
            return h + pos[..., None].to(h.dtype) * w.to(h.dtype), h.new_zeros(())

        trained = train_vector(
            lm,
            layer,
            positives,
            self.cfg,
            init=torch.full((hidden_size(lm.model),), float(self.cfg.init)),
            edit=edit,
            generator=torch.Generator().manual_seed(seed),
        )
        self.loss_history = trained.lm_loss
        return {"direction": trained.w.numpy().astype(np.float32), "bias": np.zeros((), np.float32)}

    def token_scores(self, params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
        return relu_scores(params, acts)

    def steering_vector(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """The trained w itself: AxBench steers SSV with the unnormalised vector."""
        return np.asarray(params["direction"], dtype=np.float32)
