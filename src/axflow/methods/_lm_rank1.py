"""The training loop shared by the rank-1 methods that learn a vector w through the LM.

ReFT-r1 (AxBench `LsReFT`) and SSV (`SteeringVector`) both add something along w to the output
of block `runtime.layer` at every token after the shared chat prefix and minimise the LM loss on
response tokens with every model weight frozen; they differ in the edit, an auxiliary loss term
and whether w is kept at unit norm. This module registers nothing: it holds the loop, the shared
config fields and their validation.

The model is trained in eval mode (no dropout) and in the dtype it was loaded in (fp32 by default;
AxBench trains in bf16). Shuffling draws from one seeded `torch.Generator`, so a seed fixes w.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from axflow.lm.finetune import encode_examples, frozen, linear_decay, lm_batches
from axflow.lm.residual import edit_residual

# (h [B, T, d], w [d], positions [B, T] bool) -> (edited h, auxiliary loss, a scalar tensor)
Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LMTrainConfig:
    """Optimiser settings every LM-trained rank-1 method shares (AxBench's 2B values)."""

    lr: float  # AdamW, decays linearly to 0, no warm-up
    epochs: int
    batch_size: int  # examples per step
    max_length: int  # tokens kept per templated example (prefix + instruction + response)
    weight_decay: float
    grad_clip: float  # max gradient norm of w before each step; 0 = no clipping

    def _check(self, method: str) -> None:
        """Reject impossible values, naming the key (called by each subclass's __post_init__)."""
        for key in ("epochs", "batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"method {method}: {key}={getattr(self, key)} must be ≥ 1")
        if self.lr <= 0:
            raise ValueError(f"method {method}: lr={self.lr} must be > 0")
        for key in ("weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ValueError(f"method {method}: {key}={getattr(self, key)} must be ≥ 0")


@dataclass
class Trained:
    w: torch.Tensor  # [d] float32 on the CPU, as left by the last step
    lm_loss: list[float]  # response cross-entropy of every step's batch, before its update
    aux_loss: list[float]  # the edit's auxiliary loss (unweighted) of every step


def train_vector(
    lm: Any,
    layer: int,
    examples: Sequence,
    cfg: LMTrainConfig,
    *,
    init: torch.Tensor,
    edit: Edit,
    generator: torch.Generator,
    aux_weight: Callable[[int, int], float] = lambda step, total: 0.0,
    unit_norm: bool = False,
) -> Trained:
    """Train w (starting at `init`) through the frozen LM.

    `generator` (seeded by the caller) shuffles the examples every epoch.

    Each step: forward with `edit` hooked on block `layer`, loss = LM loss on response tokens +
    aux_weight(step, total) × the edit's auxiliary loss, backward (only from the hooked block up,
    as nothing below needs a gradient), clip, and with `unit_norm` AxBench's decoder
    constraint: w renormalised to unit norm and the gradient component parallel to w removed.
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
    opt = torch.optim.AdamW([w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * -(-len(encoded) // cfg.batch_size)
    sched = linear_decay(opt, total)

    current: dict[str, torch.Tensor] = {}

    def hook(h: torch.Tensor) -> torch.Tensor:
        edited, current["aux"] = edit(h, w, current["positions"])
        return edited

    lm_losses: list[float] = []
    aux_losses: list[float] = []
    step = 0
    with (
        torch.enable_grad(),
        frozen(model),
        _eval_mode(model),
        edit_residual(lm.layers[layer], hook),
    ):
        for _ in range(cfg.epochs):
            for batch in lm_batches(lm, encoded, batch_size=cfg.batch_size, generator=generator):
                current["positions"] = batch.concept_positions.to(lm.device)
                # Logits only from the first position that predicts a response token: the
                # vocabulary projection is a fifth of the model's compute.
                first = max(int(batch.prompt_length.min()) - 1, 0)
                out = model(
                    input_ids=batch.input_ids.to(lm.device),
                    attention_mask=batch.attention_mask.to(lm.device),
                    use_cache=False,
                    logits_to_keep=batch.input_ids.shape[1] - first,
                )
                labels = batch.labels[:, first:].to(lm.device)
                lm_loss = replace(batch, labels=labels).lm_loss(out.logits)
                loss = lm_loss + aux_weight(step, total) * current["aux"]
                opt.zero_grad()
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_([w], cfg.grad_clip)
                if unit_norm:
                    with torch.no_grad():
                        w /= w.norm() + torch.finfo(w.dtype).eps
                        w.grad -= (w.grad @ w) * w
                opt.step()
                sched.step()
                lm_losses.append(float(lm_loss.detach()))
                aux_losses.append(float(current["aux"].detach()))
                step += 1
    return Trained(w.detach().float().cpu(), lm_losses, aux_losses)


def relu_scores(params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
    """AxBench's detection latent for both methods: ReLU(h·w) per token."""
    proj = np.asarray(acts, dtype=np.float32) @ params["direction"].astype(np.float32)
    return np.maximum(proj, 0.0)


def hidden_size(lm: Any) -> int:
    """Width of the residual stream."""
    return int(lm.model.get_input_embeddings().embedding_dim)


def require_layer(runtime: Any, method: str) -> int:
    """The block whose output is edited; LM-trained methods cannot guess it."""
    if runtime.layer is None:
        raise ValueError(f"method {method}: the runtime names no layer (Runtime(layer=...))")
    return int(runtime.layer)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Train with dropout off (the model as the benchmark runs it), then restore the mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
