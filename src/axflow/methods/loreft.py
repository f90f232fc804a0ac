"""LoReFT: a rank-4 low-rank representation edit at the prompt's first and last tokens.

AxBench §2.4 (pyreft `LoreftIntervention`, reimplemented here; pyreft is not a dependency):
at each of a few decoder blocks, the block output h at the intervened positions becomes

    h ← h + Rᵀ(W h + b − R h)

with R [r, d] having orthonormal rows (kept orthonormal by torch's `orthogonal`
parametrisation, as in pyreft), W [r, d] and b [r] a learned linear map (pyreft's
`learned_source`, default `nn.Linear` initialisation) and r = 4. The intervened positions are
pyreft's "f5+l5": the first 5 and the last 5 tokens of the prompt (everything before the
response; each count capped at half the prompt, as pyreft does). One intervention per block,
trained on the concept's positives only with the LM loss on response tokens (bs 18 × accum 2,
24 epochs, lr 9e-4, weight decay 0, AdamW, linear decay, grad-norm clip 1.0).

Steering (`steered`): while active, the blocks edit the first/last prompt tokens of every row
during the prompt's forward pass (found from each row's attention mask, so left padding works)
and leave generated tokens alone, which they see only through the KV cache — pyreft's
`intervene_on_prompt=True`. The factor is irrelevant.

Layers: AxBench uses blocks [5, 10, 15, 20] of Gemma-2-2B's 26. `layers: null` scales those
depths to the model (round(l·n/26)): [6, 12, 17, 23] for SmolLM2-135M's 30 blocks, exactly
[5, 10, 15, 20] for Gemma-2-2B. A list overrides (AxBench 9B: [12, 20, 31, 39]).

Departures: parameters are stored per block as R [r, d], W [r, d], b [r] (AxBench stores Rᵀ and
Wᵀ as [d, r]); the intervention is computed in float32 and cast back to the model's dtype. With
SmolLM2's default system turn the first 5 prompt tokens are template tokens (in Gemma-2 the
fifth is the instruction's first token), so "f5" acts there as a learned prefix edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from axflow.lm.finetune import frozen
from axflow.lm.models import hidden_size
from axflow.lm.residual import edit_residual
from axflow.methods import TokenBatch, register
from axflow.methods._finetune import (
    FinetunedModel,
    check_layers,
    encoded_positives,
    resolve_layers,
)
from axflow.methods._lm_training import TrainConfig, response_loss, seeded, train_through_lm


@dataclass
class LoreftConfig(TrainConfig):
    method_name: ClassVar[str] = "loreft"
    rank: int  # r, the subspace dimension
    layers: list[int] | None  # None: AxBench's 2B blocks scaled to the model's depth
    first_n: int  # pyreft "f5"
    last_n: int  # pyreft "l5"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("rank", "first_n", "last_n"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"method loreft: {key}={value!r} must be an integer ≥ 0")
        if self.rank < 1:
            raise ValueError(f"method loreft: rank={self.rank} must be ≥ 1")
        if self.first_n + self.last_n < 1:
            raise ValueError("method loreft: first_n + last_n must be ≥ 1 (no position to edit)")
        self.layers = check_layers("loreft", self.layers)


def loreft_edit(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
    """h + Rᵀ(W h + b − R h) for h [..., d], computed in float32, returned in h's dtype."""
    x = h.float()
    return (x + (x @ W.T + b - x @ R.T) @ R).to(h.dtype)


class LoreftIntervention(nn.Module):
    """pyreft's LoreftIntervention: R with orthonormal rows, W and b as one `nn.Linear`."""

    def __init__(self, d: int, rank: int):
        super().__init__()
        rotate = nn.Linear(d, rank, bias=False)
        nn.init.orthogonal_(rotate.weight)
        self.rotate = nn.utils.parametrizations.orthogonal(rotate)
        self.source = nn.Linear(d, rank)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return loreft_edit(h, self.rotate.weight, self.source.weight, self.source.bias)


