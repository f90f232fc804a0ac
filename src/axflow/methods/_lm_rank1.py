"""What the rank-1 methods that learn a vector w through the LM share.

ReFT-r1 (AxBench `LsReFT`) and SSV (`SteeringVector`) both add something along w to the output
of block `runtime.layer` at every token after the shared chat prefix and minimise the LM loss on
response tokens with every model weight frozen; they differ in the edit, an auxiliary loss term
and whether w is kept at unit norm. `train_vector` sets up w and its edit and trains it with the
loop every LM-trained method uses (`_lm_training.train_through_lm`). Registers nothing.

The model is trained in eval mode (no dropout) and in the dtype it was loaded in (fp32 by default;
AxBench trains in bf16). Shuffling draws from one seeded `torch.Generator`, so a seed fixes w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from axflow.lm.finetune import encode_examples, frozen
from axflow.lm.residual import edit_residual
from axflow.methods._lm_training import TrainConfig, response_loss, train_through_lm

# (h [B, T, d], w [d], positions [B, T] bool) -> (edited h, auxiliary loss, a scalar tensor)
Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Trained:
    w: torch.Tensor  # [d] float32 on the CPU, as left by the last step
    lm_loss: list[float]  # response cross-entropy of every step's batch, before its update
    aux_loss: list[float]  # the edit's auxiliary loss (unweighted) of every step


def train_vector(
    lm: Any,
    layer: int,
    examples: Sequence,
    cfg: TrainConfig,
    *,
    init: torch.Tensor,
    edit: Edit,
    generator: torch.Generator,
    aux_weight: Callable[[float], float] = lambda progress: 0.0,
    unit_norm: bool = False,
) -> Trained:
    """Train w (starting at `init`) through the frozen LM.

    `generator` (seeded by the caller) shuffles the examples every epoch.

    Each step: forward with `edit` hooked on block `layer`, loss = LM loss on response tokens +
    aux_weight(fraction of steps done) × the edit's auxiliary loss, backward (only from the
    hooked block up, as nothing below needs a gradient), clip, and with `unit_norm` AxBench's
    decoder constraint: w renormalised to unit norm and the gradient component parallel to w
    removed.
    """
    model = lm.model
    encoded = [
        row
        for row in encode_examples(lm, examples, max_length=cfg.max_length)
        if row[1] < len(row[0])  # a prompt longer than max_length leaves nothing to predict
    ]
    if not encoded:
        raise ValueError(
            f"no example keeps a response token within max_length={cfg.max_length}; raise it"
        )
    w = init.detach().to(device=lm.device, dtype=next(model.parameters()).dtype).clone()
    w.requires_grad_()
    positions: dict[str, torch.Tensor] = {}
    aux: dict[str, torch.Tensor] = {}

    def hook(h: torch.Tensor) -> torch.Tensor:
        edited, aux["loss"] = edit(h, w, positions["mask"])
        return edited

    def loss_of(batch, progress: float) -> dict[str, torch.Tensor]:
        positions["mask"] = batch.concept_positions.to(lm.device)
        lm_loss = response_loss(model, batch)
        return {
            "loss": lm_loss + aux_weight(progress) * aux["loss"],
            "lm": lm_loss,
            "aux": aux["loss"],
        }

    def project() -> None:
        with torch.no_grad():
            w.div_(w.norm() + torch.finfo(w.dtype).eps)
            w.grad -= (w.grad @ w) * w

    with frozen(model), edit_residual(lm.layers[layer], hook):
        history = train_through_lm(
            lm,
            encoded,
            [{"params": [w]}],
            cfg,
            order=generator,
            loss_of=loss_of,
            before_step=project if unit_norm else None,
        )
    return Trained(w.detach().float().cpu(), history["lm"], history["aux"])


def relu_scores(params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
    """AxBench's detection latent for both methods: ReLU(h·w) per token."""
    proj = np.asarray(acts, dtype=np.float32) @ params["direction"].astype(np.float32)
    return np.maximum(proj, 0.0)


def require_layer(runtime: Any, method: str) -> int:
    """The block whose output is edited; LM-trained methods cannot guess it."""
    if runtime.layer is None:
        raise ValueError(f"method {method}: the runtime names no layer (Runtime(layer=...))")
    return int(runtime.layer)
