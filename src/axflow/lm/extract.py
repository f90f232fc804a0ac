"""Residual-stream activations of every concept-bearing token, written as a token-level table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from axflow.lm.models import LoadedModel
from axflow.lm.prompts import shared_prefix_length, tokenize_example
from axflow.lm.residual import capture_residual
from axflow.progress import progress_bar


@dataclass
class ExampleActivations:
    index: int  # row of the input list
    positions: np.ndarray  # [n] token positions in the templated example
    tokens: list[str]
    acts: np.ndarray  # [n, d] float32, the first requested layer
    by_layer: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [n, d] float32


def extract_residuals(
    lm: LoadedModel,
    examples: list[tuple[str, str]],
    *,
    layer: int | None = None,
    layers: list[int] | None = None,
    positions: str = "all",
    max_length: int = 256,
    batch_tokens: int = 8192,
    progress: str | None = None,
) -> Iterator[ExampleActivations]:
    """Yield layer-`layer` (or `layers`) activations for each (instruction, response) example.

    Pass exactly one of `layer` or `layers`. With `layers`, one forward pass (stopped after the
    deepest one) serves them all: `by_layer[l]` holds each, `acts` the first listed.

    `positions="all"` keeps every token after the shared chat prefix (instruction and response, as
    AxBench does); `"response"` keeps response tokens only; `"from_1"` keeps every token from
    position 1 on (all but the first, chat-template tokens included: what AxBench's probe trains
    on). Examples are batched by length and the forward pass stops after the hooked block.
    Yields in input order. `progress` labels a bar of tokens read on stderr (None: no bar).
    """
    if positions not in ("all", "response", "from_1"):
        raise ValueError(f"positions={positions!r}; use 'all', 'response' or 'from_1'")
    if (layer is None) == (layers is None):
        raise ValueError("pass exactly one of layer= or layers=")
    wanted = [layer] if layers is None else list(dict.fromkeys(layers))
    if not wanted:
        raise ValueError("layers= is empty; name at least one layer")
    tok = lm.tokenizer
    prefix = shared_prefix_length(tok, lm.chat)
    encoded = [tokenize_example(tok, i, r, lm.chat, max_length) for i, r in examples]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    # Batches run shortest first but yield in input order, so the bar counts batches done.
    bar = progress_bar(sum(len(e[0]) for e in encoded), progress, "tok") if progress else None
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
        outputs = capture_residual(
            lm.model,
            [lm.layers[lay] for lay in wanted],
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
        )
        hidden = {lay: out.float().cpu().numpy() for lay, out in zip(wanted, outputs, strict=True)}
        if bar is not None:
            bar.update(sum(len(encoded[k][0]) for k in batch))
        for row, k in enumerate(batch):
            seq, response_start = encoded[k]
            first = {"response": response_start, "from_1": 1}.get(positions, prefix)
            pos = np.arange(first, len(seq))
            by_layer = {lay: np.ascontiguousarray(hidden[lay][row, pos]) for lay in wanted}
            results[k] = ExampleActivations(
                index=k,
                positions=pos,
                tokens=tok.convert_ids_to_tokens([seq[p] for p in pos]),
                acts=by_layer[wanted[0]],
                by_layer=by_layer,
            )
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1
    if bar is not None:
        bar.close()