def prompt_positions(
    attention_mask: torch.Tensor, prompt_length: torch.Tensor | None, first_n: int, last_n: int
) -> torch.Tensor:
    """[B, T] bool: the first `first_n` and last `last_n` prompt tokens of each row (pyreft).

    Tokens are counted over real (attention-mask) positions, so left and right padding both work;
    `prompt_length` None means every real token is prompt (generation's prefill).
    """
    mask = attention_mask.bool()
    rank = mask.long().cumsum(-1) - 1  # index of each real token within its row
    n = mask.sum(-1) if prompt_length is None else prompt_length.to(mask.device)
    first = torch.clamp(n // 2, max=first_n)[:, None]
    last = torch.clamp(n // 2, max=last_n)[:, None]
    n = n[:, None]
    return mask & ((rank < first) | ((rank >= n - last) & (rank < n)))


@register("loreft")
class LoReFT(FinetunedModel):
    Config = LoreftConfig

    def layers(self) -> list[int]:
        return resolve_layers("loreft", self.cfg.layers, len(self.runtime.lm.layers))

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        cfg, lm = self.cfg, self.runtime.lm
        positives = encoded_positives(
            lm, data, max_length=cfg.max_length, method="loreft", concept=concept
        )
        layers = self.layers()
        d = hidden_size(lm.model)
        with seeded(seed):
            interventions = nn.ModuleList(LoreftIntervention(d, cfg.rank) for _ in layers)
        interventions.to(lm.device)
        rotations = [p for m in interventions for p in m.rotate.parameters()]
        sources = [p for m in interventions for p in m.source.parameters()]
        positions: dict[str, torch.Tensor | None] = {"mask": None}

        def loss_of(batch, _progress: float) -> dict[str, torch.Tensor]:
            positions["mask"] = prompt_positions(
                batch.attention_mask, batch.prompt_length, cfg.first_n, cfg.last_n
            ).to(lm.device)
            return {"loss": response_loss(lm.model, batch)}

        with frozen(lm.model), self._edits(layers, list(interventions), positions):
            self.loss_history = train_through_lm(
                lm,
                positives,
                # Never decay R's raw parameter: the parametrisation reads its diagonal as ±1.
                [{"params": rotations, "weight_decay": 0.0}, {"params": sources}],
                cfg,
                order=torch.Generator().manual_seed(seed),
                loss_of=loss_of,
            )["loss"]
        with torch.no_grad():
            return {
                "rotation": _stack([m.rotate.weight for m in interventions]),
                "source_weight": _stack([m.source.weight for m in interventions]),
                "source_bias": _stack([m.source.bias for m in interventions]),
            }

    @contextmanager
    def steered(self, params: dict[str, np.ndarray]) -> Iterator[None]:
        """Edit the first/last prompt tokens during each prompt's forward pass while active."""
        cfg, lm = self.cfg, self.runtime.lm
        layers = self.layers()
        shape = np.shape(params["rotation"])
        if shape[0] != len(layers) or shape[1] != cfg.rank:
            raise ValueError(
                f"method loreft: parameters are for {shape[0]} blocks of rank {shape[1]}, the "
                f"config asks for blocks {layers} of rank {cfg.rank}; retrain or fix method.loreft"
            )

        def tensor(key: str, k: int) -> torch.Tensor:
            return torch.as_tensor(np.asarray(params[key][k], np.float32), device=lm.device)

        edits = [
            _FixedEdit(tensor("rotation", k), tensor("source_weight", k), tensor("source_bias", k))
            for k in range(len(layers))
        ]
        positions: dict[str, torch.Tensor | None] = {"mask": None}

        def before_forward(_module, args, kwargs):
            positions["mask"] = _prefill_positions(args, kwargs, cfg.first_n, cfg.last_n)

        handle = lm.model.register_forward_pre_hook(before_forward, with_kwargs=True)
        try:
            with self._edits(layers, edits, positions):
                yield
        finally:
            handle.remove()

    @contextmanager
    def _edits(self, layers: list[int], edits: list[Any], positions: dict) -> Iterator[None]:
        """Apply `edits[k]` at block `layers[k]` wherever `positions["mask"]` is set."""

        def at_positions(edit):
            def fn(h: torch.Tensor) -> torch.Tensor:
                mask = positions["mask"]
                if mask is None:
                    return h
                if mask.shape != h.shape[:2]:
                    raise RuntimeError(
                        f"LoReFT: position mask {tuple(mask.shape)} does not fit the hidden "
                        f"states {tuple(h.shape)}; the forward was not prepared by this method"
                    )
                return torch.where(mask[..., None], edit(h), h)

            return fn

        blocks = self.runtime.lm.layers
        with ExitStack() as stack:
            for layer, edit in zip(layers, edits, strict=True):
                stack.enter_context(edit_residual(blocks[layer], at_positions(edit)))
            yield


class _FixedEdit:
    """A trained intervention as plain tensors (no parametrisation, no autograd)."""

    def __init__(self, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
        self.R, self.W, self.b = R, W, b

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return loreft_edit(h, self.R, self.W, self.b)


def _prefill_positions(args: tuple, kwargs: dict, first_n: int, last_n: int):
    """Positions to edit in this forward call: f/l prompt tokens on prefill, none when decoding."""
    past = kwargs.get("past_key_values")
    if past is not None and _cached_tokens(past) > 0:
        return None  # a decoding step: only generated tokens are in this call
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs["inputs_embeds"]
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
    if mask.dim() != 2:
        raise ValueError("LoReFT steering needs a [batch, tokens] attention mask in the forward")
    return prompt_positions(mask, None, first_n, last_n)


def _cached_tokens(past: Any) -> int:
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[-2]) if len(past) else 0


def _stack(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.stack([t.detach().float().cpu() for t in tensors]).numpy()
