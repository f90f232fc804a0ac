"""Helpers of the stages that load the target model (HF or vLLM) or name it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_lm(spec: dict[str, Any], model_slice: dict[str, Any]):
    """Load the job's input model as configured by `model_slice` ({"model": model config})."""
    from axflow.lm.models import load_model

    mcfg = model_slice["model"]
    return load_model(Path(spec["input"]["model"]), dtype=mcfg["dtype"], chat=mcfg["chat"])


def target_model_id(model_slice: dict[str, Any]) -> str:
    """`name@key` of the job's prepared model: names it in call-cache keys and served endpoints."""
    from axflow.layout import stage_key

    return f"{model_slice['model']['name']}@{stage_key(model_slice)}"


def vllm_fallback(err: Exception, key: str) -> RuntimeError:
    """The job's error when vLLM is missing, fails to import or fails to start: it names the
    override `key=hf` that runs the job on the HF engine instead."""
    return RuntimeError(
        f"{key}=vllm: {err}\nvLLM cannot run on this machine; rerun with the override "
        f'`{key}=hf` (e.g. `snakemake --config overrides="{key}=hf"`) to run on the HF engine '
        "instead"
    )


def in_process_vllm(
    model_dir: str | Path,
    *,
    dtype: str,
    chat: bool,
    max_num_seqs: int,
    seed: int,
    key: str,
    prefix_caching: bool = False,
):
    """An in-process `VLLMEngine` on the job's prepared model, not started: it starts on its
    first generate, sized for that call, unless started before. Where vLLM cannot be imported,
    the error names `key=hf`."""
    from axflow.lm.vllm_engine import VLLMEngine

    try:
        return VLLMEngine(
            model_dir,
            dtype=dtype,
            chat=chat,
            max_model_len=None,
            max_num_seqs=max_num_seqs,
            seed=seed,
            prefix_caching=prefix_caching,
        )
    except ImportError as err:
        raise vllm_fallback(err, key) from err
