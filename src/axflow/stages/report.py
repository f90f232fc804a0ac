"""Stages `report` (one experiment) and `sweep_report` (every cell of a sweep): `axflow.report`."""

from __future__ import annotations

from typing import Any


def report_stage(spec: dict[str, Any]) -> None:
    from axflow.report import write_report

    extra = spec["extra"]
    write_report(
        extra["methods"], extra["config"], spec["input"], spec["output"], extra.get("scope")
    )


def sweep_report_stage(spec: dict[str, Any]) -> None:
    from axflow.report import write_sweep_report

    write_sweep_report(spec["extra"], spec["input"], spec["output"])
