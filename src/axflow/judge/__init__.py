"""Steering judges: rate a generation for concept, instruction relevance and fluency (0-2 each).

A judge backend is a class registered by name with `@register_judge`; `build_judge` picks one from
the `judge/` config group (`cfg["name"]`). Backends: `embedded` (offline: MiniLM similarity and
target-model perplexity) and `openai` (any OpenAI-compatible chat endpoint, AxBench's protocol).
Every backend routes its model calls through a `CallCache`, so reruns cost nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from axflow.calls import CallCache
from axflow.judge.rubric import harmonic_mean, parse_rating

__all__ = [
    "CallCache",
    "Judge",
    "JudgeItem",
    "Rating",
    "build_judge",
    "harmonic_mean",
    "parse_rating",
    "register_judge",
]


@dataclass(frozen=True)
class JudgeItem:
    """One generation to rate, with the concept it was steered towards and its instruction."""

    concept: str
    instruction: str
    generation: str


@dataclass(frozen=True)
class Rating:
    """Scores of one generation; a sub-score the judge could not produce is None, never 0."""

    concept_score: float | None
    instruction_score: float | None
    fluency_score: float | None
    perplexity: float | None = None
    failures: int = 0  # how many of the three sub-scores could not be obtained

    @property
    def overall(self) -> float | None:
        """AxBench's overall score (harmonic mean), or None if any sub-score is missing."""
        scores = (self.concept_score, self.instruction_score, self.fluency_score)
        if any(s is None for s in scores):
            return None
        return harmonic_mean(scores)  # type: ignore[arg-type]


class Judge(Protocol):
    """What the workflow needs from a judge backend."""

    name: str

    def rate(self, items: list[JudgeItem]) -> list[Rating]:
        """One Rating per item, in item order."""
        ...


JudgeFactory = Callable[..., Judge]
_REGISTRY: dict[str, JudgeFactory] = {}
# Built-in backends import torch or openai, so they are imported only when asked for.
_BUILTIN_MODULES = {
    "embedded": "axflow.judge.embedded",
    "openai": "axflow.judge.openai_judge",
}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register a backend under `name`; it is called as `factory(cfg, model_dir=..., cache=...)`."""

    def decorate(factory: JudgeFactory) -> JudgeFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a judge backend named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def build_judge(cfg: Mapping[str, Any], *, model_dir: str | None, cache: CallCache) -> Judge:
    """The judge backend `cfg["name"]`, configured by the rest of `cfg`.

    `model_dir` is the target model's HF folder (the embedded backend scores fluency with it);
    backends that do not need it ignore it.
    """
    name = cfg.get("name")
    if name is None:
        raise ValueError(
            "the judge config has no `name`; set judge=embedded or judge=openai "
            f"(known backends: {sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))})"
        )
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown judge backend {name!r}; known backends: "
            f"{sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))}"
        )
    return _REGISTRY[name](dict(cfg), model_dir=model_dir, cache=cache)


def config_from_dict(
    cls: type, cfg: Mapping[str, Any], backend: str, group: str = "judge"
) -> Any:
    """Build a backend's config dataclass from a plain dict, naming any unknown key."""
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(cfg) - fields - {"name"})
    if unknown:
        raise ValueError(
            f"{group} config for backend {backend!r} has unknown key(s) {unknown}; "
            f"known keys: {sorted(fields)}. Fix config/{group}/{backend}.yaml or the override."
        )
    return cls(**{k: v for k, v in cfg.items() if k != "name"})
