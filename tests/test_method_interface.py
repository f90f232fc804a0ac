"""The `Method` interface declares everything the stages use, and its capability flags say what
each method really does."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from axflow.methods import Example, Method, TokenBatch, build_method, method_class

SRC = Path(__file__).resolve().parents[1] / "src" / "axflow"
KINDS = sorted(p.stem for p in (SRC.parents[1] / "config" / "method").glob("*.yaml"))
# Methods that work on the examples' text and the model alone (checked in their modules).
TEXT_ONLY = {"prompt", "bow", "loreft", "lora", "sft"}


def _method_attributes(path: Path) -> set[str]:
    """Attributes read off a variable named `method` anywhere in a module."""
    return {
        node.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "method"
    }


# The code that drives a method: the stages, and AxBench's rules they call.
CALLERS = sorted(
    str(p.relative_to(SRC)) for d in ("stages", "protocol") for p in (SRC / d).glob("*.py")
)


@pytest.mark.parametrize("module", CALLERS)
def test_callers_use_only_what_method_declares(module):
    instance = {"cfg", "runtime"}  # set by Method.__init__
    used = _method_attributes(SRC / module)
    undeclared = sorted(a for a in used if not hasattr(Method, a) and a not in instance)
    assert not undeclared, f"{module} uses Method.{undeclared}, which Method does not declare"


def test_the_interface_declares_prompt_for_and_no_unused_flag():
    assert "prompt_for" in vars(Method)
    with pytest.raises(NotImplementedError, match="does not steer by prompting"):
        build_method({"kind": "diffmean"}).prompt_for("c", "i")
    assert not hasattr(Method, "uses_lm")


@pytest.mark.parametrize("kind", KINDS)
def test_reads_activations_flag(kind):
    assert method_class(kind).reads_activations is (kind not in TEXT_ONLY)


class _NoActivations:
    """Stands in for `TokenBatch.acts` and fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"read the activations ({name})")

    def __array__(self, *args, **kwargs):
        raise AssertionError("read the activations")

    def __getitem__(self, key):
        raise AssertionError("read the activations")


def _text_batch() -> TokenBatch:
    examples = [
        Example(i, f"instruction {i}", "the sea and waves" if i % 2 else "a tax form", i % 2)
        for i in range(8)
    ]
    example = np.repeat(np.arange(8), 3)
    return TokenBatch(
        acts=_NoActivations(),  # type: ignore[arg-type]
        example=example,
        label=(example % 2).astype(np.int8),
        examples=examples,
    )


@pytest.mark.parametrize("kind", ["bow", "prompt", "diffmean", "pca", "lat", "random"])
def test_the_flag_matches_what_fit_reads(kind):
    method = build_method({"kind": kind})
    if method.reads_activations:
        with pytest.raises(AssertionError, match="read the activations"):
            method.fit(_text_batch(), concept="the sea", seed=0)
    else:
        method.fit(_text_batch(), concept="the sea", seed=0)
