"""The steering custom op under torch.compile against the eager steering hook.

A real decoder (the first 3 blocks of SmolLM2-135M, its own weights) decodes greedily twice: once
eager with the HF engine's forward hook (`add_to_residual`), once compiled with the op attached
to the same block and its buffers refilled before every step. Logits must agree at the prefill
and at every decode step, steered rows must differ from the unsteered run at every step, and the
compiled graphs must contain the op (so no Python hook does the steering).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axflow.lm.residual import add_to_residual
from axflow.lm.steer_op import SteeringBuffers, attach, check_table

LAYER = 1  # output of the middle block of 3: block 2 attends to steered keys and values
STEPS = 6  # prefill + 5 decode steps
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "List three fruits."]
ROWS = np.array([0, 1, 2])  # request 0 unsteered
SCALES = np.array([3.0, 4.0, -3.0], np.float32)  # row 0 with any scale stays unsteered


def _table(d: int, rows: int = 3, norm: float = 12.0) -> torch.Tensor:
    vec = torch.randn(rows, d, generator=torch.Generator().manual_seed(0))
    vec = norm * vec / vec.norm(dim=1, keepdim=True)
    vec[0] = 0
    return vec


@pytest.fixture(scope="module")
def decoder(smollm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axflow.lm.models import weights_dir
    from axflow.lm.prompts import format_prompt

    folder = weights_dir(smollm_dir)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, num_hidden_layers=3, attn_implementation="sdpa"
    ).eval()
    texts = [format_prompt(tok, p, chat=True) for p in PROMPTS]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = min(map(len, ids))  # equal lengths: no padding, tokens are [B, T] flattened
    return model, torch.tensor([i[:width] for i in ids])


def _greedy(model, ids, before_step=lambda tokens_per_request: None) -> torch.Tensor:
    """Last-position logits [STEPS, B, V] of a greedy KV-cached decode."""
    from transformers import StaticCache

    # A static cache keeps tensor shapes fixed, so torch.compile traces one prefill and one
    # decode graph instead of one per step.
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + STEPS)
    x, out = ids, []
    with torch.no_grad():
        for _ in range(STEPS):
            before_step(x.shape[1])
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(logits)
            x = logits.argmax(-1, keepdim=True)
    return torch.stack(out)


def _compiled_run(decoder, backend: str) -> tuple[torch.Tensor, list[str]]:
    """Decode with the op attached and the model compiled; the steering ops in each graph."""
    model, ids = decoder
    table = _table(model.config.hidden_size)
    buffers = SteeringBuffers(table, max_tokens=ids.numel())
    graphs: list[list[str]] = []

    def recording(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if "axflow" in str(n.target)])
        if backend == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def fill(tokens_per_request: int) -> None:
        buffers.fill(ROWS, SCALES, np.full(len(ROWS), tokens_per_request))

    block = model.model.layers[LAYER]
    detach = attach(block, buffers)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=recording, dynamic=False)
        logits = _greedy(compiled, ids, fill)
    finally:
        detach()
        torch._dynamo.reset()
    return logits, [op for ops in graphs for op in ops]


@pytest.fixture(scope="module")
def eager(decoder):
    """(unsteered, steered by the HF engine's hook) logits of the same decode."""
    model, ids = decoder
    table = _table(model.config.hidden_size)
    deltas = torch.from_numpy(SCALES)[:, None] * table[torch.from_numpy(ROWS)]
    plain = _greedy(model, ids)
    with add_to_residual(model.model.layers[LAYER], deltas):
        hooked = _greedy(model, ids)
    return plain, hooked


# aot_eager: dynamo and AOTAutograd trace the decoder with the op's fake impl, exactly as for
# inductor, but skip inductor's C++ build of each kernel (45 s cold on 2 busy cores for these
# two graphs); inductor compiles the op itself in the residual-layout test below.
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_op_matches_the_eager_hook_at_every_step(decoder, eager, backend):
    plain, hooked = eager
    compiled, ops = _compiled_run(decoder, backend)
    # The prefill and the decode shape each compile a graph, and each graph holds the op.
    assert ops.count("axflow.steer_add") >= 2, ops
    for step in range(STEPS):
        gap = (compiled[step] - hooked[step]).abs().max().item()
        assert gap < 1e-3, f"step {step}: compiled op vs eager hook differ by {gap}"
        assert torch.equal(compiled[step].argmax(-1), hooked[step].argmax(-1))
        # Steered requests are moved at every step; the row-0 request is not.
        moved = (hooked[step, 1:] - plain[step, 1:]).abs().amax(-1)
        assert bool((moved > 100 * 1e-3).all()), f"step {step}: steering moved only {moved}"
        assert (compiled[step, 0] - plain[step, 0]).abs().max().item() < 1e-3


def test_eager_op_equals_the_hook_bit_for_bit(decoder, eager):
    model, ids = decoder
    buffers = SteeringBuffers(_table(model.config.hidden_size), max_tokens=ids.numel())
    detach = attach(model.model.layers[LAYER], buffers)
    try:
        logits = _greedy(model, ids, lambda n: buffers.fill(ROWS, SCALES, np.full(len(ROWS), n)))
    finally:
        detach()
    assert torch.equal(logits, eager[1])


def test_residual_layout_matches_the_stream_and_keeps_unsteered_tokens():
    """vLLM's (hidden, residual) output: steered tokens become (stream + delta, 0), the rest are
    untouched; the same under torch.compile; opcheck validates schema, fake impl and tracing."""
    torch.manual_seed(1)
    table = _table(16)
    buffers = SteeringBuffers(table, max_tokens=12)
    counts = np.array([2, 3, 1, 1])
    n = buffers.fill(np.array([1, 0, 2, 1]), np.array([2.0, 5.0, -1.0, 0.0], np.float32), counts)
    hidden, residual = torch.randn(n, 16), torch.randn(n, 16)
    h, r = buffers.apply((hidden, residual))
    steered = torch.tensor([1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    delta = torch.cat([2.0 * table[1][None].expand(2, -1), -1.0 * table[2][None]])
    assert torch.equal(h[steered], hidden[steered] + residual[steered] + delta)
    assert not r[steered].any()
    assert torch.equal(h[~steered], hidden[~steered]) and torch.equal(
        r[~steered], residual[~steered]
    )
    compiled = torch.compile(lambda a, b: buffers.apply((a, b)), fullgraph=True, backend="inductor")
    hc, rc = compiled(hidden, residual)
    assert torch.allclose(hc, h, atol=1e-5) and torch.equal(rc, r)
    for op, args in [
        (torch.ops.axflow.steer_add_residual.default, (hidden, residual)),
        (torch.ops.axflow.steer_add.default, (hidden,)),
    ]:
        torch.library.opcheck(op, (*args, buffers.table, buffers.rows, buffers.scales))


def test_fill_zeroes_stale_tokens_and_rejects_bad_input():
    buffers = SteeringBuffers(_table(4), max_tokens=8)
    buffers.fill(np.array([1, 2]), np.array([1.0, 1.0], np.float32), np.array([3, 3]))
    buffers.fill(np.array([2]), np.array([0.5], np.float32), np.array([2]))
    assert buffers.rows.tolist() == [2, 2, 0, 0, 0, 0, 0, 0]
    assert buffers.scales.tolist() == [0.5, 0.5, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        buffers.fill(np.array([1]), np.array([1.0], np.float32), np.array([9]))
    with pytest.raises(ValueError, match="rows must lie in 0..2"):
        buffers.fill(np.array([3]), np.array([1.0], np.float32), np.array([1]))
    bad = _table(4)
    bad[0, 1] = 1.0
    with pytest.raises(ValueError, match="row 0 of steering table must be zeros"):
        check_table(bad)
    block = torch.nn.Linear(4, 4)
    detach = attach(block, buffers)
    with pytest.raises(ValueError, match="already has steering attached"):
        attach(block, buffers)
    detach()
    assert "forward" not in vars(block)
