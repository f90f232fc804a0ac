"""Concept10 detection AUROC under protocol=axflow (ours) and protocol=axbench (AxBench-exact).

On AxBench's released Concept10 (2B-L10 data) with SmolLM2-135M-Instruct activations at layers 10
and 20 (extracted once per machine and cached, see axflow.concept10), every method is fitted per
concept on its 72 positives + 72 genre negatives and scored by held-out AUROC (max-pooled token
scores, hard negatives left out), as tests/test_golden_detection.py does. Method configs come from
composing the real config with `protocol=axflow` / `protocol=axbench`, so the table measures what
the presets set. Probe switches are also measured one at a time from our settings. The probe's
`train_positions: from_1` runs the model once per layer (the shared prefix positions).

    .venv/bin/python bench/axbench_parity.py [--layers 10 20]

Last line: `axbench_minus_axflow_mean_auroc: <value>` (mean over DiffMean, probe, PCA, LAT and
both layers).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

METHODS = ["diffmean", "probe", "pca", "lat"]
# Probe switches, each applied alone on top of protocol=axflow's probe.
PROBE_SWITCHES = {
    "standardize=false": {"standardize": False},
    "bias=false": {"bias": False},
    "unit_norm=true,l2_coeff=0,weight_decay=1e-3": {
        "unit_norm": True,
        "l2_coeff": 0.0,
        "weight_decay": 1e-3,
    },
    "train_positions=from_1": {"train_positions": "from_1"},
}


def method_configs(protocol: str) -> dict[str, dict]:
    from axflow.config import compose

    cfg = compose([f"protocol={protocol}", f"method=[{','.join(METHODS)}]"])
    return cfg["method"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from axflow import concept10 as c10
    from axflow.lm.models import load_model
    from axflow.methods import Runtime, build_method

    data_dir = c10.concept10_dir()
    if data_dir is None:
        raise SystemExit(f"Concept10 not found under {c10.SHARED_DATA}; set AXFLOW_SHARED_DATA")
    model_dir = c10.smollm_dir()
    t0 = time.perf_counter()
    acts = c10.concept10_acts(model_dir, data_dir)
    print(f"# {acts!r}", flush=True)
    lm = load_model(model_dir, dtype="float32", chat=True)

    ours, theirs = method_configs("axflow"), method_configs("axbench")
    rows: list[tuple[str, str, dict]] = []  # (method, variant, config)
    notes: list[str] = []
    for name in METHODS:
        if ours[name] == theirs[name]:
            rows.append((name, "same under both", ours[name]))
            continue
        changed = {k: v for k, v in theirs[name].items() if ours[name].get(k) != v}
        rows.append((name, "protocol=axflow", ours[name]))
        if name == "probe":
            for label, switch in PROBE_SWITCHES.items():
                rows.append((name, f"  only {label}", {**ours[name], **switch}))
        notes.append(
            f"{name} under protocol=axbench: " + ", ".join(f"{k}={v}" for k, v in changed.items())
        )
        rows.append((name, "protocol=axbench", theirs[name]))

    results: dict[tuple[str, str], dict[int, float]] = {}
    for name, variant, mcfg in rows:
        for layer in args.layers:
            method = build_method(mcfg, Runtime(layer=layer, lm=lm))
            t = time.perf_counter()
            aurocs = acts.held_out_aurocs(method, layer, seed=args.seed)
            results[(name, variant)] = {
                **results.get((name, variant), {}),
                layer: float(np.mean(list(aurocs.values()))),
            }
            print(
                f"# {name:8s} {variant:40.40s} L{layer}: {results[(name, variant)][layer]:.4f} "
                f"({time.perf_counter() - t:.0f}s)",
                flush=True,
            )

    width = max(len(v) for _, v, _ in rows)
    header = f"{'method':8s}  {'variant':{width}s}  " + "  ".join(
        f"L{lay:<5d}" for lay in args.layers
    )
    print()
    print("mean held-out AUROC, Concept10 (10 concepts), SmolLM2-135M-Instruct")
    print(header)
    for name, variant, _ in rows:
        vals = "  ".join(f"{results[(name, variant)][lay]:.4f}" for lay in args.layers)
        print(f"{name:8s}  {variant:{width}s}  {vals}")
    for note in notes:
        print(note)

    def protocol_mean(tag: str) -> float:
        picked = []
        for name in METHODS:
            variants = [v for n, v, _ in rows if n == name]
            variant = next((v for v in variants if v.startswith(tag)), variants[0])
            picked += [results[(name, variant)][lay] for lay in args.layers]
        return float(np.mean(picked))

    ours_mean, theirs_mean = protocol_mean("protocol=axflow"), protocol_mean("protocol=axbench")
    print(
        f"mean over methods and layers: protocol=axflow {ours_mean:.4f}, axbench {theirs_mean:.4f}"
    )
    print(f"# total {time.perf_counter() - t0:.0f}s")
    print(f"axbench_minus_axflow_mean_auroc: {theirs_mean - ours_mean:.4f}")


if __name__ == "__main__":
    main()
