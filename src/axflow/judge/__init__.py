"""Steering judges: rate a generation for concept, instruction relevance and fluency (0-2 each).

A judge backend is a class registered by name with `@register_judge`; `build_judge` picks one from
the `judge/` config group (`cfg["name"]`). Backends: `embedded` (offline: MiniLM similarity and
target-model perplexity) and `openai` (any OpenAI-compatible chat endpoint, AxBench's protocol).
Every backend routes its model calls through a `CallCache`, so reruns cost nothing. A backend's
config dataclass takes its defaults from `config/judge/<name>.yaml` (`config_from_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from axflow.calls import CallCache
from axflow.defaults import build_config
from axflow.judge.rubric import parse_rating
from axflow.rating import JudgeItem, Rating, harmonic_mean
from axflow.registry import Registry

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


class Judge(Protocol):
    """What the workflow needs from a judge backend."""

    name: str

    def rate(self, items: list[JudgeItem]) -> list[Rating]:
        """One Rating per item, in item order."""
        ...


JudgeFactory = Callable[..., Judge]
# Built-in backends import torch or openai, so they are imported only when asked for. The full
# module names also put both backends in the judge stage's code digest (`axflow.codeversion`).
JUDGES: Registry[JudgeFactory] = Registry(
    "judge backend",
    lazy={"embedded": "axflow.judge.embedded", "openai": "axflow.judge.openai_judge"},
    fix="Set judge=<name> (config/judge/); judge=vllm_server runs the openai backend.",
)


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register a backend under `name`; it is called as `factory(cfg, model_dir=..., cache=...)`."""
    return JUDGES.register(name)


def build_judge(cfg: Mapping[str, Any], *, model_dir: str | None, cache: CallCache) -> Judge:
    """The judge backend `cfg["name"]`, configured by the rest of `cfg`.

    `model_dir` is the target model's HF folder (the embedded backend scores fluency with it);
    backends that do not need it ignore it.
    """
    name = cfg.get("name")
    if name is None:
        raise ValueError(
            f"the judge config has no `name`; set judge=<name>, one of {JUDGES.names()}"
        )
    return JUDGES.get(name)(dict(cfg), model_dir=model_dir, cache=cache)


def config_from_dict(cls: type, cfg: Mapping[str, Any], backend: str, group: str = "judge") -> Any:
    """A backend's config dataclass from a plain dict: keys it leaves out come from
    `config/<group>/<backend>.yaml`, an unknown key is an error naming it."""
    return build_config(cls, cfg, group=group, option=backend, accept={"name"})
