"""Many sequences that start with the same tokens: run the shared start once, then only the rest.

Scoring passes (the judge's perplexities, prompt detection) put one long prompt in front of many
short texts: the same chat prompt before every generation of a steering instruction, the same
question about a concept before every example. The prefix runs through the model once; its KV
cache is repeated over a batch of continuations, which are left-padded after it so that every
row's last token is in the last column.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token after it."""
    shortest = min(map(len, sequences))
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def run_prefix(model: Any, prefix: Sequence[int]) -> Any:
    """The model's output for `prefix` alone: its KV cache and its last position's logits
    (None for an empty prefix)."""
    import torch

    if not prefix:
        return None

    ids = torch.tensor([list(prefix)], device=next(model.parameters()).device)
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def run_continuations(
    model: Any,
    prefix: Any,
    prefix_len: int,
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    *,
    logits_to_keep: int = 0,
) -> tuple[Any, Any, Any]:
    """(logits of the last `logits_to_keep` columns (0: all), token ids, real-token mask) of
    `continuations` run after `prefix` (from `run_prefix`, `prefix_len` tokens long; None: no
    prefix).

    Continuations are left-padded, so column -1 holds every row's last token; pad columns are
    masked out and real tokens keep the positions they have in the whole sequence.
    """
    import torch

    device = next(model.parameters()).device
    rows, width = len(continuations), max(map(len, continuations))
    ids = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
    real = torch.zeros((rows, width), dtype=torch.bool, device=device)
    for r, seq in enumerate(continuations):
        ids[r, width - len(seq) :] = torch.tensor(list(seq), device=device)
        real[r, width - len(seq) :] = True
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix.past_key_values)
        cache.batch_repeat_interleave(rows)
    mask = torch.cat([torch.ones((rows, prefix_len), dtype=torch.long, device=device), real], 1)
    positions = prefix_len + (real.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=logits_to_keep,
        ).logits
    return logits, ids, real
