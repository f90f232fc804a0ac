"""Method registry and the one interface every method implements.

A method is one module in this package: a config dataclass and a `Method` subclass registered
with `@register("name")`. The workflow never special-cases a method; it reads three capability
flags instead:

- `detects`: the method gives per-token scores (`token_scores`), so it gets a detect job.
- `steering`: "add" (a vector added to the residual stream, strength = factor × the concept's max
  detection activation) or "prompt" (the concept is written into the prompt).
- `factor_free`: the steering output ignores the factor, so it is generated once per instruction.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

_REGISTRY: dict[str, type[Method]] = {}


@dataclass
class TokenBatch:
    """Token-level training data of one concept: positives plus its genre's negatives."""

    acts: np.ndarray  # [n_tokens, d] float32 residual activations
    example: np.ndarray  # [n_tokens] int, which example (sequence) each token belongs to
    label: np.ndarray  # [n_tokens] int8, 1 if the token's example is a positive

    def example_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(unique example ids, their labels)."""
        ids, first = np.unique(self.example, return_index=True)
        return ids, self.label[first]


class Method:
    """Base class: subclasses set `Config` and implement `fit` (and `token_scores` if detecting)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = dict
    detects: ClassVar[bool] = True
    steering: ClassVar[str] = "add"
    factor_free: ClassVar[bool] = False

    def __init__(self, cfg: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        extra = set(cfg) - fields - {"kind"}
        if extra:
            raise ValueError(
                f"method {self.name!r}: unknown config key(s) {sorted(extra)}; "
                f"valid keys: {sorted(fields)}"
            )
        self.cfg = self.Config(**{k: v for k, v in cfg.items() if k in fields})

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        """Learn this concept's parameters (arrays; stacked over concepts by the train stage)."""
        raise NotImplementedError

    def token_scores(self, params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
        """Detection score of every token ([n_tokens]) from `acts` ([n_tokens, d]).

        Default for rank-1 methods: the projection h·w on the learned direction.
        """
        if not self.detects:
            raise NotImplementedError(f"method {self.name!r} does not detect")
        return np.asarray(acts, dtype=np.float32) @ params["direction"].astype(np.float32)

    def steering_vector(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """Unit-norm direction added to the residual stream (for steering == 'add')."""
        v = np.asarray(params["direction"], dtype=np.float32)
        return v / max(float(np.linalg.norm(v)), 1e-12)


def orient_to_positives(
    direction: np.ndarray, acts: np.ndarray, positive: np.ndarray
) -> np.ndarray:
    """Flip a sign-ambiguous direction (a principal component) so positives project higher."""
    if positive.all() or not positive.any():
        return direction
    gap = acts[positive].mean(axis=0) - acts[~positive].mean(axis=0)
    return -direction if float(gap @ direction) < 0 else direction


def register(name: str):
    """Class decorator adding a method to the registry under `name`."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def method_class(kind: str) -> type[Method]:
    """The registered class for `kind`; a clear error lists the known ones."""
    _import_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown method kind {kind!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def build_method(cfg: dict[str, Any]) -> Method:
    """Instantiate the method described by a `method.<name>` config slice (needs `kind`)."""
    return method_class(cfg["kind"])(cfg)
