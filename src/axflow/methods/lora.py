"""LoRA: a rank-4 adapter on the attention output projection of a few blocks, per concept.

AxBench §2.4 (peft `LoraConfig`): r 4, alpha 32, rsLoRA (scale alpha/√r = 16), adapter dropout
0.05, no bias, target `o_proj` of the same blocks as LoReFT, trained on the concept's positives
only with the LM loss on response tokens (bs 18 × accum 2, 24 epochs, lr 9e-4, weight decay 0,
AdamW, linear decay; AxBench's LoRA loop does not clip gradients, so `max_grad_norm` is null).
peft builds, initialises (A Kaiming-uniform, B zero) and runs the adapters; the language model
stays in eval mode while the adapters' dropout trains, and the seed fixes both.

Parameters are the adapter matrices as arrays, `<module>.lora_A` [r, in] and `<module>.lora_B`
[out, r] per targeted module (AxBench saves a peft adapter folder per concept). `steered`
injects them with peft and unloads them on exit, which puts the original `nn.Linear` modules
back: the base model is restored exactly. Layers: see `loreft.py` (`layers: null` scales
AxBench's 2B blocks [5, 10, 15, 20] of 26 to the model's depth).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from axflow.lm.finetune import frozen
from axflow.methods import TokenBatch, register
from axflow.methods._finetune import (
    FinetunedModel,
    check_layers,
    encoded_positives,
    resolve_layers,
)
from axflow.methods._lm_training import (
    TrainConfig,
    is_number,
    response_loss,
    seeded,
    train_through_lm,
)

ADAPTER = "axflow"  # peft adapter name; one adapter at a time


@dataclass
class LoraConfig(TrainConfig):
    method_name: ClassVar[str] = "lora"
    rank: int
    alpha: float
    dropout: float  # peft's adapter dropout (the model itself stays in eval mode)
    rslora: bool  # scale alpha/√rank instead of alpha/rank
    target_modules: list[str]
    layers: list[int] | None  # None: AxBench's 2B blocks scaled to the model's depth

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"method lora: rank={self.rank!r} must be an integer ≥ 1")
        if not is_number(self.alpha) or not self.alpha > 0:
            raise ValueError(f"method lora: alpha={self.alpha!r} must be a number > 0")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"method lora: dropout={self.dropout!r} must be in [0, 1)")
        if not isinstance(self.rslora, bool):
            raise ValueError(f"method lora: rslora={self.rslora!r} must be true or false")
        targets = [self.target_modules] if isinstance(self.target_modules, str) else None
        targets = targets or list(self.target_modules or [])
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"method lora: target_modules={self.target_modules!r} must be a non-empty list "
                "of module names, e.g. [o_proj]"
            )
        self.target_modules = targets
        self.layers = check_layers("lora", self.layers)


@register("lora")
class LoRA(FinetunedModel):
    Config = LoraConfig

    def layers(self) -> list[int]:
        return resolve_layers("lora", self.cfg.layers, len(self.runtime.lm.layers))

    def peft_config(self) -> Any:
        from peft import LoraConfig as PeftLoraConfig

        cfg = self.cfg
        return PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            use_rslora=cfg.rslora,
            target_modules=list(cfg.target_modules),
            layers_to_transform=self.layers(),
            bias="none",
        )

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        lm = self.runtime.lm
        positives = encoded_positives(
            lm, data, max_length=self.cfg.max_length, method="lora", concept=concept
        )
        # Seeded throughout: peft's initialisation and the adapters' dropout draw from it.
        with seeded(seed), self._adapters(init_seed=seed) as adapters:
            trainable = [p for m in adapters.values() for p in _adapter_params(m)]
            for p in trainable:
                p.requires_grad_(True)
            self.loss_history = train_through_lm(
                lm,
                positives,
                [{"params": trainable}],
                self.cfg,
                order=torch.Generator().manual_seed(seed),
                loss_of=lambda batch, _progress: {"loss": response_loss(lm.model, batch)},
                train_modules=[m.lora_dropout for m in adapters.values()],
            )["loss"]
            out = {}
            for name, m in adapters.items():
                out[f"{name}.lora_A"] = _array(m.lora_A[ADAPTER].weight)
                out[f"{name}.lora_B"] = _array(m.lora_B[ADAPTER].weight)
            return out

    @contextmanager
    def steered(self, params: dict[str, np.ndarray]) -> Iterator[None]:
        """The concept's adapters injected (peft) while active; unloaded exactly on exit."""
        with self._adapters(init_seed=0) as adapters:
            expected = {f"{n}.lora_{ab}" for n in adapters for ab in "AB"}
            if set(params) != expected:
                raise ValueError(
                    "method lora: the parameters do not match the adapters this config builds "
                    f"(missing {sorted(expected - set(params))[:4]}, unexpected "
                    f"{sorted(set(params) - expected)[:4]}); retrain or fix method.lora"
                )
            with torch.no_grad():
                for name, m in adapters.items():
                    for ab, layer in (("A", m.lora_A[ADAPTER]), ("B", m.lora_B[ADAPTER])):
                        layer.weight.copy_(torch.as_tensor(params[f"{name}.lora_{ab}"]))
            for m in adapters.values():
                m.lora_dropout.eval()  # no adapter dropout while generating
            yield

    @contextmanager
    def _adapters(self, *, init_seed: int) -> Iterator[dict[str, Any]]:
        """Inject fresh peft LoRA layers into the model; `unload` puts the originals back.

        Initialised from `init_seed` so that the caller's random state is left alone; the base
        weights' `requires_grad` flags, which peft switches off, are restored too.
        """
        from peft.tuners.lora import LoraLayer, LoraModel

        model = self.runtime.lm.model
        before = {n: m for n, m in model.named_modules()}
        with ExitStack() as stack:
            stack.enter_context(frozen(model))
            with seeded(init_seed):
                tuner = LoraModel(model, self.peft_config(), ADAPTER)
            stack.callback(self._check_restored, model, before)
            stack.callback(tuner.unload)
            adapters = {
                n: m
                for n, m in model.named_modules()
                if isinstance(m, LoraLayer) and ADAPTER in m.lora_A
            }
            if not adapters:
                raise ValueError(
                    f"method lora: no module matches target_modules={self.cfg.target_modules} "
                    f"in blocks {self.layers()}"
                )
            yield adapters

    @staticmethod
    def _check_restored(model: Any, before: dict[str, Any]) -> None:
        after = dict(model.named_modules())
        if after.keys() != before.keys() or any(after[n] is not m for n, m in before.items()):
            raise RuntimeError("method lora: peft did not restore the original modules")


def _adapter_params(module: Any) -> list[torch.nn.Parameter]:
    return [module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
