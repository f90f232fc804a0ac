"""The roofline the benches compare against: a GEMM peak measured in the same run, and the
forward FLOPs per token of a decoder from its config."""

from __future__ import annotations

import time

import torch


def matmul_gflops(threads: int, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5):
    """Best-of-`reps` GEMM rate in `dtype` (the machine's practical peak for these kernels)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(config, layers: int, mean_len: float, lm_head: bool = False) -> float:
    """Forward FLOPs per token through `layers` decoder blocks (projections, MLP, attention over
    `mean_len` tokens of context on average), plus the vocabulary projection if `lm_head`."""
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (d // heads)
    ffn = config.intermediate_size
    proj = 2 * d * (d + 2 * kv + d)  # q, k, v, o
    mlp = 2 * 3 * d * ffn  # gate, up, down
    attn = 2 * 2 * d * mean_len  # QK^T and AV over the context
    head = 2 * d * config.vocab_size if lm_head else 0
    return layers * (proj + mlp + attn) + head
