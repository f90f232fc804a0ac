"""Activation-extraction throughput against a roofline measured in the same run.

Roofline = measured fp32 matmul GFLOP/s ÷ FLOPs per token up to (and including) the hooked
block. Extraction stops the forward pass after that block, so the FLOPs above it are not counted.
Last line: `extract_roofline_fraction: <value>`.

    .venv/bin/python bench/extract.py [--layer 10] [--examples 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def matmul_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` fp32 GEMM rate (the machine's practical peak for these kernels)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(config, layers: int, mean_len: float) -> float:
    """Forward FLOPs per token through `layers` decoder blocks (projections, MLP, attention)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (d // heads)
    ffn = config.intermediate_size
    proj = 2 * d * (d + 2 * kv + d)  # q, k, v, o
    mlp = 2 * 3 * d * ffn  # gate, up, down
    attn = 2 * 2 * d * (mean_len / 2)  # QK^T and AV over the causal context, on average
    return layers * (proj + mlp + attn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None, help="prepared model folder")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from axflow.data.sources import load_instruction_pool
    from axflow.lm.extract import extract_residuals
    from axflow.lm.models import load_model, prepare_model
    from axflow.lm.prompts import shared_prefix_length, tokenize_example

    model_dir = Path(args.model_dir) if args.model_dir else Path("results/bench/smollm2")
    if not model_dir.exists():  # the default config's model, prepared as its rule does
        from axflow.config import compose

        prepare_model(compose()["model"], model_dir)
    lm = load_model(model_dir)
    pool = load_instruction_pool(None)["instruction"].to_list()
    # Realistic lengths: an instruction plus a response of several instructions (~100 tokens).
    examples = [
        (pool[i % len(pool)], " ".join(pool[(i + k) % len(pool)] for k in range(1, 6)))
        for i in range(args.examples)
    ]
    lens = [len(tokenize_example(lm.tokenizer, q, r, lm.chat, 256)[0]) for q, r in examples]
    tokens = sum(lens)
    prefix = shared_prefix_length(lm.tokenizer, lm.chat)

    list(extract_residuals(lm, examples[:16], layer=args.layer))  # warm-up
    t = time.perf_counter()
    kept = sum(len(e.positions) for e in extract_residuals(lm, examples, layer=args.layer))
    elapsed = time.perf_counter() - t

    peak = matmul_gflops(args.threads)
    fpt = flops_per_token(lm.model.config, args.layer + 1, sum(lens) / len(lens))
    roofline = peak * 1e9 / fpt
    rate = tokens / elapsed
    print(f"examples: {len(examples)}, tokens forwarded: {tokens} (kept {kept}, prefix {prefix})")
    print(f"matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads, fp32)")
    print(f"FLOPs/token through block {args.layer}: {fpt / 1e6:.1f} MFLOP")
    print(f"roofline: {roofline:.0f} tokens/s; measured: {rate:.0f} tokens/s")
    print(f"extract_roofline_fraction: {rate / roofline:.3f}")


if __name__ == "__main__":
    main()
