"""Method registry and the one interface every method implements.

A method is one module in this package: a config dataclass (types and checks; the defaults are
in `config/method/<kind>.yaml`, see `axflow.defaults`) and a `Method` subclass registered with
`@register("kind")`. The stages never special-case a method; they read capability flags and
call only what `Method` declares:

- `detects`: the method scores detection-eval examples, so it gets a detect job. `detect_level`
  says how: "token" (`token_scores` on cached activations, max-pooled per example) or
  "sequence" (`sequence_scores` on the examples' texts, e.g. BoW or asking the model).
- `steering`: "add" (`steering_vector`, added to the residual stream with strength = factor ×
  the concept's max detection activation), "prompt" (`prompt_for` writes the concept into the
  prompt), "model" (`steered` changes the model while its concept's rows generate) or None
  (detection only).
- `factor_free`: the steering output ignores the factor, so it is generated once per instruction.
- `reads_activations`: training or scoring reads the cached residual activations of the
  configured layer (`TokenBatch.acts`, `token_scores`); False: the method works on the examples'
  text and the model alone (prompt, BoW, LoReFT, LoRA, SFT), never on `runtime.layer`, so its
  train job needs neither that layer nor its activations.
- `trains_on_negatives`: `fit` reads the concept's negative examples; False (prompt, random,
  SSV, LoReFT, LoRA, SFT: positives or nothing): which negatives train a concept
  (`training.negatives`) is left out of its train key, so changing it reruns none of its jobs.

A method that trains through the language model reads it from `self.runtime.lm`, loaded on
first use, so a method that never touches it never loads it. Every method config may also set
`max_concepts: N` (train only the first N concepts, e.g. for full finetuning); a concept that a
method cannot represent raises `Unmatched` in `fit`. Both are reported per concept, never
dropped silently.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from axflow.defaults import build_config
from axflow.registry import Registry

# Kind -> Method subclass, filled by `@register`; a lookup imports the module named like the
# kind first, then the whole package.
METHODS: Registry[type[Method]] = Registry(
    "method kind", package=__name__, fix="Set `kind` to one of them (config/method/)."
)

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
    reads_activations: ClassVar[bool] = True
    trains_on_negatives: ClassVar[bool] = True

    def __init__(self, cfg: dict[str, Any], runtime: Runtime | None = None):
        """`cfg` is a `method.<name>` slice; keys it leaves out come from the kind's YAML."""
        self.cfg = build_config(
            self.Config, cfg, group="method", option=self.name, accept=COMMON_KEYS
        )
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

    def prompt_for(self, concept: str, instruction: str) -> str:
        """For `steering == "prompt"`: the user turn that steers towards `concept`."""
        raise NotImplementedError(f"method {self.name!r} does not steer by prompting")

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
    """Class decorator adding a method to the registry under the kind `name`."""

    def wrap(cls: type[Method]) -> type[Method]:
        METHODS.register(name)(cls)
        cls.name = name
        return cls

    return wrap


def method_class(kind: str) -> type[Method]:
    """The registered class for `kind` (an `UnknownName`, a KeyError, lists the known ones)."""
    return METHODS.get(kind)


def build_method(cfg: dict[str, Any], runtime: Runtime | None = None) -> Method:
    """Instantiate the method described by a `method.<name>` config slice (needs `kind`)."""
    return method_class(cfg["kind"])(cfg, runtime)
