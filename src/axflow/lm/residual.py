"""Forward hooks on a decoder block output (the residual stream): extraction and steering."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class _StopForward(Exception):
    """Raised by the capture hook so layers above the hooked one never run."""


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def capture_residual(
    model: Any, blocks: list[torch.nn.Module], **inputs: Any
) -> list[torch.Tensor]:
    """Run `model` until every block in `blocks` has run; return their outputs [B, T, d] in order.

    The forward pass stops as soon as the last of them fires, so layers above are never run.
    """
    captured: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_module, _args, output):
            captured[i] = _hidden(output)
            if len(captured) == len(blocks):
                raise _StopForward

        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [captured[i] for i in range(len(blocks))]


@contextmanager
def edit_residual(
    block: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace `block`'s output hidden state h ([B, T, d]) by `edit(h)` while active.

    Gradients flow through `edit`, so a method can train its intervention's parameters.
    """

    def hook(_module, _args, output):
        return _replace_hidden(output, edit(_hidden(output)))

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add_to_residual(block: torch.nn.Module, deltas: torch.Tensor | None) -> Iterator[None]:
    """Add `deltas[b]` ([B, d]) to every position of row b of `block`'s output while active."""
    if deltas is None or not bool(deltas.abs().sum()):
        yield
        return
    with edit_residual(block, lambda h: h + deltas[:, None, :].to(h.dtype)):
        yield
