"""Judge validity: how well a configured judge separates AxBench Concept10 ground truth.

For each criterion the judge rates items whose right answer is known, from Concept10's
gpt-4o-mini outputs (train_data.parquet: 72 positives per concept, 216 shared negatives):
- concept: positives against their own concept vs negatives against a random concept (AUROC of
  the concept score, and the 0/1/2 confusion of both groups);
- instruction: matched (instruction, output) pairs vs pairs whose instruction is another row's;
- fluency: real outputs vs the same words shuffled, a 2-5 word phrase looped to the same length,
  one of its words repeated, and random words of the corpus.
Every call goes through the run's call cache (`cache_dir`), so a rerun costs nothing. With
`--compare`, a second judge rates the same items, and their agreement per criterion is printed
(Spearman correlation and exact agreement). `--write` stores the record where the report of every
run with this judge config and model finds it (axflow.report.validity).

    .venv/bin/python bench/judge_validity.py [overrides ...] [--n 100] [--write]
        [--compare "judge=openai judge.model=gpt-4o-mini"] [--out record.json]

The last line is the headline, `<judge>_concept_auroc: <value>`.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from axflow import store
from axflow.concept10 import CONCEPT10_DIR, concept10_dir
from axflow.config import compose
from axflow.layout import judge_validity_record
from axflow.metrics.detection import roc_auc
from axflow.rating import JudgeItem, Rating
from axflow.report.validity import CRITERIA, judge_code_digest

SCORE = {c: f"{c}_score" for c in CRITERIA}


def broken(output: str, kind: str, vocabulary: list[str], rng: random.Random) -> str:
    """`output` made disfluent while keeping its length in words."""
    words = output.split()
    if kind == "shuffled words":
        rng.shuffle(words)
        return " ".join(words)
    if kind == "looped phrase":
        size = rng.randint(2, min(5, len(words)))
        start = rng.randrange(len(words) - size + 1)
        phrase = words[start : start + size]
        return " ".join((phrase * (len(words) // size + 1))[: len(words)])
    if kind == "repeated word":  # very predictable: perplexity alone would call it fluent
        return " ".join([rng.choice(words)] * len(words))
    if kind == "random words":
        return " ".join(rng.choice(vocabulary) for _ in words)
    raise ValueError(f"unknown fluency break {kind!r}")


BREAKS = ("shuffled words", "looped phrase", "repeated word", "random words")


def ground_truth(data: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """The items to rate, each with its criterion group: (criterion, group, expected) tags."""
    train = pl.read_parquet(data / "train_data.parquet")
    concepts = sorted(
        train.filter(pl.col("category") == "positive")["output_concept"].unique().to_list()
    )
    pos = train.filter(pl.col("category") == "positive")
    neg = train.filter(pl.col("category") == "negative")
    if n:
        pos, neg = (
            pos.sample(min(n, pos.height), seed=seed),
            neg.sample(min(n, neg.height), seed=seed),
        )
    rng = random.Random(seed)
    real = [
        {"concept": r["output_concept"], "instruction": r["input"], "output": r["output"]}
        for r in pos.iter_rows(named=True)
    ] + [
        {"concept": rng.choice(concepts), "instruction": r["input"], "output": r["output"]}
        for r in neg.iter_rows(named=True)
    ]
    items = []
    for k, row in enumerate(real):
        is_pos = k < pos.height
        tags = [
            (
                "concept",
                "positive, own concept" if is_pos else "negative, random concept",
                int(is_pos),
            ),
            ("instruction", "matched pair", 1),
            ("fluency", "real output", 1),
        ]
        items.append({**row, "tags": tags})
    shifted = rng.sample(range(len(real)), len(real))
    for k, row in enumerate(real):
        other = shifted[k] if shifted[k] != k else (k + 1) % len(real)
        items.append(
            {
                **row,
                "instruction": real[other]["instruction"],
                "tags": [("instruction", "shuffled pair", 0)],
            }
        )
    vocabulary = sorted({w for r in real for w in r["output"].split()})
    per_kind = min(len(real), n) if n else len(real)
    for kind in BREAKS:
        for row in rng.sample(real, per_kind):
            items.append(
                {
                    **row,
                    "output": broken(row["output"], kind, vocabulary, rng),
                    "tags": [("fluency", kind, 0)],
                }
            )
    return items


def rate(cfg: dict[str, Any], items: list[dict[str, Any]]) -> list[Rating]:
    """Ratings of `items` by `cfg`'s judge, through the run's call cache (the judge stage's way
    of building it: the prepared target model, a vLLM server when the config asks for one)."""
    from axflow.calls import open_cache
    from axflow.judge import build_judge
    from axflow.layout import Layout, stage_key
    from axflow.lm.models import prepare_model, weights_dir
    from axflow.lm.vllm_server import served
    from axflow.plan import make_plan

    plan = make_plan(cfg)
    prepared = Path(Layout(cfg["results_dir"]).model(plan.model_key))  # the workflow's, if run
    if not prepared.exists():
        # Keyed by the model config alone, and named `weights` like the workflow's folder: the
        # embedded judge's cached perplexities name the folder, so both share them.
        model = {k: v for k, v in cfg["model"].items() if k != "layer"}
        prepared = Path(cfg["cache_dir"]) / "judge_validity" / stage_key(model) / "weights"
        if not prepared.exists():
            prepare_model(cfg["model"], prepared)
    model_dir = weights_dir(prepared)
    target_id = f"{cfg['model']['name']}@{plan.model_key}"
    with served(cfg["judge"], group="judge", target_dir=model_dir, target_id=target_id) as jcfg:
        judge = build_judge(jcfg, model_dir=str(model_dir), cache=open_cache(cfg["cache_dir"]))
        return judge.rate(
            [JudgeItem(it["concept"], it["instruction"], it["output"]) for it in items]
        )


def measure(items: list[dict[str, Any]], ratings: list[Rating]) -> dict[str, Any]:
    """Per criterion: 0/1/2 counts and failures of each ground-truth group, and the AUROC of the
    criterion's score for every group expected high against every group expected low."""
    out: dict[str, Any] = {}
    for criterion in CRITERIA:
        groups: dict[str, dict[str, Any]] = {}
        values: dict[str, list[float]] = {}
        for item, rating in zip(items, ratings, strict=True):
            for c, group, expected in item["tags"]:
                if c != criterion:
                    continue
                g = groups.setdefault(
                    group, {"expected": expected, "counts": [0, 0, 0], "failures": 0}
                )
                score = getattr(rating, SCORE[criterion])
                if score is None:
                    g["failures"] += 1
                    continue
                g["counts"][min(2, max(0, int(round(score))))] += 1
                values.setdefault(group, []).append(score)
        high = [g for g, v in groups.items() if v["expected"] == 1]
        low = [g for g, v in groups.items() if v["expected"] == 0]
        auroc = {}
        for h in high:
            for lo in low:
                a, b = values.get(h, []), values.get(lo, [])
                value = roc_auc(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b])
                auroc[f"{h} vs {lo}"] = value
        out[criterion] = {"groups": groups, "auroc": auroc}
    return out


