"""Stage `judge`: rate every generation (concept, instruction, fluency) with the configured
judge backend, through the call cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from axflow import store
from axflow.layout import train_source
from axflow.stages._common import target_model_id


def judge_stage(spec: dict[str, Any]) -> None:
    from axflow.calls import open_cache
    from axflow.judge import JudgeItem, build_judge
    from axflow.lm.models import weights_dir
    from axflow.lm.vllm_server import served

    s = spec["slice"]
    gens = store.read_table(spec["input"]["generations"], "generations").to_pylist()
    model_dir = weights_dir(Path(spec["input"]["model"]))
    model_id = target_model_id(train_source(s["steer"]["train"])["model"])
    with served(s["judge"], group="judge", target_dir=model_dir, target_id=model_id) as cfg:
        judge = build_judge(cfg, model_dir=str(model_dir), cache=open_cache(spec["cache_dir"]))
        items = [JudgeItem(g["concept"], g["instruction"], g["generation"]) for g in gens]
        ratings = judge.rate(items)
    rows = []
    for g, r in zip(gens, ratings, strict=True):
        rows.append(
            {
                "concept_id": g["concept_id"],
                "input_id": g["input_id"],
                "split": g["split"],
                "factor": g["factor"],
                "concept_score": r.concept_score,
                "instruction_score": r.instruction_score,
                "fluency_score": r.fluency_score,
                "overall": r.overall,
                "perplexity": r.perplexity,
                "failures": r.failures,
            }
        )
    store.write_table(
        pl.DataFrame(rows, infer_schema_length=None), spec["output"]["ratings"], "ratings"
    )
    store.write_json(s, spec["output"]["config"])
