"""Prompt formatting: chat template for instruct models, a plain completion format for base models.

Token positions that carry a concept are those after the *shared prefix* (BOS, system turn, user
header), found as AxBench does by comparing two templated messages.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# Base models (no chat template) read a completion-style prompt.
COMPLETION_PROMPT = "Instruction: {instruction}\nResponse:"


def format_prompt(tok: Any, instruction: str, chat: bool) -> str:
    """The text a model sees before it writes its response."""
    if chat:
        return tok.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
    return COMPLETION_PROMPT.format(instruction=instruction)


def format_example(tok: Any, instruction: str, response: str, chat: bool) -> tuple[str, str]:
    """(prompt, response) pair whose concatenation is the full templated example."""
    prompt = format_prompt(tok, instruction, chat)
    return prompt, (response if chat else " " + response)


@lru_cache(maxsize=8)
def _prefix_length(tok: Any, chat: bool) -> int:
    a = tok(format_prompt(tok, "a", chat), add_special_tokens=not chat)["input_ids"]
    b = tok(format_prompt(tok, "b", chat), add_special_tokens=not chat)["input_ids"]
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def shared_prefix_length(tok: Any, chat: bool) -> int:
    """Number of leading tokens every templated example shares (never concept-bearing)."""
    return _prefix_length(tok, chat)


def tokenize_example(
    tok: Any, instruction: str, response: str, chat: bool, max_length: int
) -> tuple[list[int], int]:
    """Token ids of the templated example and the index where the response starts."""
    prompt, resp = format_example(tok, instruction, response, chat)
    p_ids = tok(prompt, add_special_tokens=not chat)["input_ids"]
    r_ids = tok(resp, add_special_tokens=False)["input_ids"]
    ids = (p_ids + r_ids)[:max_length]
    return ids, min(len(p_ids), len(ids))
