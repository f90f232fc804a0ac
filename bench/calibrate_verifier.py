"""Calibrate the embedded data verifier's thresholds (axflow.data.verify) on AxBench Concept10.

The same data and embedder as the embedded judge's concept thresholds (config/judge/embedded.yaml):
MiniLM similarity of each gpt-4o-mini output to a concept description, for
- train positives vs their own concept, train negatives vs each of the 10 concepts;
- eval positives vs their own concept, eval negatives (written avoiding it) vs their own concept;
- eval hard negatives vs their own concept and vs their contrast sense ("word: sense").
Prints quantiles and the acceptance rate of each category at candidate thresholds.

    .venv/bin/python bench/calibrate_verifier.py [/work/shared/data/axbench-concept10-2b-l10]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from axflow.judge import CallCache, JudgeItem
from axflow.lm.similarity import minilm_similarities


def main(folder: str = "/work/shared/data/axbench-concept10-2b-l10") -> None:
    root = Path(folder)
    train = pl.read_parquet(root / "train_data.parquet")
    evald = pl.read_parquet(root / "latent_eval_data.parquet")
    names = {
        r["concept_id"]: r["output_concept"]
        for r in train.filter(pl.col("category") == "positive")
        .unique("concept_id")
        .iter_rows(named=True)
    }
    groups: dict[str, list[JudgeItem]] = {}
    for r in train.iter_rows(named=True):
        if r["category"] == "positive":
            groups.setdefault("train positive", []).append(
                JudgeItem(r["output_concept"], r["input"], r["output"])
            )
        else:
            groups.setdefault("train negative x concept", []).extend(
                JudgeItem(c, r["input"], r["output"]) for c in names.values()
            )
    for r in evald.iter_rows(named=True):
        own = names[r["concept_id"]]
        if r["category"] == "hard negative":
            word, _, sense = r["output_concept"].partition("//")
            groups.setdefault("eval hard negative vs concept", []).append(
                JudgeItem(own, r["input"], r["output"])
            )
            groups.setdefault("eval hard negative vs sense", []).append(
                JudgeItem(f"{word}: {sense}", r["input"], r["output"])
            )
        else:
            groups.setdefault(f"eval {r['category']}", []).append(
                JudgeItem(own, r["input"], r["output"])
            )
    with tempfile.TemporaryDirectory() as tmp:
        cache = CallCache(Path(tmp) / "calls.sqlite")
        sims = {
            k: np.array([s for s, _ in minilm_similarities(v, cache)]) for k, v in groups.items()
        }
    cuts = [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25]
    print(
        f"{'group':34s} {'n':>5s}  p05   p25   p50   p75   p95  | share >= "
        + " ".join(f"{c:.2f}" for c in cuts)
    )
    for k, v in sims.items():
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        share = " ".join(f"{(v >= c).mean():.2f}" for c in cuts)
        print(f"{k:34s} {len(v):5d} " + " ".join(f"{x:5.2f}" for x in q) + f" |          {share}")


if __name__ == "__main__":
    main(*sys.argv[1:])
