"""How a concept steers a generation (AxBench §3.2): the mode, its strength, and the requests.

A method's steering mode (`Method.steering`) is one of
- "prompt": the concept is written into the prompt (`Method.prompt_for`);
- "model": the method swaps in the concept's model while that concept's rows generate
  (`Method.steered`);
- a residual mode (`RESIDUAL_MODES`): every request carries an edit of the residual stream at the
  method's layer, sized by strength = factor × the concept's max detection activation (a max of
  ≤ 0 falls back to 50, as in AxBench). "add" adds strength × the unit steering vector (the form
  the vLLM engine batches); "clamp" sets the stream's projection on that vector to the strength
  at every position.

A new residual mode is an edit class here plus the method's `steering = "<mode>"`; the stages,
the plan and the engines read only this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STRENGTH_FALLBACK = 50.0


def strength_base(concept_ids: Iterable[int], max_acts: Iterable[float]) -> dict[int, float]:
    """Per concept, what a factor of 1 means: its max detection activation (≤ 0 → 50)."""
    return {
        int(c): (float(a) if a > 0 else STRENGTH_FALLBACK)
        for c, a in zip(concept_ids, max_acts, strict=True)
    }


@dataclass(frozen=True)
class Add:
    """h + strength · v̂ at every position."""

    delta: np.ndarray  # [d] float32: strength × unit vector

    @classmethod
    def of(cls, unit: np.ndarray, strength: float) -> Add:
        return cls((strength * np.asarray(unit, np.float32)).astype(np.float32))

    def __call__(self, h):
        return h + h.new_tensor(self.delta)


@dataclass(frozen=True)
class Clamp:
    """h + (strength − h·v̂) v̂ at every position: the projection on v̂ is set to the strength,
    the rest of the stream is left as it was."""

    unit: np.ndarray  # [d] float32, unit norm
    strength: float

    @classmethod
    def of(cls, unit: np.ndarray, strength: float) -> Clamp:
        return cls(np.asarray(unit, np.float32), float(strength))

    def __call__(self, h):
        u = h.new_tensor(self.unit)
        return h + (self.strength - h @ u)[..., None] * u


RESIDUAL_MODES: dict[str, type] = {"add": Add, "clamp": Clamp}


def uses_strength(method: Any) -> bool:
    """Whether the method's steering is sized by its detection output (an explicit dependency
    of its steer job on its detect job)."""
    return bool(method.detects) and method.steering in RESIDUAL_MODES


def engine_for(method: Any, engine: str) -> str:
    """The engine a method's steer job runs on: vLLM serves prompts and additive edits (a
    per-request vector); every other mode generates on hf."""
    if engine == "vllm" and (
        method.steering == "prompt" or RESIDUAL_MODES.get(method.steering) is Add
    ):
        return "vllm"
    return "hf"


def edit_for(method: Any, params: dict[str, np.ndarray], strength: float):
    """The residual edit of one concept at one strength, in the method's mode."""
    return RESIDUAL_MODES[method.steering].of(method.steering_vector(params), strength)


@dataclass
class SteerRequest:
    """One generation to make: the prompt as text, its seed, and its residual edit (or None)."""

    concept_id: int
    prompt: dict[str, Any]  # the steering prompt's row (input_id, instruction, split)
    factor: float | None
    strength: float | None
    user: str  # the user turn (the instruction, or the instruction with the concept for prompting)
    seed: int
    edit: Any = None


def steer_requests(
    method: Any,
    prompts: Sequence[dict[str, Any]],
    concepts: dict[int, str],
    params_of: Callable[[int], dict[str, np.ndarray]],
    factors: Sequence[float],
    base: dict[int, float],
    seed_of: Callable[..., int],
) -> list[SteerRequest]:
    """Every request of a steer job: per prompt of a concept with parameters, per factor (once
    when the method is factor-free). `seed_of(cid, input_id, factor)` seeds each row."""
    out = []
    for p in prompts:
        cid = p["concept_id"]
        user = (
            method.prompt_for(concepts[cid], p["instruction"])
            if method.steering == "prompt"
            else p["instruction"]
        )
        for factor in [None] if method.factor_free else factors:
            strength, edit = None, None
            if method.steering in RESIDUAL_MODES:
                strength = float(factor) * base.get(cid, 1.0)
                edit = edit_for(method, params_of(cid), strength)
            seed = seed_of(cid, p["input_id"], factor)
            out.append(SteerRequest(cid, p, factor, strength, user, seed, edit))
    return out
