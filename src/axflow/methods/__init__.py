"""Method registry and the one interface every method implements.

A method is one module in this package: a config dataclass and a `Method` subclass registered
with `@register("name")`. The workflow never special-cases a method; it reads capability flags:

- `detects`: the method scores detection-eval examples, so it gets a detect job. `detect_level`
  says how: "token" (`token_scores` on cached activations, max-pooled per example) or
  "sequence" (`sequence_scores` on the examples' texts, e.g. BoW or asking the model).
- `steering`: "add" (a vector added to the residual stream, strength = factor × the concept's max
  detection activation), "prompt" (the concept is written into the prompt), "model" (the method
  changes the model while its concept's rows generate: `steered`) or None (detection only).
- `factor_free`: the steering output ignores the factor, so it is generated once per instruction.
- `uses_lm`: `fit` needs the language model (`self.runtime.lm`), not just cached activations.

Every method config may also set `max_concepts: N` (train only the first N concepts, e.g. for
full finetuning); a concept that a method cannot represent raises `Unmatched` in `fit`. Both are
reported per concept, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_REGISTRY: dict[str, type[Method]] = {}


# Config keys every method accepts besides its own dataclass fields (handled by the stages).
COMMON_KEYS = {"kind", "max_concepts"}


class Unmatched(Exception):
    """Raised by `fit` when the method has nothing for this concept (e.g. no SAE latent fires)."""


@dataclass
class Example:
    """One training or evaluation example as text (the chat template is applied by the user)."""

    example_id: int
    instruction: str
    response: str
    label: int  # 1 positive, 0 otherwise
    category: str = ""


@dataclass
class TokenBatch:
    """Training data of one concept: positives plus its genre's negatives.

    `acts` are the cached residual activations of every token after the shared chat prefix;
    `examples` are the same examples as text, in ascending `example_id` order, for methods that
    train through the language model or on words; `sae_id` is the concept's own SAE feature where
    its data carries one (imported AxBench data does), for the SAE method.
    """

    acts: np.ndarray  # [n_tokens, d] float32 residual activations
    example: np.ndarray  # [n_tokens] int, which example (sequence) each token belongs to
    label: np.ndarray  # [n_tokens] int8, 1 if the token's example is a positive
    examples: list[Example] = field(default_factory=list)
    # The concept's SAE feature index where the data names one (AxBench's `sae_id`), else None.
    sae_id: int | None = None

    def example_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(unique example ids, their labels)."""
        ids, first = np.unique(self.example, return_index=True)
        return ids, self.label[first]


class Runtime:
    """What a job gives its method besides data: the layer, and the LM loaded on first use."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        layer: int | None = None,
        dtype: str = "float32",
        chat: bool = True,
        lm: Any = None,
    ):
        self.model_dir = Path(model_dir) if model_dir else None
        self.layer, self.dtype, self.chat = layer, dtype, chat
        self._lm = lm

    @property
    def lm(self) -> Any:
        """The job's `LoadedModel` (loaded once, on first access)."""
        if self._lm is None:
            if self.model_dir is None:
                raise RuntimeError("this job was given no model (Runtime.model_dir is None)")
            from axflow.lm.models import load_model

            self._lm = load_model(self.model_dir, dtype=self.dtype, chat=self.chat)
        return self._lm


class Method:
    """Base class: subclasses set `Config` and implement `fit` plus their detection/steering."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = dict
    detects: ClassVar[bool] = True
    detect_level: ClassVar[str] = "token"  # "token" | "sequence"
    steering: ClassVar[str | None] = "add"  # "add" | "prompt" | "model" | None
    factor_free: ClassVar[bool] = False
    uses_lm: ClassVar[bool] = False

    def __init__(self, cfg: dict[str, Any], runtime: Runtime | None = None):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        extra = set(cfg) - fields - COMMON_KEYS
        if extra:
            raise ValueError(
                f"method {self.name!r}: unknown config key(s) {sorted(extra)}; "
                f"valid keys: {sorted(fields | COMMON_KEYS - {'kind'})}"
            )
        self.cfg = self.Config(**{k: v for k, v in cfg.items() if k in fields})
        self.runtime = runtime or Runtime()

    def setup(self, data: TokenBatch) -> None:
        """Called once per train job, before any `fit`, with every training example of every
        concept (labels: 1 = any concept's positive). E.g. an SAE is trained or loaded here."""

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        """Learn this concept's parameters (arrays; stacked over concepts by the train stage).

        Raise `Unmatched(reason)` when the method has nothing for this concept.
        """
        raise NotImplementedError

    def sequence_scores(
        self, params: dict[str, np.ndarray], examples: list[Example], *, concept: str
    ) -> np.ndarray:
        """Detection score per example ([n]) for `detect_level == "sequence"` methods."""
        raise NotImplementedError(f"method {self.name!r} has no sequence-level detection")

    def steered(self, params: dict[str, np.ndarray]) -> AbstractContextManager[None]:
        """For `steering == "model"`: change `self.runtime.lm` to this concept's model while
        the context is active (and restore it exactly on exit)."""
        raise NotImplementedError(f"method {self.name!r} does not steer by changing the model")

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
    """The registered class for `kind`; a clear error lists the known ones.

    The module named like the kind is imported first, so planning a run does not pay for every
    method's dependencies; the others are imported only when the kind is elsewhere.
    """
    if kind not in _REGISTRY and importlib.util.find_spec(f"{__name__}.{kind}") is not None:
        importlib.import_module(f"{__name__}.{kind}")
    if kind not in _REGISTRY:
        _import_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown method kind {kind!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def build_method(cfg: dict[str, Any], runtime: Runtime | None = None) -> Method:
    """Instantiate the method described by a `method.<name>` config slice (needs `kind`)."""
    return method_class(cfg["kind"])(cfg, runtime)
