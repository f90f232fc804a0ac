"""Progress bars of a job's long loops (extraction, generation, judging), written to its log.

A job's stderr is its log file (rules/common.smk), so a bar is redrawn there at most every
`MININTERVAL` seconds: the log shows how far the loop has come and tqdm's estimate of the time
left, without a record per batch. `desc` names the stage, so a log read later says whose bar it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm import tqdm

MININTERVAL = 10.0  # seconds between redraws


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar of `total` `unit`s (examples, sequences, tokens) labelled `desc`."""
    return tqdm(total=total, desc=desc, unit=unit, mininterval=MININTERVAL)


def vllm_progress(desc: str) -> Callable[..., tqdm]:
    """`use_tqdm` for vLLM's `LLM.generate`: vLLM's own bar (prompts done, token rates), labelled
    `desc` and redrawn as seldom as ours."""

    def bar(*iterable: Any, **kwargs: Any) -> tqdm:  # vLLM also wraps its request iterable
        label = f"{desc}: {kwargs['desc']}" if kwargs.get("desc") else desc
        return tqdm(*iterable, **{**kwargs, "desc": label, "mininterval": MININTERVAL})

    return bar
