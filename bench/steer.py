"""Steered generation throughput: vLLM against HF, and against the roofline, in one run.

The steer stage's workload: concepts x instructions x factors requests, every request with its
own additive delta (factor x max_act x the concept's unit vector) and its own seed, all in one
`generate` call. Each engine runs it steered and once more unsteered (the same prompts, no delta),
in the order hf-unsteered, vllm-unsteered, vllm-steered, hf-steered, so slow drift from other load
on the machine hits both engines alike. Tokens are counted by re-tokenising the returned texts
(the same rule for both engines); tokens per CPU-second is printed too, as other processes on a
shared machine skew wall-clock rates. Start-up (model load, vLLM engine init) is not timed.

Roofline: the GEMM peak of the engine's dtype, measured in this run (best of before and after),
divided by the forward FLOPs per generated token (every block plus the vocabulary projection,
attention over the mean context) from the model config. Prompt tokens are not counted as
generated, so prefill work lowers the share.

Levers (each a flag): `--max-num-seqs`, `--max-num-batched-tokens` (chunked prefill),
`--kv-cache-gib`, `--vllm-dtype bfloat16` (then `--parity` prints greedy token agreement with
fp32 over the same requests), `--profile N` (top ops of one more steered vLLM run).
Last line: `steer_roofline_fraction: <steered vLLM tokens/s / roofline tokens/s>`.

    python bench/steer.py --threads 2 [--concepts 3] [--instructions 5] [--factors 10]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

FACTORS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None, help="prepared model folder")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--concepts", type=int, default=3)
    parser.add_argument("--instructions", type=int, default=5)
    parser.add_argument("--factors", type=int, default=10, help=f"the first N of {FACTORS}")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-act", type=float, default=8.0, help="strength = factor x this")
    parser.add_argument("--batch-size", type=int, default=32, help="HF batch size")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="vLLM; default batch")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="vLLM")
    parser.add_argument("--kv-cache-gib", type=int, default=None, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vllm-dtype", default="float32", help="float32 | bfloat16")
    parser.add_argument("--skip-hf", action="store_true", help="vLLM only (no ratio to HF)")
    parser.add_argument("--graph", action="store_true", help="vLLM compiled, op in the graph")
    parser.add_argument("--parity", action="store_true", help="greedy agreement, eager fp32")
    parser.add_argument("--profile", type=int, default=0, help="print the top N ops")
    return parser.parse_args()


def top_ops(run, n: int) -> None:
    """Run `run()` under the torch profiler; print the `n` ops with most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        run()
        wall = time.perf_counter() - t
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"profile: {wall:.1f}s wall, {total:.1f}s self CPU in ops (profiler overhead included)")
    for e in events[:n]:
        share = e.self_cpu_time_total / 1e6 / wall
        print(f"  {share:6.1%} of wall  {e.count:>8} calls  {e.key}")


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch/vLLM start
    if args.kv_cache_gib:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)

    import numpy as np
    import torch

    from roofline import flops_per_token, matmul_gflops

    torch.set_num_threads(args.threads)
    from axflow.data.sources import load_instruction_pool
    from axflow.lm.generate import GenerationRequest, generate
    from axflow.lm.models import load_model, prepare_model
    from axflow.lm.prompts import format_prompt
    from axflow.lm.vllm_engine import VLLMEngine

    model_dir = Path(args.model_dir) if args.model_dir else Path("results/bench/smollm2")
    if not model_dir.exists():  # the default config's model, prepared as its rule does
        from axflow.config import compose

        prepare_model(compose()["model"], model_dir)

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    peaks = {name: [matmul_gflops(args.threads, dt)] for name, dt in dtypes.items()}
    t = time.perf_counter()
    lm = load_model(model_dir, dtype="float32")
    hf_start = time.perf_counter() - t
    config = lm.model.config.get_text_config()
    pool = load_instruction_pool(None)["instruction"].to_list()
    rng = np.random.default_rng(0)
    units = rng.standard_normal((args.concepts, config.hidden_size)).astype(np.float32)
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
    prompt_lens = [len(lm.tokenizer(r.prompt)["input_ids"]) for r in steered]
    options = {
        "layer": args.layer,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
    }
    vllm_kwargs = {}
    if args.max_num_batched_tokens:
        vllm_kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    max_model_len = -(-(max(prompt_lens) + args.max_new_tokens) // 256) * 256

    def start_engine(dtype: str, graph: bool) -> VLLMEngine:
        return VLLMEngine(
            model_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=args.max_num_seqs or args.batch_size,
            graph_layer=args.layer if graph else None,
            **vllm_kwargs,
        )

    mode = f"{args.vllm_dtype}{' graph' if args.graph else ''}"
    t = time.perf_counter()
    engine = start_engine(args.vllm_dtype, args.graph)
    vllm_start = time.perf_counter() - t
    # Warm-up (first-call allocations, the hook check) on a few requests, untimed.
    engine.generate(steered[:4], **options)
    if not args.skip_hf:
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
        f"hf float32 batch {args.batch_size}, vllm {mode} max_num_seqs "
        f"{args.max_num_seqs or args.batch_size} {vllm_kwargs or ''}, KV cache "
        f"{os.environ.get('VLLM_CPU_KVCACHE_SPACE')} GiB"
    )
    print(f"start-up: hf {hf_start:.1f}s, vllm {vllm_start:.1f}s (not timed below)")
    engines = ["vllm"] if args.skip_hf else ["hf", "vllm"]
    for name in engines:
        run(name, "unsteered", unsteered)
    for name in reversed(engines):
        run(name, "steered", steered)
    if args.profile:
        top_ops(lambda: engine.generate(steered, **options), args.profile)
    if args.parity and mode != "float32":
        greedy = {**options, "temperature": 0.0}
        low = engine.generate(steered, **greedy)
        engine.close()
        engine = start_engine("float32", False)
        ref = engine.generate(steered, **greedy)
        same, agree = 0, []
        for a, b in zip(low, ref, strict=True):
            ta, tb = (lm.tokenizer(x, add_special_tokens=False)["input_ids"] for x in (a, b))
            k = next(
                (i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y),
                min(len(ta), len(tb)),
            )
            same += ta == tb
            agree.append(k / max(len(tb), 1))
        print(
            f"parity {mode} vs eager float32, greedy, steered: {same}/{len(ref)} "
            f"continuations identical; tokens agreeing before the first divergence: "
            f"{np.mean(agree):.3f} of the fp32 continuation on average (min {min(agree):.3f})"
        )
    engine.close()
    for name, dt in dtypes.items():
        peaks[name].append(matmul_gflops(args.threads, dt))

    def rate(key) -> float:
        wall, _cpu, n = results[key]
        return n / wall

    new_per_request = results["vllm", "steered"][2] / len(steered)
    context = float(np.mean(prompt_lens)) + new_per_request / 2
    fpt = flops_per_token(config, config.num_hidden_layers, context, lm_head=True)
    # All the work, prompt tokens included (they pass every block; logits come from the last).
    prompt_fpt = flops_per_token(config, config.num_hidden_layers, float(np.mean(prompt_lens)) / 2)
    wall, _cpu, generated = results["vllm", "steered"]
    all_flops = generated * fpt + sum(prompt_lens) * prompt_fpt
    shares = {}
    for name in dtypes:
        peak = max(peaks[name])
        shares[name] = rate(("vllm", "steered")) * fpt / (peak * 1e9)
        print(
            f"{name} GEMM peak: {peak:.1f} GFLOP/s (before {peaks[name][0]:.1f}, after "
            f"{peaks[name][1]:.1f}); roofline {peak * 1e9 / fpt:.0f} tokens/s; steered vLLM "
            f"FLOP/s with prompt tokens counted: {all_flops / wall / (peak * 1e9):.3f} of peak"
        )
    print(
        f"prompt tokens: {sum(prompt_lens)} ({prompt_fpt / 1e6:.1f} MFLOP each), generated "
        f"{generated}: prompt work caps the generated-token share at "
        f"{generated * fpt / all_flops:.3f}"
    )
    print(
        f"FLOPs per generated token: {fpt / 1e6:.1f} MFLOP ({config.num_hidden_layers} blocks + "
        f"vocabulary projection, mean context {context:.0f})"
    )
    for name in engines:
        ratio = rate((name, "steered")) / rate((name, "unsteered"))
        print(f"{name} steered/unsteered tokens/s: {ratio:.3f}")
        print(f"{name} steered tokens/s: {rate((name, 'steered')):.1f}")
    if not args.skip_hf:
        print(f"vllm_vs_hf_tokens_per_s: {rate(('vllm', 'steered')) / rate(('hf', 'steered')):.2f}")
    print(f"vllm steered share of the float32 roofline: {shares['float32']:.3f}")
    print(f"steer_roofline_fraction: {shares[args.vllm_dtype]:.3f}")


if __name__ == "__main__":
    main()
