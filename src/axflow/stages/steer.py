"""Stage `steer`: generate continuations of the steering prompts, steered per concept (and
per factor, unless the method is factor-free), on the hf or vllm engine."""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl

from axflow import store
from axflow.stages._common import in_process_vllm, vllm_fallback
from axflow.stages.train import concept_params, runtime

log = logging.getLogger("axflow")


def steer_stage(spec: dict[str, Any]) -> None:
    from axflow.calls import row_seed
    from axflow.lm.generate import GenerationRequest, generate
    from axflow.lm.prompts import format_prompt
    from axflow.methods import build_method
    from axflow.protocol import steering as protocol

    s = spec["slice"]
    st, train = s["steering"], s["train"]
    method = build_method(train["method"], runtime(spec, train))
    vllm_engine = None
    engine = protocol.engine_for(method, st.get("engine", "hf"))
    if engine != st.get("engine", "hf"):
        log.info(
            "steering.engine=%s: method %s steers with %r, which runs on the hf engine",
            st.get("engine"),
            train["method"].get("kind"),
            method.steering,
        )
    if engine == "vllm":
        rt = method.runtime
        # Started on the first generate, sized for the longest prompt; exposes .tokenizer/.chat.
        vllm_engine = in_process_vllm(
            rt.model_dir,
            dtype=rt.dtype,
            chat=rt.chat,
            max_num_seqs=st["batch_size"],
            seed=train["seed"],
            key="steering.engine",
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
    base = {}
    if spec["input"].get("detect_metrics"):
        m = store.read_table(spec["input"]["detect_metrics"], "detect_metrics")
        base = protocol.strength_base(m["concept_id"].to_pylist(), m["max_act"].to_pylist())
    steer = protocol.steer_requests(
        method,
        [p for p in prompts if p["concept_id"] in rows_of],
        concepts,
        lambda cid: concept_params(tensors, rows_of[cid]),
        st.get("factors", []),
        base,
        lambda cid, input_id, factor: row_seed(train["seed"], "steer", cid, input_id, factor),
    )
    requests, records = [], []
    for r in steer:
        text = format_prompt(lm.tokenizer, r.user, lm.chat)
        additive = isinstance(r.edit, protocol.Add)
        requests.append(
            GenerationRequest(
                text,
                seed=r.seed,
                delta=r.edit.delta if additive else None,
                edit=None if additive else r.edit,
            )
        )
        records.append(
            {
                "concept_id": r.concept_id,
                "concept": concepts[r.concept_id],
                "input_id": r.prompt["input_id"],
                "split": r.prompt["split"],
                "factor": r.factor,
                "strength": r.strength,
                "instruction": r.prompt["instruction"],
                "prompt": text,
                "seed": r.seed,
            }
        )
    options = {
        "layer": method.runtime.layer,
        "max_new_tokens": st["max_new_tokens"],
        "temperature": st["temperature"],
        "batch_size": st["batch_size"],
        "progress": "steer",  # a bar in the job log, on either engine
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
            raise vllm_fallback(err, "steering.engine") from err
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
