"""How far a run's detection is from what its own eval data allows, per method, from its cached
activations: is a low AUROC the method's, or the data's?

For every concept of a finished run (its data and activation folders), each activation method is
scored three ways on the concept's eval rows (max-pooled, hard negatives left out, the
leaderboard's protocol):
- held out: fitted on the train split, as the pipeline fits it (the leaderboard's figure);
- oracle: fitted on the eval rows themselves and scored on them. No direction of this method does
  better on this data, so this is the ceiling the writer's eval data leaves it;
- train fit: fitted and scored on the train split (how separable the training data is).
A held-out figure far below the oracle means train and eval differ (the shared train negatives are
the target model's own answers to plain instructions, the eval negatives are written to avoid the
concept, in a mix of genres); an oracle near the held-out figure means the eval rows themselves do
not separate better. `--negatives genre` trains as AxBench does, against the concept's own genre's
shared negatives only (`training.negatives`).

    .venv/bin/python bench/detection_ceiling.py --data results/data/<key> \
        --acts results/activations/<key> [--methods diffmean probe] [--negatives all|genre]

The last line is the headline, `diffmean_eval_oracle_auroc: <mean over concepts>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from axflow import store
from axflow.methods import TokenBatch, build_method
from axflow.protocol.detection import concept_metrics, pooled_scores
from axflow.protocol.training import NEGATIVES, concept_rows
from axflow.stages.train import read_examples


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="a data job's folder")
    parser.add_argument("--acts", type=Path, required=True, help="its activations' folder")
    parser.add_argument("--methods", nargs="+", default=["diffmean", "probe"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--negatives", choices=NEGATIVES, default="all")
    return parser.parse_args()


def tokens(meta, X, rows: np.ndarray, positive: np.ndarray) -> TokenBatch:
    """The tokens of examples `rows` (indices into `meta`), labelled by `positive`."""
    return TokenBatch(
        acts=X[rows], example=meta["example_id"].to_numpy()[rows], label=positive.astype(np.int8)
    )


def auroc(method, params, meta, X, rows, examples, concept) -> float:
    """ROC AUC of max-pooled scores over the examples of token rows `rows` (hard negatives out)."""
    ids, maxima, _, _ = pooled_scores(
        method, params, X[rows], meta["example_id"].to_numpy()[rows], examples, concept
    )
    return concept_metrics(np.array([examples[k].category for k in ids]), maxima)["roc_auc"]


def main() -> None:
    args = parse_args()
    concepts = store.read_table(args.data / "concepts.parquet", "concepts").to_pylist()
    train_meta, train_X = store.read_activations(str(args.acts / "train.parquet"))
    eval_meta, eval_X = store.read_activations(str(args.acts / "detect_eval.parquet"))
    train_ex = read_examples(str(args.data / "train.parquet"))
    eval_ex = read_examples(str(args.data / "detect_eval.parquet"))
    t_cat, e_cat = train_meta["category"].to_numpy(), eval_meta["category"].to_numpy()
    means = {}
    for name in args.methods:
        method = build_method({"kind": name})
        rows_out = []
        for c in concepts:
            cid, concept = c["concept_id"], c["concept"]
            rows, positive = concept_rows(
                train_meta["concept_id"].to_numpy(),
                t_cat,
                train_meta["concept_genre"].to_numpy(),
                cid,
                c["genre"],
                args.negatives,
            )
            fitted = method.fit(
                tokens(train_meta, train_X, rows, positive), concept=concept, seed=args.seed
            )
            own = np.flatnonzero((eval_meta["concept_id"] == cid).to_numpy())
            labelled = own[np.isin(e_cat[own], ["positive", "negative"])]
            oracle = method.fit(
                tokens(eval_meta, eval_X, labelled, e_cat[labelled] == "positive"),
                concept=concept,
                seed=args.seed,
            )
            rows_out.append(
                (
                    auroc(method, fitted, eval_meta, eval_X, own, eval_ex, concept),
                    auroc(method, oracle, eval_meta, eval_X, own, eval_ex, concept),
                    auroc(method, fitted, train_meta, train_X, rows, train_ex, concept),
                )
            )
            print(
                f"{name:9s} concept {cid:2d} held out {rows_out[-1][0]:.3f}  oracle "
                f"{rows_out[-1][1]:.3f}  train fit {rows_out[-1][2]:.3f}  {concept[:50]}",
                flush=True,
            )
        means[name] = np.mean(rows_out, axis=0)
    for name, (held, oracle, train) in means.items():
        print(f"{name}: held out {held:.3f}, eval oracle {oracle:.3f}, train fit {train:.3f}")
    print(f"{args.methods[0]}_eval_oracle_auroc: {means[args.methods[0]][1]:.3f}")


if __name__ == "__main__":
    main()
