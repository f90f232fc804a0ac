"""Stage `data`: one concept shard's concepts, training and evaluation examples and steering
prompts, imported (AxBench) or synthesized, validated, with per-concept counts."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import polars as pl

from axflow import store
from axflow.stages._common import in_process_vllm, load_lm, target_model_id, vllm_fallback

log = logging.getLogger("axflow")


def dataset_stage(spec: dict[str, Any]) -> None:
    from axflow.data import shards, sources
    from axflow.data.validate import DataError, validate_examples

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
        from axflow.calls import open_cache
        from axflow.data.generators import build_generator, overgenerate
        from axflow.data.synthesize import synthesize
        from axflow.data.verify import build_verifier
        from axflow.judge import build_judge

        concepts = shards.select(
            sources.load_concepts(shards.resolve(ds["concepts"]), ds.get("genre", "text")),
            shard,
            "dataset.concepts",
        )
        pool = sources.load_instructions(
            sources.instruction_files(ds["instructions"], shards.resolve)
        )
        from axflow.lm.models import weights_dir
        from axflow.lm.vllm_engine import VLLMUnavailable
        from axflow.lm.vllm_server import served

        cache = open_cache(spec["cache_dir"])
        model_id = target_model_id(s["model"])
        target = target_generator(spec, s, model_id, cache)
        model_dir = weights_dir(Path(spec["input"]["model"]))
        with contextlib.ExitStack() as stack:
            if target.vllm:
                stack.callback(target.lm.close)
            gen_cfg = stack.enter_context(
                served(s["generator"], group="generator", target_dir=model_dir, target_id=model_id)
            )
            judge_cfg = s.get("judge")  # in the slice only with dataset.verifier=judge
            if judge_cfg is not None:
                judge_cfg = stack.enter_context(
                    served(judge_cfg, group="judge", target_dir=model_dir, target_id=model_id)
                )
            verifier = build_verifier(
                ds,
                cache=cache,
                judge=lambda: build_judge(judge_cfg, model_dir=str(model_dir), cache=cache),
            )
            writer = build_generator(gen_cfg, target=target, cache=cache)
            try:
                result = synthesize(
                    concepts,
                    pool,
                    ds,
                    s["seed"],
                    writer=writer,
                    target=target,
                    overgenerate=overgenerate(gen_cfg),
                    verifier=verifier,
                )
            except VLLMUnavailable as err:  # the target's engine failed to start
                raise vllm_fallback(err, "generator.engine") from err
        concepts, train, detect_eval = result.concepts, result.train, result.detect_eval
        stats["generators"] = {"target": target.stats.as_dict()}
        if writer is not target:
            stats["generators"]["writer"] = writer.stats.as_dict()
        stats["polysemy"] = {str(k): v for k, v in result.polysemy.items()}
        stats["verification"] = result.verification
        log_verification(result.verification)
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
    try:
        validate_examples(
            train, split="train", concepts=concepts, expected=expected_train, source=source
        )
        validate_examples(
            detect_eval,
            split="detect_eval",
            concepts=concepts,
            expected=expected_eval,
            at_most={"hard negative": ds.get("hard_negatives", 0)}
            if source == "synthesized"
            else None,
            source=source,
        )
    except DataError as err:
        v = stats.get("verification") or {}
        if not any(row["short"] for row in v.get("per_concept", [])):
            raise
        raise DataError(
            f"{err} The writer's examples failed verification (dataset.verifier="
            f"{v['verifier']}) in all {v['max_attempts']} attempt(s) of {v['candidates']} "
            "candidate(s); raise dataset.max_attempts or dataset.candidates, use a stronger "
            "writer (generator=...), lower dataset.verify_thresholds, set "
            "dataset.shortfall=keep_best to fill such rows with their best unverified candidate, "
            "or dataset.verifier=none to keep the writer's examples unchecked (AxBench)."
        ) from err
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


def target_generator(spec: dict[str, Any], s: dict[str, Any], model_id: str, cache):
    """The target model as a generator, on the engine `generator.engine` names: the HF model, or
    an in-process vLLM engine that starts on the first call the cache cannot answer."""
    from axflow.data.generators import TargetGenerator, target_options

    opts = target_options(s["generator"])
    if opts["engine"] == "vllm":
        mcfg = s["model"]["model"]
        lm = in_process_vllm(
            spec["input"]["model"],
            dtype=mcfg["dtype"],
            chat=mcfg["chat"],
            max_num_seqs=int(opts["max_num_seqs"]),
            seed=s["seed"],
            key="generator.engine",
            # rejected rows are resent with new seeds, and every prompt opens with the same
            # system turn: their prefixes are computed once
            prefix_caching=True,
        )
    else:
        lm = load_lm(spec, s["model"])
    return TargetGenerator(lm, model_id, s["generator"], cache)


def log_verification(v: dict[str, Any]) -> None:
    """One log line per category: rows accepted, candidates written and the share that passed."""
    if not v or v.get("verifier") == "none":
        return
    totals: dict[str, dict[str, int]] = {}
    for row in v["per_concept"]:
        t = totals.setdefault(row["category"], {"rows": 0, "accepted": 0, "cand": 0, "ok": 0})
        t["rows"] += row["rows"]
        t["accepted"] += row["accepted"]
        t["cand"] += row["candidates"]
        t["ok"] += row["passed"]
    for category, t in totals.items():
        log.info(
            "verifier %s, %s: %d of %d rows accepted; %d of %d candidates passed (%.0f %%)",
            v["verifier"],
            category,
            t["accepted"],
            t["rows"],
            t["ok"],
            t["cand"],
            100 * t["ok"] / max(t["cand"], 1),
        )


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
