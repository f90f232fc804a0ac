"""The steering add as one registered torch op over persistent per-token buffers.

Python forward hooks never run inside a compiled graph (vLLM's guard-free torch.compile, CUDA
graph replay), so steering that must survive compilation is an op the graph records once:
`axflow::steer_add` adds `scales[t] * table[rows[t]]` to token t of a decoder block's output,
reading the row index and scale from buffers whose storage never moves. Before each step the
caller rewrites their contents (`SteeringBuffers.fill`); the recorded graph then steers that
step's tokens without being traced again. Row 0 of the table is zeros, and a token with row 0
or scale 0 keeps its input bit for bit.

Two layouts of a block's output are covered:
- one tensor `[..., d]`, the residual stream (HF transformers): `steer_add`;
- `(hidden, residual)` whose sum is the stream (vLLM's fused add+norm layers):
  `steer_add_residual` returns `(hidden + residual + delta, 0)` on steered tokens, so the next
  layer's fused add sees exactly the stream plus delta that HF's hook produces, and the
  unsteered tokens' tensors unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _delta_and_mask(x: Tensor, table: Tensor, rows: Tensor, scales: Tensor):
    """Per-token delta in the dtype of `x` and the steered-token mask, for x.shape[0] tokens."""
    n = x.shape[0]
    rows, scales = rows[:n], scales[:n]
    delta = (table.index_select(0, rows) * scales[:, None]).to(x.dtype)
    return delta, ((rows != 0) & (scales != 0))[:, None]


@torch.library.custom_op("axflow::steer_add", mutates_args=())
def steer_add(stream: Tensor, table: Tensor, rows: Tensor, scales: Tensor) -> Tensor:
    """`stream` ([..., d], tokens flattened in order) plus scales[t] * table[rows[t]] on token t."""
    flat = stream.reshape(-1, stream.shape[-1])
    delta, on = _delta_and_mask(flat, table, rows, scales)
    return torch.where(on, flat + delta, flat).reshape(stream.shape)


@steer_add.register_fake
def _steer_add_fake(stream, table, rows, scales):
    return torch.empty_like(stream)


@torch.library.custom_op("axflow::steer_add_residual", mutates_args=())
def steer_add_residual(
    hidden: Tensor, residual: Tensor, table: Tensor, rows: Tensor, scales: Tensor
) -> tuple[Tensor, Tensor]:
    """`(hidden + residual + delta, 0)` on steered tokens, `(hidden, residual)` copies elsewhere."""
    delta, on = _delta_and_mask(hidden, table, rows, scales)
    return (
        torch.where(on, hidden + residual + delta, hidden),
        torch.where(on, torch.zeros_like(residual), residual),
    )


@steer_add_residual.register_fake
def _steer_add_residual_fake(hidden, residual, table, rows, scales):
    return torch.empty_like(hidden), torch.empty_like(residual)


def check_table(table: Tensor | np.ndarray, where: str = "steering table") -> Tensor:
    """`table` as a float32 `[R, d]` tensor, or a ValueError saying what is wrong with it."""
    table = torch.as_tensor(table, dtype=torch.float32)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"{where} has shape {tuple(table.shape)}; expected [R, d]")
    if bool(table[0].any()):
        raise ValueError(f"row 0 of {where} must be zeros (the unsteered row)")
    return table


class SteeringBuffers:
    """The persistent state `steer_add` reads: per-token `rows` (int64) and `scales` (float32)
    of length `max_tokens`, and the `[R, d]` table. `fill` rewrites them in place, so a graph
    that recorded these tensors sees each step's steering; entries past the step's tokens are
    zero (padded tokens of a captured batch are unsteered)."""

    def __init__(self, table: Tensor | np.ndarray, max_tokens: int, device: Any = None):
        self.table = check_table(table).to(device)
        self.rows = torch.zeros(max_tokens, dtype=torch.long, device=self.table.device)
        self.scales = torch.zeros(max_tokens, dtype=torch.float32, device=self.table.device)
        self.filled = 0  # tokens written by the last fill; the rest are already zero

    @property
    def max_tokens(self) -> int:
        return int(self.rows.shape[0])

    def fill(self, rows: np.ndarray, scales: np.ndarray, counts: np.ndarray) -> int:
        """Request k's row and scale on its `counts[k]` consecutive tokens; the token count."""
        n = int(np.sum(counts))
        if n > self.max_tokens:
            raise ValueError(
                f"a step of {n} tokens exceeds the steering buffers' {self.max_tokens} tokens; "
                "create SteeringBuffers with max_tokens >= the engine's max_num_batched_tokens"
            )
        if np.any((rows < 0) | (rows >= self.table.shape[0])):
            raise ValueError(f"steering rows must lie in 0..{self.table.shape[0] - 1}")
        tok_rows = torch.from_numpy(np.repeat(np.asarray(rows, np.int64), counts))
        tok_scales = torch.from_numpy(np.repeat(np.asarray(scales, np.float32), counts))
        self.rows[:n].copy_(tok_rows)
        self.scales[:n].copy_(tok_scales)
        if self.filled > n:
            self.rows[n : self.filled].zero_()
            self.scales[n : self.filled].zero_()
        self.filled = n
        return n

    def clear(self) -> None:
        """No token steered until the next fill."""
        self.rows[: self.filled].zero_()
        self.scales[: self.filled].zero_()
        self.filled = 0

    def apply(self, output: Any) -> Any:
        """A decoder block's output with this step's steering added (either layout)."""
        if not isinstance(output, tuple):
            return torch.ops.axflow.steer_add(output, self.table, self.rows, self.scales)
        hidden, residual = output[0], output[1] if len(output) > 1 else None
        if residual is None:
            steered = torch.ops.axflow.steer_add(hidden, self.table, self.rows, self.scales)
            return (steered, *output[1:])
        hidden, residual = torch.ops.axflow.steer_add_residual(
            hidden, residual, self.table, self.rows, self.scales
        )
        return (hidden, residual, *output[2:])


def attach(block: torch.nn.Module, buffers: SteeringBuffers) -> Callable[[], None]:
    """Make `block.forward` end with `buffers.apply`, traceable by torch.compile (no hook);
    returns the function that restores the block's own forward. Module paths, parameter
    names and state-dict keys stay as they were."""
    if "forward" in vars(block):
        raise ValueError(f"{type(block).__name__} already has steering attached; detach first")
    inner = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return buffers.apply(inner(*args, **kwargs))

    block.forward = forward

    def detach() -> None:
        vars(block).pop("forward", None)

    return detach
