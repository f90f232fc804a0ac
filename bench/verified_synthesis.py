"""Measure verified synthesis with the default writer (the target model, generator=target).

Runs only the synthesis step (axflow.data.synthesize with the configured verifier) on the first
N built-in concepts of the composed config and prints, per category, the rows accepted, the share
of written candidates that passed, the rounds they took and the wall time, plus a few accepted
and rejected rows. Each call goes through the call cache in --cache, so a rerun with other
settings reuses every answer already written.

    .venv/bin/python bench/verified_synthesis.py --concepts 3 --cache /tmp/vf \\
        dataset.max_attempts=6 dataset.candidates=4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import torch

from axflow.calls import open_cache
from axflow.concept10 import smollm_dir
from axflow.config import compose
from axflow.data import shards, sources
from axflow.data.generators import TargetGenerator
from axflow.data.synthesize import synthesize
from axflow.data.verify import build_verifier
from axflow.judge import build_judge
from axflow.lm.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/axflow-verified-synthesis")
    ap.add_argument("--out", default=None, help="write the verification stats as JSON here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose(args.overrides)
    ds = cfg["dataset"]
    concepts = shards.run_concepts(ds).head(args.concepts)
    pool = sources.load_instructions(sources.instruction_files(ds["instructions"], shards.resolve))
    cache = open_cache(args.cache)
    lm = load_model(smollm_dir(), dtype="float32", chat=True)
    writer = TargetGenerator(lm, "smollm2-135m-instruct@bench", cfg["generator"], cache)
    verifier = build_verifier(
        ds,
        cache=cache,
        judge=lambda: build_judge(cfg["judge"], model_dir=str(smollm_dir()), cache=cache),
    )
    t0 = time.perf_counter()
    result = synthesize(
        concepts, pool, ds, cfg["seed"], writer=writer, target=writer, verifier=verifier
    )
    seconds = time.perf_counter() - t0
    v = result.verification
    print(
        f"verifier={v['verifier']} max_attempts={v['max_attempts']} candidates={v['candidates']} "
        f"concepts={concepts.height} time={seconds:.0f}s writer calls={writer.stats.calls} "
        f"cached={writer.stats.cached} tokens={writer.stats.completion_tokens}"
    )
    per = pl.DataFrame(v["per_concept"])
    print(
        per.group_by("category")
        .agg(pl.col("rows", "accepted", "short", "candidates", "passed", "attempts").sum())
        .with_columns(
            acceptance=pl.col("passed") / pl.col("candidates"),
            mean_rounds=pl.col("attempts") / pl.col("accepted"),
        )
        .sort("category")
    )
    with pl.Config(tbl_rows=50):
        print(per.select("concept_id", "category", "rows", "accepted", "acceptance_rate"))
    print("shared negatives flagged:", v["shared_negatives"])
    names = dict(zip(concepts["concept_id"], concepts["concept"], strict=True))
    for split, df in (("train", result.train), ("detect_eval", result.detect_eval)):
        for cat in ("positive", "negative", "hard negative"):
            rows = df.filter((pl.col("category") == cat) & (pl.col("concept_id") >= 0)).head(2)
            for r in rows.iter_rows(named=True):
                print(f"ACCEPTED {split}/{cat} [{names[r['concept_id']]}] {r['output'][:160]!r}")
    for cat, rows in v["rejected_examples"].items():
        for r in rows[:2]:
            print(
                f"REJECTED {cat} [{r['concept']}] sim={r['concept_similarity']} "
                f"round {r['attempt']}: {r['output'][:160]!r}"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"seconds": seconds, **v}, indent=1))


if __name__ == "__main__":
    main()
