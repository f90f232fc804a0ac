"""Worker side of vLLM steering: the extension mixed into vLLM's worker, and its per-step hook.

`SteeringExtension.axflow_install_steering(table_path, layer)` loads a `[R, d]` table (row 0 =
zeros) into `SteeringBuffers` and hooks decoder layer `layer`. Arguments are strings, so the same
call works through the OpenAI server's dev-mode `/collective_rpc`. Each step the hook maps the
flat `[num_tokens, d]` batch to requests (`runner.input_batch.req_ids[:num_reqs]`,
`runner.query_start_loc`), writes each request's `steer_row` / `steer_factor` (from
`SamplingParams.extra_args`) onto its tokens in the persistent per-token buffers, and applies the
registered op `axflow::steer_add_residual` (`axflow.lm.steer_op`): steered tokens become
`(hidden + residual + delta, 0)`, HF's residual stream plus the delta, rounding included;
unsteered tokens keep vLLM's tensors bit for bit. Steps with no steered request return None.

Graph mode (`load_format="axflow_steer"`, see `register_loader`): compiled graphs never run
forward hooks, so the op is attached to the block's forward when the model is loaded, before
vLLM compiles it, and the buffers are filled by a wrapper of the runner's `_model_forward`, which
runs in Python before each step's graph. The table keeps its storage (a fixed row capacity), so a
captured CUDA graph stays valid across installs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from axflow.lm.steer_op import SteeringBuffers, attach, check_table

LOAD_FORMAT = "axflow_steer"


def load_table(path: str) -> np.ndarray:
    """A `[R, d]` float32 steering table from a `.npy` file or a safetensors file (key `table`)."""
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
        table = tensors["table"] if "table" in tensors else next(iter(tensors.values()))
    else:
        table = np.load(path)
    return check_table(np.asarray(table, dtype=np.float32), f"steering table {path}").numpy()


def decoder_layers(model: Any) -> Any:
    """The decoder blocks of a vLLM causal LM (`model.model.layers` for Llama-like models)."""
    inner = getattr(model, "model", model)
    inner = getattr(inner, "language_model", inner)
    inner = getattr(inner, "model", inner)
    return inner.layers


class _SteeringState:
    def __init__(self, buffers: SteeringBuffers, layer: int):
        self.buffers, self.layer = buffers, layer
        self.remove = lambda: None  # undoes the install (hook or runner wrapper)
        self.calls = 0  # hook invocations (one per engine step that runs the layer)
        self.steered_calls = 0  # invocations that changed the output
        self.skipped = 0  # dummy/profile runs whose rows could not be mapped to requests
        self.rows = int(buffers.table.shape[0])  # rows installed (graph mode: <= capacity)


def request_rows(runner: Any, num_reqs: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, factor) of each request in the persistent batch order."""
    rows = np.zeros(num_reqs, dtype=np.int64)
    factors = np.zeros(num_reqs, dtype=np.float32)
    for i, req_id in enumerate(runner.input_batch.req_ids[:num_reqs]):
        req = runner.requests.get(req_id)
        params = getattr(req, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        row = int(extra.get("steer_row", 0) or 0)
        if not 0 <= row < n_rows:
            raise ValueError(
                f"steer_row={row} is outside the installed table (rows 0..{n_rows - 1})"
            )
        rows[i] = row
        factors[i] = float(extra.get("steer_factor", 1.0))
    return rows, factors


def fill_step(runner: Any, buffers: SteeringBuffers, num_tokens: int | None) -> bool | None:
    """Write this step's per-token rows and scales; True if a token is steered, None if the
    step's rows belong to no request (a profile or dummy run whose `num_tokens` rows do not
    match the scheduled requests; None skips that check, for padded graph batches)."""
    num_reqs = runner.input_batch.num_reqs
    if num_reqs == 0:
        return None
    qsl = runner.query_start_loc.np[: num_reqs + 1]
    if num_tokens is not None and int(qsl[-1]) != num_tokens:
        return None
    rows, factors = request_rows(runner, num_reqs, buffers.table.shape[0])
    active = (rows != 0) & (factors != 0)
    if not active.any():
        buffers.clear()
        return False
    buffers.fill(np.where(active, rows, 0), np.where(active, factors, 0), np.diff(qsl))
    return True


def register_loader() -> None:
    """Register vLLM load format `axflow_steer`: the default loader, then `attach` of fresh
    buffers to block `axflow_steer_layer` (table capacity `axflow_steer_rows` rows) of the loaded
    model, before vLLM compiles it. Loaders live in this process: the engine runs in-process."""
    import copy

    import torch
    from vllm.model_executor.model_loader import DefaultModelLoader, register_model_loader

    @register_model_loader(LOAD_FORMAT)
    class SteeredModelLoader(DefaultModelLoader):
        def __init__(self, load_config: Any):
            extra = dict(load_config.model_loader_extra_config or {})
            if "axflow_steer_layer" not in extra:
                raise ValueError(
                    f"load_format={LOAD_FORMAT!r} needs model_loader_extra_config="
                    "{'axflow_steer_layer': <layer>}"
                )
            self.axflow_layer = int(extra.pop("axflow_steer_layer"))
            self.axflow_rows = int(extra.pop("axflow_steer_rows", 1024))
            load_config = copy.copy(load_config)
            load_config.load_format, load_config.model_loader_extra_config = "auto", extra
            super().__init__(load_config)

        def load_model(self, vllm_config: Any, model_config: Any, prefix: str = "") -> Any:
            model = super().load_model(vllm_config, model_config, prefix)
            block = decoder_layers(model)[self.axflow_layer]
            weight = next(block.parameters())
            width = int(model_config.get_hidden_size())
            graphs = vllm_config.compilation_config.max_cudagraph_capture_size or 0
            tokens = max(int(vllm_config.scheduler_config.max_num_batched_tokens), int(graphs))
            table = torch.zeros(self.axflow_rows, width)
            buffers = SteeringBuffers(table, tokens, weight.device)
            attach(block, buffers)
            model.axflow_steering = (self.axflow_layer, buffers)
            return model


def _wrap_model_forward(runner: Any, state: _SteeringState):
    """Fill the buffers before every step's forward (graph mode); returns the unwrapper."""
    inner = runner._model_forward

    def model_forward(*args: Any, **kwargs: Any) -> Any:
        state.calls += 1
        steered = fill_step(runner, state.buffers, None)
        if steered is None:
            state.skipped += 1
            state.buffers.clear()
        state.steered_calls += bool(steered)
        return inner(*args, **kwargs)

    runner._model_forward = model_forward

    def unwrap() -> None:
        state.buffers.clear()
        vars(runner).pop("_model_forward", None)

    return unwrap


def _make_hook(worker: Any, state: _SteeringState):
    def hook(_module, _args, output):
        state.calls += 1
        hidden = output[0] if isinstance(output, tuple) else output
        steered = fill_step(worker.model_runner, state.buffers, hidden.shape[0])
        if steered is None:
            state.skipped += 1
            return None
        if not steered:
            return None
        state.steered_calls += 1
        return state.buffers.apply(output)

    return hook


class SteeringExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`); call via `collective_rpc`."""

    def axflow_install_steering(self, table_path: str, layer: str) -> int:
        """Load the table and steer decoder layer `layer` (replacing any earlier install); rows.
        Eager: a forward hook fills the buffers and applies the op. Graph mode: the table is
        copied into the buffers attached at load time, and a runner wrapper fills them."""
        import torch

        self.axflow_clear_steering()
        runner = self.model_runner
        model = runner.get_model()
        table = torch.from_numpy(load_table(str(table_path)))
        baked = getattr(model, "axflow_steering", None)
        if baked is not None:
            baked_layer, buffers = baked
            if int(layer) != baked_layer:
                raise ValueError(
                    f"this engine compiled steering into layer {baked_layer}; layer {layer} "
                    "needs an engine started with that layer"
                )
            if table.shape[0] > buffers.table.shape[0] or table.shape[1] != buffers.table.shape[1]:
                raise ValueError(
                    f"table of shape {tuple(table.shape)} does not fit the compiled table "
                    f"{tuple(buffers.table.shape)}; start the engine with more steering rows"
                )
            buffers.table.zero_()
            buffers.table[: table.shape[0]].copy_(table)
            state = _SteeringState(buffers, baked_layer)
            state.rows = int(table.shape[0])
            state.remove = _wrap_model_forward(runner, state)
        else:
            block = decoder_layers(model)[int(layer)]
            device = next(block.parameters()).device
            max_tokens = int(getattr(runner, "max_num_tokens", 0) or 8192)
            state = _SteeringState(SteeringBuffers(table, max_tokens, device), int(layer))
            state.remove = block.register_forward_hook(_make_hook(self, state)).remove
        self._axflow_steering = state
        return int(table.shape[0])

    def axflow_clear_steering(self) -> bool:
        """Remove the hook (a no-op when none is installed)."""
        state = getattr(self, "_axflow_steering", None)
        if state is None:
            return False
        state.remove()
        self._axflow_steering = None
        return True

    def axflow_hook_calls(self) -> dict[str, int]:
        """Counters of the installed hook (all -1 when none is installed)."""
        state = getattr(self, "_axflow_steering", None)
        if state is None:
            return {"calls": -1, "steered_calls": -1, "skipped": -1, "rows": -1, "layer": -1}
        return {
            "calls": state.calls,
            "steered_calls": state.steered_calls,
            "skipped": state.skipped,
            "rows": state.rows,
            "layer": state.layer,
        }
