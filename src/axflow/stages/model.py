"""Stage `model`: prepare the target model's weights (`axflow.lm.models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare_model_stage(spec: dict[str, Any]) -> None:
    from axflow.lm.models import prepare_model

    prepare_model(spec["slice"]["model"], Path(spec["output"]["weights"]))
