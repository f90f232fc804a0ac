"""Helpers of the stages that load the target model or name it."""

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
