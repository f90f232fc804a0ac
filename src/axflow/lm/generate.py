"""Batched sampling where every row carries its own steering vector and its own random seed.

One batch can mix concepts and factors. Each row samples from its own `torch.Generator`, so a
row's tokens do not depend on which other rows share its batch (up to floating-point batch
effects) and a rerun reproduces them exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from axflow.lm.models import LoadedModel, hidden_size
from axflow.lm.residual import add_to_residual, edit_residual
from axflow.progress import progress_bar


@dataclass
class GenerationRequest:
    prompt: str  # fully formatted (chat template already applied)
    seed: int
    delta: np.ndarray | None = None  # [d] added to the residual stream at every position
    # Any other edit of this row's residual stream ([T, d] -> [T, d]), applied after `delta`.
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None


@torch.no_grad()
def generate(
    lm: LoadedModel,
    requests: list[GenerationRequest],
    *,
    layer: int | None,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 32,
    chat: bool | None = None,
    progress: str | None = "generate",
) -> list[str]:
    """Sample a continuation for each request (greedy when temperature == 0); `progress`
    labels a bar of sequences done on stderr (None: no bar)."""
    tok = lm.tokenizer
    chat = lm.chat if chat is None else chat
    d = hidden_size(lm.model)
    stop_ids = _stop_token_ids(lm)
    encoded = [tok(r.prompt, add_special_tokens=not chat)["input_ids"] for r in requests]
    order = sorted(range(len(requests)), key=lambda k: len(encoded[k]))
    outputs: list[str] = [""] * len(requests)
    bar = progress_bar(len(requests), progress, "seq") if progress else None
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[k]) for k in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, k in enumerate(batch):  # left padding keeps the last position aligned
            seq = encoded[k]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        deltas = torch.zeros((len(batch), d), dtype=torch.float32)
        for row, k in enumerate(batch):
            if requests[k].delta is not None:
                deltas[row] = torch.as_tensor(requests[k].delta, dtype=torch.float32)
        gens = [torch.Generator().manual_seed(int(requests[k].seed)) for k in batch]
        block = lm.layers[layer] if layer is not None else None
        edits = [requests[k].edit for k in batch]
        with (
            add_to_residual(block, deltas.to(lm.device)) if block is not None else _null(),
            edit_residual(block, _rowwise(edits)) if any(edits) else _null(),
        ):
            new_tokens = _sample(lm, ids, mask, gens, stop_ids, max_new_tokens, temperature)
        for row, k in enumerate(batch):
            outputs[k] = tok.decode(new_tokens[row], skip_special_tokens=True).strip()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return outputs


def _rowwise(edits: list) -> Callable[[torch.Tensor], torch.Tensor]:
    """One batch edit from per-row edits (None leaves a row as it is)."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [e(row) if e is not None else row for e, row in zip(edits, h, strict=True)]
        )

    return edit


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _stop_token_ids(lm: LoadedModel) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    gen_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, list):
        ids.update(gen_eos)
    elif gen_eos is not None:
        ids.add(gen_eos)
    for name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = lm.tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != lm.tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}


def _sample(lm, ids, mask, gens, stop_ids, max_new_tokens, temperature) -> list[list[int]]:
    device = lm.device
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = lm.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits are sampled from
    )
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    done = torch.zeros(len(gens), dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in gens]
    next_pos = position_ids[:, -1] + 1
    for _step in range(max_new_tokens):
        logits = logits.float().cpu()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.stack(
                [torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(gens)]
            )
        else:
            nxt = logits.argmax(-1)
        for b in range(len(gens)):
            if not done[b]:
                if int(nxt[b]) in stop_ids:
                    done[b] = True
                else:
                    tokens[b].append(int(nxt[b]))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((len(gens), 1), dtype=mask.dtype, device=device)], 1)
        out = lm.model(
            input_ids=nxt[:, None].to(device),
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return tokens
