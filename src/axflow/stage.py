"""Entry point of every Snakemake job:
`python -m axflow.stage '<json spec>' --threads N --input ... --output ...`.

The spec (built in rules/common.smk) holds the stage name, its resolved config slice, and the
names of the input and output paths given on the command line. Each stage writes its outputs
atomically and, where it owns a folder, the resolved slice as `config.json`, so every artefact is
self-describing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from axflow import store

log = logging.getLogger("axflow")
STAGES: dict[str, Callable[[dict[str, Any]], None]] = {}


def stage(name: str):
    def wrap(fn):
        STAGES[name] = fn
        return fn

    return wrap


def _load_lm(spec: dict[str, Any], model_slice: dict[str, Any]):
    """Load the job's input model as configured by `model_slice` ({"model": model config})."""
    from axflow.lm.models import load_model

    mcfg = model_slice["model"]
    return load_model(Path(spec["input"]["model"]), dtype=mcfg["dtype"], chat=mcfg["chat"])


@stage("model")
def prepare_model_stage(spec: dict[str, Any]) -> None:
    from axflow.lm.models import prepare_model

    prepare_model(spec["slice"]["model"], Path(spec["output"]["weights"]))


@stage("data")
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
        model_id = _model_id(spec, s["model"])
        target = TargetGenerator(_load_lm(spec, s["model"]), model_id, s["generator"], cache)
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


@stage("acts")
def activations_stage(spec: dict[str, Any]) -> None:
    from axflow.lm.extract import extract_residuals

    s = spec["slice"]
    ex = store.read_table(spec["input"]["examples"], "examples").to_pydict()
    lm = _load_lm(spec, s["model"])
    pairs = list(zip(ex["input"], ex["output"], strict=True))
    cols: dict[str, list] = {f.name: [] for f in store.SCHEMAS["activations"]}
    acts: list[np.ndarray] = []
    t0, n_tok = time.time(), 0
    for item in extract_residuals(lm, pairs, layer=s["layer"], **s["extraction"]):
        n = len(item.positions)
        n_tok += n
        k = item.index
        cols["example_id"].extend([k] * n)
        cols["concept_id"].extend([ex["concept_id"][k]] * n)
        cols["concept_genre"].extend([ex["concept_genre"][k]] * n)
        cols["category"].extend([ex["category"][k]] * n)
        cols["position"].extend(item.positions.tolist())
        cols["token"].extend(item.tokens)
        acts.append(item.acts)
    log.info("extracted %d tokens in %.1fs", n_tok, time.time() - t0)
    matrix = np.concatenate(acts).astype(np.float32)
    cols["act"] = pa.ListArray.from_arrays(
        pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)),
        pa.array(matrix.ravel()),
    )
    table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in cols.items()})
    store.write_table(table, spec["output"]["acts"], "activations")


def read_activations(path: str) -> tuple[pl.DataFrame, np.ndarray]:
    """Token metadata (no `act`) and the [n_tokens, d] activation matrix of an activations file."""
    table = store.read_table(path, "activations")
    act = table.column("act").combine_chunks()
    d = len(act[0]) if len(act) else 0
    matrix = act.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    return pl.from_arrow(table.drop(["act"])), matrix


def _model_id(spec: dict[str, Any], model_slice: dict[str, Any]) -> str:
    """`name@key` of the job's prepared model: names it in call-cache keys and served endpoints."""
    return f"{model_slice['model']['name']}@{Path(spec['input']['model']).parent.name}"


def _runtime(spec: dict[str, Any], train_slice: dict[str, Any]):
    """The method's `Runtime`: the job's model (loaded lazily) at the slice's layer."""
    from axflow.methods import Runtime

    acts = train_slice["acts"]
    mcfg = acts["model"]["model"]
    model = spec["input"].get("model")
    return Runtime(model, layer=acts["layer"], dtype=mcfg["dtype"], chat=mcfg["chat"])


def _examples(path: str):
    """Rows of an examples file as `Example`s, indexed by example id (= row number)."""
    from axflow.methods import Example

    ex = store.read_table(path, "examples").to_pydict()
    return [
        Example(k, ins, out, int(cat == "positive"), cat)
        for k, (ins, out, cat) in enumerate(
            zip(ex["input"], ex["output"], ex["category"], strict=True)
        )
    ]


