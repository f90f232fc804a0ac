"""The one training loop of every method that trains through the language model.

ReFT-r1 and SSV (a rank-1 vector), LoReFT, LoRA and SFT all minimise a loss on the response
tokens of templated (instruction, response) examples with AxBench's optimiser: AdamW, a linear
decay to 0 without warm-up, gradient accumulation, and gradient-norm clipping where the method's
config asks for it (`max_grad_norm`; null: none). Only the trained parameters and the loss
differ, so each method hands this loop its parameter groups and a loss function.

Conventions, the same for every method:
- The language model runs in eval mode (no dropout inside it, so a seed reproduces a run
  exactly), except modules a method names (LoRA's adapter dropout).
- An optimiser step averages the losses of the micro-batches it accumulated, also for the last,
  shorter group of an epoch (AxBench divides by `grad_accum` there too, shrinking that gradient).
- Logits are computed only from the first response position on (`logits_to_keep`), which gives
  the same loss as `LMBatch.lm_loss` on full logits at a fraction of the vocabulary projection.
- The batch order draws from a `torch.Generator` the caller seeds; initialisers and dropout draw
  from torch's global generators, which `seeded(seed)` seeds without disturbing the caller's.

Private module: registers nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from axflow.lm.finetune import IGNORE, LMBatch, linear_decay, lm_batches

# (batch, fraction of the optimiser steps done) -> loss terms of that micro-batch. "loss" is
# minimised; every term is recorded per optimiser step (e.g. an unweighted penalty).
LossFn = Callable[[LMBatch, float], dict[str, torch.Tensor]]


@dataclass
class TrainConfig:
    """Optimiser keys every LM-trained method has (values: config/method/<kind>.yaml)."""

    method_name: ClassVar[str] = "lm"

    lr: float  # AdamW, decays linearly to 0 over all steps, no warm-up
    epochs: int
    batch_size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimiser step
    max_length: int  # tokens per templated example (prompt + response)
    weight_decay: float
    max_grad_norm: float | None  # clip the gradient norm before each step; None: no clipping

    def __post_init__(self) -> None:
        name = self.method_name
        for key in ("batch_size", "grad_accum", "epochs", "max_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"method {name}: {key}={value!r} must be an integer ≥ 1")
        if not is_number(self.lr) or not self.lr > 0:
            raise ValueError(f"method {name}: lr={self.lr!r} must be a number > 0")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(
                f"method {name}: weight_decay={self.weight_decay!r} must be a number ≥ 0"
            )
        if self.max_grad_norm is not None and (
            not is_number(self.max_grad_norm) or not self.max_grad_norm > 0
        ):
            raise ValueError(
                f"method {name}: max_grad_norm={self.max_grad_norm!r} must be a number > 0 "
                "(or null for no clipping)"
            )


def is_number(value: Any) -> bool:
    """A real number from the config (YAML may hand over strings such as "9e-4")."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def response_loss(model: Any, batch: LMBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens of a right-padded batch.

    Equal to `batch.lm_loss(model(...).logits)`, but only positions from the earliest response
    start on go through the vocabulary projection.
    """
    width = batch.input_ids.shape[1]
    start = max(int(batch.prompt_length.min()) - 1, 0)  # logit at start predicts token start+1
    device = next(model.parameters()).device
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        use_cache=False,
        logits_to_keep=width - start,
    )
    logits = out.logits[:, :-1]
    targets = batch.labels[:, start + 1 :].to(device)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
    )


def train_through_lm(
    lm: Any,
    encoded: Sequence[tuple[list[int], int, int]],
    param_groups: Iterable[dict[str, Any]],
    cfg: TrainConfig,
    *,
    order: torch.Generator,
    loss_of: LossFn,
    before_step: Callable[[], None] | None = None,
    train_modules: Iterable[torch.nn.Module] = (),
) -> dict[str, list[float]]:
    """Minimise `loss_of(...)["loss"]` over `encoded` examples; return each term per step.

    `encoded` are `encode_examples` rows. `param_groups` are AdamW groups (`{"params": [...]}`,
    optionally `"weight_decay"`); only they are updated, and the caller freezes the rest.
    `order` (seeded by the caller) shuffles the examples every epoch. Each optimiser step:
    accumulate the micro-batches' gradients, clip (`cfg.max_grad_norm`), call `before_step`
    (e.g. a constraint on the gradient), step. Returns each term of `loss_of`, averaged over the
    micro-batches of every optimiser step.
    """
    encoded = list(encoded)
    groups = [dict(g) for g in param_groups]
    params = [p for g in groups for p in g["params"]]
    micro_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    steps = cfg.epochs * math.ceil(micro_per_epoch / cfg.grad_accum)
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8
    )
    schedule = linear_decay(optimizer, steps)
    history: dict[str, list[float]] = {}
    step = 0
    with torch.enable_grad(), _eval_mode(lm.model, train_modules):
        for _ in range(cfg.epochs):
            batches = list(lm_batches(lm, encoded, batch_size=cfg.batch_size, generator=order))
            for group in _chunks(batches, cfg.grad_accum):
                optimizer.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}
                for batch in group:
                    terms = loss_of(batch, step / steps)
                    (terms["loss"] / len(group)).backward()
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach())
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if before_step is not None:
                    before_step()
                optimizer.step()
                schedule.step()
                for key, total in sums.items():
                    history.setdefault(key, []).append(total / len(group))
                step += 1
    optimizer.zero_grad(set_to_none=True)
    return history


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generators (initialisers, dropout) without disturbing the caller's."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _eval_mode(model: torch.nn.Module, train_modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """The model in eval mode except `train_modules`; every module's mode restored on exit."""
    before = {m: m.training for m in model.modules()}
    model.eval()
    for m in train_modules:
        m.train()
    try:
        yield
    finally:
        for m, was in before.items():
            m.training = was
