"""Batches and helpers for methods that train through the language model.

ReFT-r1, SSV, LoReFT, LoRA and SFT all minimise the LM loss on response tokens of templated
(instruction, response) examples, some with an intervention on a block's output. They share the
batching here: right-padded token ids, labels masked to the response, and position masks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from axflow.lm.models import LoadedModel
from axflow.lm.prompts import shared_prefix_length, tokenize_example

IGNORE = -100  # label of positions that do not count in the LM loss


@dataclass
class LMBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens
    labels: torch.Tensor  # [B, T] next-token targets on response tokens, IGNORE elsewhere
    concept_positions: torch.Tensor  # [B, T] bool: real tokens after the shared chat prefix
    prompt_length: torch.Tensor  # [B] tokens before the response starts
    length: torch.Tensor  # [B] real tokens
    label: torch.Tensor  # [B] float, the examples' labels (1 positive)

    def lm_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over response tokens (HF's causal-LM convention)."""
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            self.labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
        )


def encode_examples(
    lm: LoadedModel, examples: Sequence, *, max_length: int
) -> list[tuple[list[int], int, int]]:
    """(token ids, response start, label) of each `Example` (instruction, response, label)."""
    out = []
    for ex in examples:
        ids, start = tokenize_example(
            lm.tokenizer, ex.instruction, ex.response, lm.chat, max_length
        )
        out.append((ids, start, int(ex.label)))
    return out


def lm_batches(
    lm: LoadedModel,
    encoded: list[tuple[list[int], int, int]],
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[LMBatch]:
    """One epoch of batches; shuffled with `generator` (None keeps the given order)."""
    order = (
        torch.randperm(len(encoded), generator=generator).tolist()
        if generator is not None
        else list(range(len(encoded)))
    )
    prefix = shared_prefix_length(lm.tokenizer, lm.chat)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        rows = [encoded[k] for k in order[start : start + batch_size]]
        width = max(len(ids) for ids, _, _ in rows)
        b = len(rows)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        labels = torch.full((b, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        concept_positions = torch.zeros((b, width), dtype=torch.bool)
        for r, (ids, resp_start, _) in enumerate(rows):
            n = len(ids)
            input_ids[r, :n] = torch.tensor(ids)
            mask[r, :n] = 1
            labels[r, resp_start:n] = input_ids[r, resp_start:n]
            concept_positions[r, min(prefix, n) : n] = True
        yield LMBatch(
            input_ids=input_ids,
            attention_mask=mask,
            labels=labels,
            concept_positions=concept_positions,
            prompt_length=torch.tensor([s for _, s, _ in rows]),
            length=torch.tensor([len(ids) for ids, _, _ in rows]),
            label=torch.tensor([float(lab) for _, _, lab in rows]),
        )


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Freeze every weight of `model` (only the method's own parameters train), then restore."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in before:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int):
    """AxBench's schedule: linear decay from the base rate to 0, no warm-up."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