@stage("train")
def train_stage(spec: dict[str, Any]) -> None:
    from axflow.methods import TokenBatch, Unmatched, build_method

    s = spec["slice"]
    method = build_method(s["method"], _runtime(spec, s))
    concepts = store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    meta, X = read_activations(spec["input"]["acts"])
    examples = _examples(spec["input"]["examples"])
    example_ids = meta["example_id"].to_numpy()

    def batch(rows: np.ndarray, positive: np.ndarray) -> TokenBatch:
        """Tokens `rows` labelled by the token mask `positive`, with their examples as text."""
        positive_ids = set(example_ids[rows][positive[rows]].tolist())
        return TokenBatch(
            acts=X[rows],
            example=example_ids[rows],
            label=positive[rows].astype(np.int8),
            examples=[
                dataclasses.replace(examples[k], label=int(k in positive_ids))
                for k in np.unique(example_ids[rows]).tolist()
            ],
        )

    t0 = time.time()
    method.setup(batch(np.arange(len(meta)), (meta["category"] == "positive").to_numpy()))
    log.info("setup in %.1fs", time.time() - t0)

    limit = s["method"].get("max_concepts")
    stacked: dict[str, list[np.ndarray]] = {}
    trained, unmatched, seconds, out_of_scope = [], {}, {}, []
    for n, c in enumerate(concepts):
        cid = c["concept_id"]
        if limit is not None and n >= limit:  # by config: the report compares on the subset
            unmatched[cid] = f"not trained: method.{s['method_name']}.max_concepts={limit}"
            out_of_scope.append(cid)
            continue
        # AxBench: a concept trains on its positives plus the shared negatives of its genre.
        pos = ((meta["concept_id"] == cid) & (meta["category"] == "positive")).to_numpy()
        neg = ((meta["concept_id"] == -1) & (meta["concept_genre"] == c["genre"])).to_numpy()
        t0 = time.time()
        try:
            params = method.fit(
                batch(np.flatnonzero(pos | neg), pos), concept=c["concept"], seed=s["seed"]
            )
        except Unmatched as err:
            unmatched[cid] = str(err)
            log.warning("concept %s (%s): unmatched: %s", cid, c["concept"], err)
            continue
        seconds[cid] = round(time.time() - t0, 2)
        log.info("concept %s trained in %.1fs", cid, seconds[cid])
        trained.append(cid)
        for k, v in params.items():
            v = np.asarray(v)
            stacked.setdefault(k, []).append(v if v.dtype == np.float16 else v.astype(np.float32))
    tensors = {k: np.stack(v) for k, v in stacked.items()}
    tensors["concept_id"] = np.array(trained, dtype=np.int64)
    metadata = {
        "method": s["method_name"],
        "unmatched": unmatched,
        "out_of_scope": out_of_scope,
        "fit_seconds": seconds,
    }
    store.write_tensors(tensors, spec["output"]["params"], metadata=metadata)
    store.write_json(s, spec["output"]["config"])


def read_unmatched(params_path: str) -> dict[int, str]:
    """Concepts a train job has no parameters for, with the reason (from the params metadata)."""
    _, meta = store.read_tensors(params_path)
    return {int(k): v for k, v in json.loads(meta.get("unmatched", "{}")).items()}


