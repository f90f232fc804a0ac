"""Stage `steer`: generate continuations of the steering prompts, steered per concept (and
per factor, unless the method is factor-free), on the hf or vllm engine."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import polars as pl

from axflow import store
from axflow.stages.train import concept_params, runtime

log = logging.getLogger("axflow")

HF_FALLBACK = (
    "vLLM cannot run on this machine; rerun with the override `steering.engine=hf` (e.g. "
    '`snakemake --config overrides="steering.engine=hf"`) to steer on the HF engine instead'
)


def vllm_failure(err: Exception) -> RuntimeError:
    """The steer job's error when vLLM is missing, fails to import or fails to start."""
    return RuntimeError(f"steering.engine=vllm: {err}\n{HF_FALLBACK}")


def steering_strength_base(metrics_path: str | None) -> dict[int, float]:
    """Per-concept max detection activation (AxBench: ≤ 0 falls back to 50)."""
    if metrics_path is None:
        return {}
    m = store.read_table(metrics_path, "detect_metrics").to_pydict()
    return {c: (a if a > 0 else 50.0) for c, a in zip(m["concept_id"], m["max_act"], strict=True)}


def steer_stage(spec: dict[str, Any]) -> None:
    from axflow.calls import row_seed
    from axflow.lm.generate import GenerationRequest, generate
    from axflow.lm.prompts import format_prompt
    from axflow.methods import build_method

    s = spec["slice"]
    st, train = s["steering"], s["train"]
    method = build_method(train["method"], runtime(spec, train))
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
        try:
            vllm_engine = VLLMEngine(
                rt.model_dir,
                dtype=rt.dtype,
                chat=rt.chat,
                max_model_len=None,
                max_num_seqs=st["batch_size"],
                seed=train["seed"],
            )
        except ImportError as err:
            raise vllm_failure(err) from err
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
                vec = method.steering_vector(concept_params(tensors, rows_of[cid]))
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
            with method.steered(concept_params(tensors, row)):
                for k, o in zip(
                    mine, generate(lm, [requests[k] for k in mine], **options), strict=True
                ):
                    outputs[k] = o
    elif vllm_engine is not None:  # one call: vLLM schedules all requests itself
        from axflow.lm.vllm_engine import VLLMUnavailable

        try:
            outputs = vllm_engine.generate(requests, **options)
        except VLLMUnavailable as err:
            raise vllm_failure(err) from err
        finally:
            vllm_engine.close()
    else:
        outputs = generate(lm, requests, **options)
    engine = "vllm" if vllm_engine is not None else "hf"
    log.info(
        "generated %d continuations in %.1fs on the %s engine",
        len(outputs),
        time.time() - t0,
        engine,
    )
    for r, o in zip(records, outputs, strict=True):
        r["generation"] = o
    store.write_table(
        pl.DataFrame(records, infer_schema_length=None),
        spec["output"]["generations"],
        "generations",
    )
    store.write_json(s, spec["output"]["config"])