def agreement(first: list[Rating], second: list[Rating]) -> dict[str, dict[str, float | int]]:
    """Per criterion, over items both judges scored: Spearman correlation, exact agreement."""
    out = {}
    for criterion in CRITERIA:
        pairs = [
            (getattr(a, SCORE[criterion]), getattr(b, SCORE[criterion]))
            for a, b in zip(first, second, strict=True)
        ]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        x, y = np.array(pairs, dtype=np.float64).reshape(-1, 2).T
        rho = spearmanr(x, y).statistic if len(pairs) > 2 else float("nan")
        out[criterion] = {
            "items": len(pairs),
            "spearman": float(rho),
            "exact_agreement": float((x == y).mean()) if len(pairs) else float("nan"),
        }
    return out


def print_record(name: str, measured: dict[str, Any]) -> None:
    print(f"judge {name}")
    for criterion in CRITERIA:
        print(f"  {criterion}: share scoring 0 / 1 / 2 (failures)")
        for group, g in measured[criterion]["groups"].items():
            total = sum(g["counts"]) or 1
            shares = " / ".join(f"{c / total:.3f}" for c in g["counts"])
            print(f"    {group:28s} n={sum(g['counts']):4d}  {shares}  ({g['failures']})")
        for comparison, value in measured[criterion]["auroc"].items():
            shown = "–" if value is None else f"{value:.3f}"
            print(f"    AUROC {comparison}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. judge=openai")
    parser.add_argument("--n", type=int, default=100, help="rows per class (0: all 936 rows)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", type=Path, default=None, help=f"the {CONCEPT10_DIR} folder")
    parser.add_argument("--compare", default=None, help="overrides of a second judge")
    parser.add_argument("--write", action="store_true", help="store the record for the report")
    parser.add_argument("--out", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()
    data = args.data or concept10_dir()
    if data is None or not (data / "train_data.parquet").exists():
        raise SystemExit(
            f"Concept10 data not found ({CONCEPT10_DIR}/train_data.parquet); pass --data or set "
            "AXFLOW_SHARED_DATA to the shared/data folder"
        )
    cfg = compose(args.overrides)
    items = ground_truth(data, args.n, args.seed)
    start = time.perf_counter()
    ratings = rate(cfg, items)
    seconds = time.perf_counter() - start
    measured = measure(items, ratings)
    record: dict[str, Any] = {
        "judge": cfg["judge"],
        "model": {k: v for k, v in cfg["model"].items() if k != "layer"},
        "record": judge_validity_record(cfg).name,
        "judge_code": judge_code_digest(),
        "data": {"name": data.name, "rows_per_class": args.n, "seed": args.seed},
        "items": len(items),
        "seconds": round(seconds, 1),
        "criteria": measured,
    }
    print(f"{len(items)} items rated in {seconds:.1f} s")
    print_record(cfg["judge"]["name"], measured)
    if args.compare:
        other_cfg = compose([*args.overrides, *args.compare.split()])
        other = rate(other_cfg, items)
        agree = agreement(ratings, other)
        record["compare"] = {
            "judge": other_cfg["judge"],
            "criteria": measure(items, other),
            "agreement": agree,
        }
        print_record(other_cfg["judge"]["name"], record["compare"]["criteria"])
        for criterion, a in agree.items():
            print(
                f"agreement {criterion}: Spearman {a['spearman']:.3f}, exact "
                f"{a['exact_agreement']:.3f} over {a['items']} items"
            )
    if args.write:
        path = judge_validity_record(cfg)
        store.write_json(record, path)
        print(f"record: {path}")
    if args.out:
        store.write_json(record, args.out)
    (concept_auroc,) = measured["concept"]["auroc"].values()
    print(f"{cfg['judge']['name']}_concept_auroc: {concept_auroc:.3f}")


if __name__ == "__main__":
    main()
