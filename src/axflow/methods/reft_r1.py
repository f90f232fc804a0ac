"""ReFT-r1: a rank-1 latent trained through the LM to both detect and steer (AxBench `LsReFT`).

AxBench §2.1: at every token i after the shared chat prefix, a_i = ReLU(h_i·w) on the output of
block `layer`. During training h_i ← h_i + mean(top-k of a over the sequence)·w at those same
positions (k = 8). Loss = LM cross-entropy on response tokens + λ_t · (masked mean over positions
of the non-top-k latents, then batch mean), λ_t = (step / total_steps) · l1_coeff. Trained on the
positives and their genre's negatives (in AxBench the negatives are the target model's own
answers, which need no steering, so they teach a small latent). Before each optimiser step:
grad-norm clip, w renormalised to unit norm, gradient component parallel to w removed. AdamW,
linear decay, no warm-up.
Detection: ReLU(h·w) per token (top-k = 1 at inference is the plain latent). Steering: add w.

Departures: the model trains in fp32 (AxBench: bf16); examples are cut to `max_length` tokens in
all (AxBench cuts responses at 128 tokens and keeps the whole instruction); w starts from
`nn.Linear`'s default init drawn from the seeded generator; the returned w is renormalised after
the last step (AxBench keeps the last, at most lr_min-sized, off-sphere update).

Measured on Concept10 layer 10 with SmolLM2-135M (held-out AUROC, 16 + 16 examples, 3 epochs,
seed 42): concepts 0-3 reach 0.919 / 0.981 / 0.924 / 0.877 with max_length 128, but only
0.38 / 0.93 / 0.60 / 0.45 with max_length 64, where a median response keeps ~20 tokens and w
barely turns from its random start (cosine to it 0.6 at 128 tokens, 0.7-0.85 at 64). Keep
max_length large enough for the responses.
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
class ReftR1Config(TrainConfig):
    method_name: ClassVar[str] = "reft_r1"
    topk: int  # latents averaged into the training-time steering magnitude
    l1_coeff: float  # final weight of the non-top-k latent penalty (warmed up linearly)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topk < 1:
            raise ValueError(f"method reft_r1: topk={self.topk} must be ≥ 1")
        if self.l1_coeff < 0:
            raise ValueError(f"method reft_r1: l1_coeff={self.l1_coeff} must be ≥ 0")


@register("reft_r1")
class ReftR1(Method):
    Config = ReftR1Config

    # Per-step LM loss (response cross-entropy, before each update) of the last `fit`.
    loss_history: list[float]
    penalty_history: list[float]  # masked mean of the non-top-k latents, per step

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        labels = {ex.label for ex in data.examples}
        if labels != {0, 1}:
            raise ValueError(
                f"reft_r1 for concept {concept!r}: needs positive and negative examples as text "
                f"(TokenBatch.examples), got labels {sorted(labels)}"
            )
        layer = require_layer(self.runtime, "reft_r1")
        lm = self.runtime.lm
        d = hidden_size(lm.model)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / d**0.5  # nn.Linear(d, 1)'s default init
        init = (torch.rand(d, generator=gen) * 2 - 1) * bound
        topk = cfg.topk

        def edit(h: torch.Tensor, w: torch.Tensor, pos: torch.Tensor):
            latent = torch.relu(h @ w.to(h.dtype)) * pos  # [B, T]; 0 outside the positions
            top, idx = latent.topk(min(topk, latent.shape[1]), dim=-1)
            magnitude = top.mean(dim=-1)  # [B]
            edited = h + (pos[..., None] * magnitude[:, None, None]) * w.to(h.dtype)
            rest = latent.scatter(-1, idx, 0.0)
            penalty = (rest.sum(-1) / pos.sum(-1).clamp_min(1)).mean()
            return edited, penalty

        trained = train_vector(
            lm,
            layer,
            data.examples,
            cfg,
            init=init,
            edit=edit,
            generator=gen,
            aux_weight=lambda progress: progress * cfg.l1_coeff,
            unit_norm=True,
        )
        self.loss_history, self.penalty_history = trained.lm_loss, trained.aux_loss
        w = trained.w
        direction = (w / w.norm().clamp_min(1e-12)).numpy().astype(np.float32)
        return {"direction": direction, "bias": np.zeros((), np.float32)}

    def token_scores(self, params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
        return relu_scores(params, acts)
