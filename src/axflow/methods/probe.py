"""Probe: per-token logistic regression on the residual stream, scored without its bias.

AxBench §2.1 (`LinearProbe`): every token after the chat prefix is a training point carrying its
example's label; loss = BCE(sigmoid(h·w + b), label) + l1_coeff · (|w|₁ + |b|); AdamW with a linear
learning-rate decay to 0 and no warm-up. Before every optimiser step w is renormalised to unit norm
and the gradient component parallel to w is removed, so training moves the direction, not its
length. Batches are whole examples (`batch_size` sequences, all their tokens), as in AxBench.
A token's detection score is h·w, with no bias and no sigmoid.

Defaults are AxBench's 2B settings (bs 12, 24 epochs, lr 5e-3, wd 1e-3, L1 0). Training runs on
cached activations rather than through the LM, so those settings already train in under a second
per concept on one CPU core; nothing was shrunk. The weight decay barely matters: w is renormalised
every step. Deterministic for a given seed (init and shuffling draw from one seeded generator).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from axflow.methods import Method, TokenBatch, register


@dataclass
class ProbeConfig:
    batch_size: int = 12  # examples (sequences) per step
    epochs: int = 24
    lr: float = 5e-3
    weight_decay: float = 1e-3
    l1_coeff: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(
                f"method probe: batch_size={self.batch_size} and epochs={self.epochs} must be ≥ 1"
            )
        if self.lr <= 0:
            raise ValueError(f"method probe: lr={self.lr} must be > 0")


@register("probe")
class Probe(Method):
    Config = ProbeConfig

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        _, labels = data.example_labels()
        if labels.min() == labels.max():
            raise ValueError(
                f"probe for concept {concept!r}: training tokens need both positive and "
                "negative examples"
            )
        gen = torch.Generator().manual_seed(seed)
        acts = torch.as_tensor(np.asarray(data.acts, dtype=np.float32))
        target = torch.as_tensor(data.label, dtype=torch.float32)
        tokens_of = _tokens_by_example(data.example)
        d = acts.shape[1]

        # nn.Linear's default initialisation, drawn from the seeded generator.
        bound = 1.0 / d**0.5
        w = ((torch.rand(d, generator=gen) * 2 - 1) * bound).requires_grad_()
        b = ((torch.rand((), generator=gen) * 2 - 1) * bound).requires_grad_()
        opt = torch.optim.AdamW([w, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * -(-len(tokens_of) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))

        with _one_thread():
            for _ in range(cfg.epochs):
                order = torch.randperm(len(tokens_of), generator=gen).tolist()
                for start in range(0, len(order), cfg.batch_size):
                    idx = torch.cat([tokens_of[k] for k in order[start : start + cfg.batch_size]])
                    prob = torch.sigmoid(acts[idx] @ w + b)
                    loss = torch.nn.functional.binary_cross_entropy(prob, target[idx])
                    if cfg.l1_coeff:
                        loss = loss + cfg.l1_coeff * (w.abs().sum() + b.abs())
                    opt.zero_grad()
                    loss.backward()
                    with torch.no_grad():
                        w /= w.norm().clamp_min(1e-12)
                        w.grad -= (w.grad @ w) * w
                    opt.step()
                    sched.step()

        with torch.no_grad():
            norm = w.norm().clamp_min(1e-12)
            direction = (w / norm).numpy().astype(np.float32)
            bias = (b / norm).numpy().astype(np.float32)  # keeps h·w + b's sign with unit w
        return {"direction": direction, "bias": np.asarray(bias, np.float32).reshape(())}

    def token_scores(self, params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
        return np.asarray(acts, dtype=np.float32) @ params["direction"].astype(np.float32)


def _tokens_by_example(example: np.ndarray) -> list[torch.Tensor]:
    """Token indices of each example, examples in ascending id order."""
    _, inverse = np.unique(example, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return [torch.as_tensor(chunk) for chunk in np.split(order, np.cumsum(counts)[:-1])]


@contextmanager
def _one_thread() -> Iterator[None]:
    # Every step is a small matmul: thread hand-offs cost more than they save (4-8x on 2 cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
