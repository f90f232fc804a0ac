"""The two model-shape helpers every engine and method uses: decoder blocks and residual width."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import Gemma3Config, LlamaConfig

from axflow.lm.models import decoder_layers, hidden_size


def _with(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


def test_decoder_layers_of_text_and_multimodal_layouts():
    blocks = nn.ModuleList([nn.Linear(2, 2)])
    layouts = {
        "llama (transformers and vLLM)": _with(model=_with(layers=blocks)),
        "gemma 3 (transformers)": _with(model=_with(language_model=_with(layers=blocks))),
        "gemma 3 (vLLM)": _with(language_model=_with(model=_with(layers=blocks))),
        "a base model": _with(layers=blocks),
    }
    for name, model in layouts.items():
        assert decoder_layers(model) is blocks, name
    with pytest.raises(AttributeError, match="decoder blocks"):
        decoder_layers(_with(model=nn.Linear(2, 2)))


def test_hidden_size_of_a_model_or_its_config_is_the_text_width():
    llama = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1)
    assert hidden_size(llama) == 64
    gemma = Gemma3Config(text_config={"hidden_size": 96})
    assert hidden_size(gemma) == 96  # the text model's width, not the vision tower's
    model = nn.Module()
    model.config = llama
    assert hidden_size(model) == 64
