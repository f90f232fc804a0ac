"""Steering modes: each residual edit does what its definition says, in real generation at
prefill and at every decode step, and a new mode plugs into planning and engines by itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axflow.config import compose
from axflow.lm.generate import GenerationRequest, generate
from axflow.lm.prompts import format_prompt
from axflow.methods import build_method, method_class
from axflow.plan import make_plan
from axflow.protocol import steering


def _unit(d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_clamp_sets_the_projection_and_keeps_the_rest():
    u = _unit(16)
    h = torch.randn(5, 16)
    out = steering.Clamp.of(u, 3.0)(h)
    ut = torch.from_numpy(u)
    torch.testing.assert_close(out @ ut, torch.full((5,), 3.0))
    rest = lambda x: x - (x @ ut)[:, None] * ut  # noqa: E731
    torch.testing.assert_close(rest(out), rest(h))


def test_add_adds_strength_times_the_unit_vector():
    u = _unit(8)
    h = torch.randn(3, 8)
    torch.testing.assert_close(steering.Add.of(u, 2.5)(h), h + 2.5 * torch.from_numpy(u))


def test_clamp_holds_at_prefill_and_every_decode_step(smollm):
    """The stream entering the block after the steering layer has projection = strength on the
    direction, at every prompt position and at each generated token."""
    layer, strength = 3, 4.0
    d = smollm.model.config.hidden_size
    u = _unit(d, seed=1)
    seen: list[torch.Tensor] = []
    hook = smollm.layers[layer + 1].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0][0].detach().clone())
    )
    try:
        text = format_prompt(smollm.tokenizer, "Write about the sea.", smollm.chat)
        req = GenerationRequest(text, seed=0, edit=steering.Clamp.of(u, strength))
        generate(smollm, [req], layer=layer, max_new_tokens=4, temperature=0.0)
    finally:
        hook.remove()
    assert len(seen) >= 2 and seen[0].shape[0] > 1 and seen[1].shape[0] == 1
    for hidden in seen:  # prefill, then one position per decode step
        proj = hidden.float() @ torch.from_numpy(u)
        torch.testing.assert_close(proj, torch.full_like(proj, strength), atol=1e-3, rtol=1e-4)


def test_a_new_mode_needs_nothing_but_its_method_and_protocol():
    cls = method_class("diffmean_clamp")
    assert cls.steering in steering.RESIDUAL_MODES and steering.uses_strength(cls)
    assert steering.engine_for(cls, "vllm") == "hf"  # vLLM batches additive edits only
    assert steering.engine_for(method_class("diffmean"), "vllm") == "vllm"
    plan = make_plan(compose(["method=[diffmean_clamp]", "dataset.max_concepts=2"]))
    (m,) = plan.methods
    assert m.detect_keys and m.steer_keys  # strength comes from its detect job
    method = build_method({"kind": "diffmean_clamp"})
    params = {"direction": _unit(6) * 3}
    (req,) = steering.steer_requests(
        method,
        [{"concept_id": 0, "input_id": 7, "instruction": "hi", "split": "test"}],
        {0: "the sea"},
        lambda cid: params,
        [0.5],
        {0: 8.0},
        lambda *key: 1,
    )
    assert isinstance(req.edit, steering.Clamp) and req.strength == pytest.approx(4.0)
    np.testing.assert_allclose(np.linalg.norm(req.edit.unit), 1.0, rtol=1e-6)