def _concept_params(tensors: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    return {k: v[row] for k, v in tensors.items() if k != "concept_id"}


def _pooled_scores(method, params, meta, X, idx, examples, concept):
    """(example ids, max-pooled scores, argmax token offsets or None, token scores or None)."""
    if method.detect_level == "sequence":
        ex_ids = np.unique(meta["example_id"].to_numpy()[idx])
        scores = method.sequence_scores(params, [examples[k] for k in ex_ids], concept=concept)
        return ex_ids, np.asarray(scores, np.float32), None, None
    from axflow.metrics.detection import max_pool

    scores = method.token_scores(params, X[idx]).astype(np.float32)
    token_examples = meta["example_id"].to_numpy()[idx]
    maxes, argmax = max_pool(scores, token_examples)
    return np.unique(token_examples), maxes, argmax, scores


@stage("detect")
def detect_stage(spec: dict[str, Any]) -> None:
    from axflow.methods import build_method
    from axflow.metrics.detection import hard_negative_accuracy, roc_auc, youden_threshold
    from axflow.metrics.uncertainty import delong_auroc

    s = spec["slice"]
    method = build_method(s["method"], _runtime(spec, s))
    tensors, _ = store.read_tensors(spec["input"]["params"])
    meta, X = read_activations(spec["input"]["acts"])
    examples = _examples(spec["input"]["examples"])
    concepts = {
        c["concept_id"]: c["concept"]
        for c in store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    }
    pool_idx = np.flatnonzero((meta["category"] == "negative").to_numpy())
    score_rows, metric_rows, pool_rows = [], [], []
    for row, cid in enumerate(tensors["concept_id"].tolist()):
        params = _concept_params(tensors, row)
        idx = np.flatnonzero((meta["concept_id"] == cid).to_numpy())
        ex_ids, maxes, argmax, scores = _pooled_scores(
            method, params, meta, X, idx, examples, concepts[cid]
        )
        if method.detect_level == "token":  # imbalanced pool: every concept's negatives
            pool_ids, pool_max, _, _ = _pooled_scores(
                method, params, meta, X, pool_idx, examples, concepts[cid]
            )
            pool_rows += [
                {"concept_id": cid, "example_id": int(e), "max_act": float(v)}
                for e, v in zip(pool_ids, pool_max, strict=True)
            ]
        cats = np.array([examples[k].category for k in ex_ids])
        example_of_token = meta["example_id"].to_numpy()[idx]
        positions = meta["position"].to_numpy()[idx]
        tokens = meta["token"].to_numpy()[idx] if scores is not None else None
        for j, ex in enumerate(ex_ids):
            record = {
                "concept_id": cid,
                "example_id": int(ex),
                "category": cats[j],
                "label": int(cats[j] == "positive"),
                "max_act": float(maxes[j]),
                "max_act_position": -1,
                "max_token": "",
                "acts": [],
            }
            if scores is not None:
                sel = np.flatnonzero(example_of_token == ex)
                best = sel[int(argmax[j])]  # max_pool: offset of the max within the example
                record.update(
                    max_act_position=int(positions[best]),
                    max_token=str(tokens[best]),
                    acts=np.round(scores[sel], 3).tolist(),
                )
            score_rows.append(record)
        is_pos, is_neg, is_hard = (
            (cats == "positive"),
            (cats == "negative"),
            (cats == "hard negative"),
        )
        labels = np.r_[np.ones(is_pos.sum()), np.zeros(is_neg.sum())]
        pn_scores = np.r_[maxes[is_pos], maxes[is_neg]]
        auc = delong_auroc(labels, pn_scores)
        metric_rows.append(
            {
                "concept_id": cid,
                "roc_auc": roc_auc(labels, pn_scores),
                "roc_auc_lo": auc.lo,
                "roc_auc_hi": auc.hi,
                "hard_negative_accuracy": hard_negative_accuracy(
                    maxes[is_pos], maxes[is_neg], maxes[is_hard]
                ),
                "optimal_threshold": youden_threshold(labels, pn_scores)
                if is_pos.any() and is_neg.any()
                else None,
                "max_act": float(maxes.max()) if len(maxes) else 0.0,
                "n_positive": int(is_pos.sum()),
                "n_negative": int(is_neg.sum()),
                "n_hard_negative": int(is_hard.sum()),
            }
        )
    out = spec["output"]
    store.write_table(
        pl.DataFrame(score_rows, schema_overrides={"acts": pl.List(pl.Float32)}),
        out["scores"],
        "detect_scores",
    )
    store.write_table(
        pl.DataFrame(
            pool_rows,
            schema={"concept_id": pl.Int64, "example_id": pl.Int64, "max_act": pl.Float32},
        ),
        out["pool"],
        "pool_scores",
    )
    store.write_table(pl.DataFrame(metric_rows), out["metrics"], "detect_metrics")


def steering_strength_base(metrics_path: str | None) -> dict[int, float]:
    """Per-concept max detection activation (AxBench: ≤ 0 falls back to 50)."""
    if metrics_path is None:
        return {}
    m = store.read_table(metrics_path, "detect_metrics").to_pydict()
    return {c: (a if a > 0 else 50.0) for c, a in zip(m["concept_id"], m["max_act"], strict=True)}


@stage("steer")
def steer_stage(spec: dict[str, Any]) -> None:
    from axflow.data.synthesize import row_seed
    from axflow.lm.generate import GenerationRequest, generate
    from axflow.lm.prompts import format_prompt
    from axflow.methods import build_method

    s = spec["slice"]
    st, train = s["steering"], s["train"]
    method = build_method(train["method"], _runtime(spec, train))
    vllm_engine = None
    on_vllm = st.get("engine", "hf") == "vllm"
    if on_vllm and method.steering not in ("add", "prompt"):
        log.info(
            "steering.engine=vllm: method %s steers with %r, which stays on the hf engine",
            train["method"].get("kind"),
            method.steering,
        )
        on_vllm = False
    if on_vllm:
        from axflow.lm.vllm_engine import VLLMEngine

        rt = method.runtime
        # Started on the first generate, sized for the longest prompt; exposes .tokenizer/.chat.
        vllm_engine = VLLMEngine(
            rt.model_dir,
            dtype=rt.dtype,
            chat=rt.chat,
            max_model_len=None,
            max_num_seqs=st["batch_size"],
            seed=train["seed"],
        )
        lm = vllm_engine
    else:
        lm = method.runtime.lm
    concepts = {
        c["concept_id"]: c["concept"]
        for c in store.read_table(spec["input"]["concepts"], "concepts").to_pylist()
    }
    prompts = store.read_table(spec["input"]["prompts"], "steer_prompts").to_pylist()
    tensors, _ = store.read_tensors(spec["input"]["params"])
    rows_of = {int(c): i for i, c in enumerate(tensors["concept_id"].tolist())}
    skipped = sorted({p["concept_id"] for p in prompts} - set(rows_of))
    if skipped:
        log.warning("no parameters (see the train job's metadata) for concepts %s", skipped)
    max_act = steering_strength_base(spec["input"].get("detect_metrics"))
    factors = [None] if method.factor_free else st["factors"]
    records, requests = [], []
    for p in prompts:
        cid, concept = p["concept_id"], concepts[p["concept_id"]]
        if cid not in rows_of:
            continue
        user = (
            method.prompt_for(concept, p["instruction"])
            if method.steering == "prompt"
            else (p["instruction"])
        )
        text = format_prompt(lm.tokenizer, user, lm.chat)
        for factor in factors:
            delta, strength = None, None
            if method.steering == "add":
                vec = method.steering_vector(_concept_params(tensors, rows_of[cid]))
                strength = float(factor) * max_act.get(cid, 1.0)
                delta = (strength * vec).astype(np.float32)
            seed = row_seed(train["seed"], "steer", cid, p["input_id"], factor)
            requests.append(GenerationRequest(text, seed=seed, delta=delta))
            records.append(
                {
                    "concept_id": cid,
                    "concept": concept,
                    "input_id": p["input_id"],
                    "split": p["split"],
                    "factor": factor,
                    "strength": strength,
                    "instruction": p["instruction"],
                    "prompt": text,
                    "seed": seed,
                }
            )
    options = {
        "layer": method.runtime.layer,
        "max_new_tokens": st["max_new_tokens"],
        "temperature": st["temperature"],
        "batch_size": st["batch_size"],
    }
    t0 = time.time()
    if method.steering == "model":  # one finetuned model per concept
        outputs = [""] * len(requests)
        for cid, row in rows_of.items():
            mine = [k for k, r in enumerate(records) if r["concept_id"] == cid]
            with method.steered(_concept_params(tensors, row)):
                for k, o in zip(
                    mine, generate(lm, [requests[k] for k in mine], **options), strict=True
                ):
                    outputs[k] = o
    elif vllm_engine is not None:  # one call: vLLM schedules all requests itself
        try:
            outputs = vllm_engine.generate(requests, **options)
        finally:
            vllm_engine.close()
    else:
        outputs = generate(lm, requests, **options)
    log.info("generated %d continuations in %.1fs", len(outputs), time.time() - t0)
    for r, o in zip(records, outputs, strict=True):
        r["generation"] = o
    store.write_table(
        pl.DataFrame(records, infer_schema_length=None),
        spec["output"]["generations"],
        "generations",
    )
    store.write_json(s, spec["output"]["config"])


@stage("judge")
def judge_stage(spec: dict[str, Any]) -> None:
    from axflow.data.synthesize import open_cache
    from axflow.judge import JudgeItem, build_judge
    from axflow.lm.models import weights_dir
    from axflow.lm.vllm_server import served

    s = spec["slice"]
    gens = store.read_table(spec["input"]["generations"], "generations").to_pylist()
    model_dir = weights_dir(Path(spec["input"]["model"]))
    model_id = _model_id(spec, s["steer"]["train"]["acts"]["model"])
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


@stage("report")
def report_stage(spec: dict[str, Any]) -> None:
    from axflow.report import write_report

    write_report(spec["extra"]["methods"], spec["extra"]["config"], spec["input"], spec["output"])


@stage("sweep_report")
def sweep_report_stage(spec: dict[str, Any]) -> None:
    from axflow.report import write_sweep_report

    write_sweep_report(spec["extra"], spec["input"], spec["output"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m axflow.stage")
    parser.add_argument("spec", help="JSON: stage, slice, extra, input/output names, cache_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input", nargs="*", default=[])
    parser.add_argument("--output", nargs="*", default=[])
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    spec["input"] = dict(zip(spec.pop("input_names"), args.input, strict=True))
    spec["output"] = dict(zip(spec.pop("output_names"), args.output, strict=True))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log.info("stage %s", spec["stage"])
    t0 = time.time()
    STAGES[spec["stage"]](spec)
    log.info("stage %s done in %.1fs", spec["stage"], time.time() - t0)


if __name__ == "__main__":
    main()
