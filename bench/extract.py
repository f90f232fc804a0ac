"""Activation-extraction throughput against a roofline measured in the same run.

Roofline = measured fp32 matmul GFLOP/s ÷ FLOPs per token up to (and including) the hooked
block. Extraction stops the forward pass after that block, so the FLOPs above it are not counted;
padding is not counted either (only real tokens), so padding waste lowers the share.
`--parity` also extracts the same examples one at a time with the padding mask given to the
model (the path before issue 18) and prints the largest activation difference.
`--profile N` prints the N ops with the most self CPU time of one more extraction.
Last line: `extract_roofline_fraction: <value>`.

    .venv/bin/python bench/extract.py [--layer 10] [--examples 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from roofline import flops_per_token, matmul_gflops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None, help="prepared model folder")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=None, help="extract_residuals'")
    parser.add_argument("--parity", type=int, default=0, help="check the first N examples")
    parser.add_argument("--profile", type=int, default=0, help="print the top N ops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from axflow.data.sources import load_instruction_pool
    from axflow.lm.extract import extract_residuals
    from axflow.lm.models import load_model, prepare_model
    from axflow.lm.prompts import shared_prefix_length, tokenize_example
    from axflow.lm.residual import capture_residual

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
    options = {"layer": args.layer}
    if args.batch_tokens:
        options["batch_tokens"] = args.batch_tokens

    peaks = [matmul_gflops(args.threads)]
    list(extract_residuals(lm, examples[:16], **options))  # warm-up
    t = time.perf_counter()
    kept = sum(len(e.positions) for e in extract_residuals(lm, examples, **options))
    elapsed = time.perf_counter() - t
    peaks.append(matmul_gflops(args.threads))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            list(extract_residuals(lm, examples, **options))
            wall = time.perf_counter() - t
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        print(f"profile: {wall:.1f}s wall (profiler overhead included)")
        for e in events[: args.profile]:
            share = e.self_cpu_time_total / 1e6 / wall
            print(f"  {share:6.1%} of wall  {e.count:>8} calls  {e.key}")
    if args.parity:
        worst, scale = 0.0, 0.0
        got = list(extract_residuals(lm, examples[: args.parity], **options))
        for k, ex in enumerate(got):
            seq, _ = tokenize_example(lm.tokenizer, *examples[k], lm.chat, 256)
            ids = torch.tensor([seq])
            (ref,) = capture_residual(
                lm.model,
                [lm.layers[args.layer]],
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
            )
            ref = ref[0, ex.positions].float().numpy()
            worst = max(worst, float(np.abs(ex.acts - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
        print(
            f"parity against one-at-a-time masked extraction, {args.parity} examples: "
            f"max |difference| {worst:.3g} (largest |activation| {scale:.3g})"
        )

    peak = max(peaks)
    fpt = flops_per_token(lm.model.config, args.layer + 1, sum(lens) / len(lens) / 2)
    roofline = peak * 1e9 / fpt
    rate = tokens / elapsed
    print(f"examples: {len(examples)}, tokens forwarded: {tokens} (kept {kept}, prefix {prefix})")
    print(
        f"matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads, fp32; before "
        f"{peaks[0]:.1f}, after {peaks[1]:.1f})"
    )
    print(f"FLOPs/token through block {args.layer}: {fpt / 1e6:.1f} MFLOP")
    print(f"roofline: {roofline:.0f} tokens/s; measured: {rate:.0f} tokens/s")
    print(f"extract_roofline_fraction: {rate / roofline:.3f}")


if __name__ == "__main__":
    main()
