"""Prompt steering: the concept is written into the user's instruction; nothing is trained.

AxBench §2.4 (`PromptSteering`) has gpt-4o-mini write a per-concept prompt that tells the model to
include the concept. Here the concept goes into a fixed template of our own, so the baseline needs
no external LM: the model is asked to answer the request while working the concept into its
answer. The factor is irrelevant, so each instruction is generated once (`factor_free`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Method, TokenBatch, register

STEERING_TEMPLATE = (
    "Answer the request below. Make this concept a clear and natural part of your whole answer, "
    "even if the request does not call for it: {concept}\n\n"
    "Request: {instruction}"
)


def steering_prompt(concept: str, instruction: str, template: str = STEERING_TEMPLATE) -> str:
    """The user turn that asks the model to follow `instruction` while weaving in `concept`."""
    return template.format(concept=concept.strip(), instruction=instruction.strip())


@dataclass
class PromptConfig:
    template: str = STEERING_TEMPLATE  # must contain {concept} and {instruction}

    def __post_init__(self) -> None:
        missing = [k for k in ("{concept}", "{instruction}") if k not in self.template]
        if missing:
            raise ValueError(
                f"method prompt: template lacks the placeholder(s) {missing}; "
                "write both {concept} and {instruction} into method.prompt.template"
            )


@register("prompt")
class Prompt(Method):
    Config = PromptConfig
    detects = False
    steering = "prompt"
    factor_free = True

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        return {}

    def prompt_for(self, concept: str, instruction: str) -> str:
        """`steering_prompt` with this method's configured template."""
        return steering_prompt(concept, instruction, self.cfg.template)
