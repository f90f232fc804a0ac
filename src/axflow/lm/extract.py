"""Residual-stream activations of every concept-bearing token, written as a token-level table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from axflow.lm.models import LoadedModel
from axflow.lm.prompts import shared_prefix_length, tokenize_example
from axflow.lm.residual import capture_residual


@dataclass
class ExampleActivations:
    index: int  # row of the input list
    positions: np.ndarray  # [n] token positions in the templated example
    tokens: list[str]
    acts: np.ndarray  # [n, d] float32


def extract_residuals(
    lm: LoadedModel,
    examples: list[tuple[str, str]],
    *,
    layer: int,
    positions: str = "all",
    max_length: int = 256,
    batch_tokens: int = 8192,
) -> Iterator[ExampleActivations]:
    """Yield layer-`layer` activations for each (instruction, response) example.

    `positions="all"` keeps every token after the shared chat prefix (instruction and response, as
    AxBench does); `"response"` keeps response tokens only. Examples are batched by length and
    the forward pass stops after the hooked block. Yields in input order.
    """
    if positions not in ("all", "response"):
        raise ValueError(f"positions={positions!r}; use 'all' or 'response'")
    tok = lm.tokenizer
    prefix = shared_prefix_length(tok, lm.chat)
    encoded = [tokenize_example(tok, i, r, lm.chat, max_length) for i, r in examples]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    block = lm.layers[layer]
    results: dict[int, ExampleActivations] = {}
    next_out = 0
    start = 0
    while start < len(order):
        # Grow the batch while (rows × longest) stays under the token budget.
        end = start + 1
        while end < len(order) and (end - start + 1) * len(encoded[order[end]][0]) <= batch_tokens:
            end += 1
        batch = order[start:end]
        start = end
        width = max(len(encoded[k][0]) for k in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, k in enumerate(batch):
            seq = encoded[k][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        hidden = capture_residual(
            lm.model, block, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)
        )
        hidden = hidden.float().cpu().numpy()
        for row, k in enumerate(batch):
            seq, response_start = encoded[k]
            first = response_start if positions == "response" else prefix
            pos = np.arange(first, len(seq))
            results[k] = ExampleActivations(
                index=k,
                positions=pos,
                tokens=tok.convert_ids_to_tokens([seq[p] for p in pos]),
                acts=np.ascontiguousarray(hidden[row, pos]),
            )
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1
