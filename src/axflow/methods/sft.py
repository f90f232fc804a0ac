"""SFT: full finetuning of the language model on one concept's positives.

AxBench §2.4: every weight of the model is trained with the LM loss on the response tokens of
the concept's positives (bs 18 × accum 4, 8 epochs, lr 4e-5, weight decay 0, AdamW, linear decay,
grad-norm clip 1.0); AxBench ran it on the first 20 concepts of Gemma-2-2B only. Here the stages'
generic `max_concepts` key limits it likewise (config/method/sft.yaml: 2).

Storage: a concept's parameters are its weight changes Δ = θ_concept − θ_base, one float16 array
per model parameter (2 bytes per weight: ≈270 MB per concept for SmolLM2-135M). Storing the change
rather than the weights keeps float16's 3-digit precision relative to the update, which at lr
4e-5 is far smaller than the weights. `steered` adds Δ to a copy-protected model: the original
weights are cloned on entry and copied back on exit, so the base model is restored bit-exactly.
`fit` restores the base weights after every concept too, so concepts never see each other's
finetuning.

Tied embeddings (SmolLM2, Gemma share the input embedding and the output projection): trained,
as in AxBench, whose loop passes `model.parameters()` (Gemma-2's embeddings are tied as well).
`train_embeddings: false` freezes them (SmolLM2: 28M of 135M weights, so 21 % less storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from axflow.lm.finetune import frozen
from axflow.methods import TokenBatch, register
from axflow.methods._finetune import FinetunedModel, encoded_positives
from axflow.methods._lm_training import TrainConfig, response_loss, seeded, train_through_lm


@dataclass
class SftConfig(TrainConfig):
    method_name: ClassVar[str] = "sft"
    train_embeddings: bool  # the (tied) token embeddings / output projection too

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.train_embeddings, bool):
            raise ValueError(
                f"method sft: train_embeddings={self.train_embeddings!r} must be true or false"
            )


@register("sft")
class SFT(FinetunedModel):
    Config = SftConfig

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The model's parameters SFT changes, by name (a tied weight appears once)."""
        model = self.runtime.lm.model
        skip: set[int] = set()
        if not self.cfg.train_embeddings:
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                if module is not None:
                    skip.update(id(p) for p in module.parameters())
        return {n: p for n, p in model.named_parameters() if id(p) not in skip}

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        lm = self.runtime.lm
        positives = encoded_positives(
            lm, data, max_length=self.cfg.max_length, method="sft", concept=concept
        )
        trained = self.trained_parameters()
        with _restored(trained) as base, frozen(lm.model):
            for p in trained.values():
                p.requires_grad_(True)
            with seeded(seed):
                self.loss_history = train_through_lm(
                    lm,
                    positives,
                    [{"params": list(trained.values())}],
                    self.cfg,
                    order=torch.Generator().manual_seed(seed),
                    loss_of=lambda batch, _progress: {"loss": response_loss(lm.model, batch)},
                )["loss"]
            with torch.no_grad():
                return {
                    n: (p.detach().float() - base[n].float()).cpu().numpy().astype(np.float16)
                    for n, p in trained.items()
                }

    @contextmanager
    def steered(self, params: dict[str, np.ndarray]) -> Iterator[None]:
        """The model's weights plus the concept's Δ while active; the originals back on exit."""
        trained = self.trained_parameters()
        if set(params) != set(trained):
            raise ValueError(
                "method sft: the parameters do not match the model's weights "
                f"(missing {sorted(set(trained) - set(params))[:4]}, unexpected "
                f"{sorted(set(params) - set(trained))[:4]}); retrain or fix method.sft"
            )
        with _restored(trained), torch.no_grad():
            for name, p in trained.items():
                delta = torch.as_tensor(np.asarray(params[name], dtype=np.float32))
                p.add_(delta.to(device=p.device, dtype=p.dtype))
            yield


@contextmanager
def _restored(params: dict[str, torch.nn.Parameter]) -> Iterator[dict[str, torch.Tensor]]:
    """Copy `params` on entry (yielded) and write the copies back on exit (bit-exact)."""
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
