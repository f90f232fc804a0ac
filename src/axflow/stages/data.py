"""Stage `data`: one concept shard's concepts, training and evaluation examples and steering
prompts, imported (AxBench) or synthesized, validated, with per-concept counts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from axflow import store
from axflow.stages._common import load_lm, target_model_id

log = logging.getLogger("axflow")


def dataset_stage(spec: dict[str, Any]) -> None:
    from axflow.data import shards, sources
    from axflow.data.validate import validate_examples

    s, out = spec["slice"], spec["output"]
    ds, shard = s["dataset"], s["shard"]
    stats: dict[str, Any] = {"source": ds["source"]}
    if ds["source"] == "axbench":
        from axflow.data.axbench import import_axbench

        folder = shards.resolve(ds["axbench_dir"])
        concepts, train, detect_eval = import_axbench(folder)
        concepts = shards.select(concepts, shard, str(folder))
        keep = concepts["concept_id"].implode()
        train = train.filter(pl.col("concept_id").is_in(keep) | (pl.col("concept_id") == -1))
        detect_eval = detect_eval.filter(pl.col("concept_id").is_in(keep))
        source = str(folder)
    else:
        from axflow.data.generators import TargetGenerator, build_generator, overgenerate
        from axflow.data.synthesize import open_cache, synthesize

        concepts = shards.select(
            sources.load_concepts(shards.resolve(ds["concepts"]), ds.get("genre", "text")),
            shard,
            "dataset.concepts",
        )
        pool = sources.load_instructions(
            sources.instruction_files(ds["instructions"], shards.resolve)
        )
        from axflow.lm.models import weights_dir
        from axflow.lm.vllm_server import served

        cache = open_cache(spec["cache_dir"])
        model_id = target_model_id(spec, s["model"])
        target = TargetGenerator(load_lm(spec, s["model"]), model_id, s["generator"], cache)
        with served(
            s["generator"],
            group="generator",
            target_dir=weights_dir(Path(spec["input"]["model"])),
            target_id=model_id,
        ) as gen_cfg:
            writer = build_generator(gen_cfg, target=target, cache=cache)
            result = synthesize(
                concepts,
                pool,
                ds,
                s["seed"],
                writer=writer,
                target=target,
                overgenerate=overgenerate(gen_cfg),
            )
        concepts, train, detect_eval = result.concepts, result.train, result.detect_eval
        stats["generators"] = {"target": target.stats.as_dict()}
        if writer is not target:
            stats["generators"]["writer"] = writer.stats.as_dict()
        stats["polysemy"] = {str(k): v for k, v in result.polysemy.items()}
        for role, st in stats["generators"].items():
            log.info(
                "%s generator %s: %d requests, %d cached, %d generated, %d+%d tokens, $%.4f",
                role,
                st["model"],
                st["requests"],
                st["cached"],
                st["calls"],
                st["prompt_tokens"],
                st["completion_tokens"],
                st["cost_usd"],
            )
        source = "synthesized"
    expected_train = {"positive": ds["train_positive"], "negative": ds["train_negative"]}
    expected_eval = {"positive": ds["eval_positive"], "negative": ds["eval_negative"]}
    validate_examples(
        train, split="train", concepts=concepts, expected=expected_train, source=source
    )
    validate_examples(
        detect_eval,
        split="detect_eval",
        concepts=concepts,
        expected=expected_eval,
        at_most={"hard negative": ds.get("hard_negatives", 0)} if source == "synthesized" else None,
        source=source,
    )
    steering = sources.load_steering_instructions(shards.resolve(ds["steering_instructions"]))
    prompts = sources.sample_steering_prompts(
        concepts, steering, s["steering_instructions"], s["seed"]
    )
    stats["counts"] = example_counts(concepts, train, detect_eval)
    store.write_table(concepts, out["concepts"], "concepts")
    store.write_table(train, out["train"], "examples")
    store.write_table(detect_eval, out["detect_eval"], "examples")
    store.write_table(prompts, out["steer_prompts"], "steer_prompts")
    store.write_json(stats, out["stats"])
    store.write_json(s, out["config"])


def example_counts(
    concepts: pl.DataFrame, train: pl.DataFrame, detect_eval: pl.DataFrame
) -> list[dict[str, Any]]:
    """Rows per concept and category; train negatives count the concept's genre's shared pool."""
    shared = dict(
        train.filter(pl.col("concept_id") == -1).group_by("concept_genre").len().iter_rows()
    )
    counts = []
    for c in concepts.iter_rows(named=True):
        cid = c["concept_id"]
        mine_train = train.filter(pl.col("concept_id") == cid)
        mine_eval = detect_eval.filter(pl.col("concept_id") == cid)

        def n(df: pl.DataFrame, category: str) -> int:
            return df.filter(pl.col("category") == category).height

        counts.append(
            {
                "concept_id": cid,
                "concept": c["concept"],
                "genre": c["genre"],
                "train_positive": n(mine_train, "positive"),
                "train_negative": n(mine_train, "negative") + shared.get(c["genre"], 0),
                "eval_positive": n(mine_eval, "positive"),
                "eval_negative": n(mine_eval, "negative"),
                "eval_hard_negative": n(mine_eval, "hard negative"),
            }
        )
    return counts
