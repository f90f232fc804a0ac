"""The one training loop of the steering-only finetuning baselines (LoReFT, LoRA, SFT).

AxBench §2.4 trains all three the same way: LM cross-entropy on the response tokens of the
concept's positives only, AdamW, a linear decay to 0 without warm-up, gradient accumulation, and
(LoReFT, SFT) gradient-norm clipping at 1.0. Only what is trained differs, so the methods hand
this loop their parameters and a forward function and keep nothing else of their own.

Departures from AxBench's loops, all small:
- The language model stays in eval mode (no dropout inside the model, so a seed reproduces a run
  exactly); LoRA's own adapter dropout is switched on by the LoRA method itself.
- An optimiser step averages the losses of the micro-batches it accumulated, also for the last,
  shorter group of an epoch (AxBench divides by `grad_accum` there too, shrinking that gradient).
- Logits are computed only from the first response position on (`logits_to_keep`), which gives
  the same loss as `LMBatch.lm_loss` on full logits at a fraction of the vocabulary projection.

Private module: registers nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch

from axflow.lm.finetune import IGNORE, LMBatch, encode_examples, linear_decay, lm_batches
from axflow.methods import Example, Method, TokenBatch

# AxBench's layers for LoReFT and LoRA on Gemma-2-2B ([5, 10, 15, 20] of its 26 blocks).
AXBENCH_2B_LAYERS = (5, 10, 15, 20)
AXBENCH_2B_DEPTH = 26


class FinetunedModel(Method):
    """A finetuning baseline: it does not detect, and it steers by swapping in the concept's
    finetuned model while that concept's rows generate, so the factor plays no part."""

    detects = False
    steering = "model"
    factor_free = True
    reads_activations = False

    loss_history: list[float]  # mean LM loss of every optimiser step of the last `fit`


@dataclass
class FinetuneConfig:
    """Optimiser settings every finetuning baseline shares (values: config/method/<kind>.yaml)."""

    batch_size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimiser step
    epochs: int
    lr: float  # decays linearly to 0 over all steps, no warm-up
    weight_decay: float
    max_grad_norm: float | None  # None: no clipping
    max_length: int  # tokens per templated example (prompt + response)

    def __post_init__(self) -> None:
        name = getattr(self, "method_name", "finetune")
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


def check_layers(name: str, layers: Any) -> list[int] | None:
    """Validate a `layers` config value: null or a non-empty list of distinct block indices."""
    if layers is None:
        return None
    try:
        values = [int(x) for x in layers]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"method {name}: layers={layers!r} must be null or a list of block indices"
        ) from err
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(
            f"method {name}: layers={layers!r} must be distinct block indices ≥ 0 (or null)"
        )
    return sorted(values)


def resolve_layers(name: str, layers: list[int] | None, n_blocks: int) -> list[int]:
    """The configured blocks, or AxBench's 2B depths scaled to this model (null).

    Gemma-2-2B (26 blocks) gets exactly [5, 10, 15, 20]; SmolLM2-135M (30) gets [6, 12, 17, 23].
    """
    if layers is None:
        return sorted({round(k * n_blocks / AXBENCH_2B_DEPTH) for k in AXBENCH_2B_LAYERS})
    if max(layers) >= n_blocks:
        raise ValueError(
            f"method {name}: layers={layers} but the model has {n_blocks} blocks (0-{n_blocks - 1})"
        )
    return layers


def config_fields(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def positives_of(data: TokenBatch, *, method: str, concept: str) -> list[Example]:
    """The concept's positive examples: AxBench trains these baselines on positives only."""
    positives = [ex for ex in data.examples if ex.label == 1]
    if not positives:
        raise ValueError(
            f"method {method}, concept {concept!r}: no positive example among the "
            f"{len(data.examples)} training examples (TokenBatch.examples with label 1)"
        )
    return positives


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


def train_lm(
    lm: Any,
    examples: list[Example],
    param_groups: Iterable[dict[str, Any]],
    cfg: FinetuneConfig,
    *,
    seed: int,
    loss_of: Callable[[LMBatch], torch.Tensor],
    train_modules: Iterable[torch.nn.Module] = (),
) -> list[float]:
    """Minimise `loss_of` over `examples` with AxBench's optimiser; return the loss of each step.

    `param_groups` are AdamW groups (`{"params": [...]}`, optionally `"weight_decay"`); only they
    are updated. The model runs in eval mode except `train_modules` (e.g. LoRA's adapter dropout).
    The batch order draws from a generator seeded with `seed`; the caller seeds the
    initialisation (and any dropout) itself.
    """
    groups = [dict(g) for g in param_groups]
    params = [p for g in groups for p in g["params"]]
    encoded = encode_examples(lm, examples, max_length=cfg.max_length)
    micro_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    steps = cfg.epochs * math.ceil(micro_per_epoch / cfg.grad_accum)
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8
    )
    schedule = linear_decay(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    history: list[float] = []
    with torch.enable_grad(), _eval_mode(lm.model, train_modules):
        for _ in range(cfg.epochs):
            batches = list(lm_batches(lm, encoded, batch_size=cfg.batch_size, generator=order))
            for group in _chunks(batches, cfg.grad_accum):
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for batch in group:
                    loss = loss_of(batch)
                    (loss / len(group)).backward()
                    total += float(loss.detach())
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
                history.append(total / len(group))
    optimizer.zero_grad(set_to_none=True)
    return history


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


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generators (initialisers, dropout) without disturbing the caller's."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
