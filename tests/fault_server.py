"""A real OpenAI-compatible /v1/chat/completions on 127.0.0.1 that injects scripted faults.

`script(prompt, nth)` gets the last user message and how many times it has been asked (1 = first)
and returns a `Fault`: a normal reply, an HTTP error (500, 503, 429 with Retry-After), a stall
before the headers or in the middle of the body (read timeouts), a slow trickle of the whole body,
truncated JSON, empty `choices`, or a reply that names another model. With `start=False` the
port stays closed (connection refused), as a server still booting, until `start()` or until the
condition given to `start_when` holds.

The server counts what it saw: requests per prompt (`seen`), per fault kind (`kinds`), when each
request arrived (`arrivals`) and the Authorization headers (`auth`), so a test can assert calls
made, waits honoured and the key that was sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Fault:
    """What the server does with one request; kind "ok" answers `content` normally."""

    kind: str = "ok"  # ok | status | hang | stall | slow | truncated | empty_choices | wrong_model
    content: str = ""
    status: int = 200
    retry_after: str | None = None  # Retry-After header of a status reply
    seconds: float = 0.0  # hang/stall: how long to stay silent; slow: gap between chunks


def ok(content: str) -> Fault:
    return Fault("ok", content)


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", f"injected {code}", status=code, retry_after=retry_after)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of clients is accepted, not dropped (a connect timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultServer:
    def __init__(self, script: Callable[[str, int], Fault], *, start: bool = True) -> None:
        self.script = script
        self.requests = 0
        self.seen: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.arrivals: list[tuple[str, int, float]] = []  # (prompt, nth, monotonic time)
        self.auth: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.httpd: ThreadingHTTPServer | None = None
        self.up = threading.Event()
        self._closed = threading.Event()
        if start:
            self.start()

    def start(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()
        self.up.wait(10)

    def start_when(self, ready: Callable[[], bool]) -> None:
        """Come up (in the background) once `ready()` holds, e.g. a client saw a refusal."""

        def wait_then_serve() -> None:
            while not ready() and not self._closed.wait(0.005):
                pass
            if not self._closed.is_set():
                self._serve()

        threading.Thread(target=wait_then_serve, daemon=True).start()

    def _serve(self) -> None:
        self.httpd = _Server(("127.0.0.1", self.port), _handler(self))
        self.up.set()
        self.httpd.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self._closed.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion(model: str, content: str, prompt: str) -> dict:
    n_in, n_out = len(prompt.split()), len(content.split())
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            with server.lock:
                server.requests += 1
                server.seen[prompt] += 1
                nth = server.seen[prompt]
                server.arrivals.append((prompt, nth, time.monotonic()))
                server.auth[self.headers.get("Authorization", "")] += 1
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            fault = server.script(prompt, nth)
            with server.lock:
                server.kinds[fault.kind] += 1
            try:
                self._answer(fault, body["model"], prompt)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): what a stall is for

        def _answer(self, fault: Fault, model: str, prompt: str) -> None:
            reply = completion(model, fault.content, prompt)
            if (
                fault.kind == "status"
            ):  # "{auth}" in the message echoes the key, as leaky servers do
                message = fault.content.replace("{auth}", self.headers.get("Authorization", ""))
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return self._send(fault.status, {"error": {"message": message}}, headers)
            if fault.kind == "hang":
                time.sleep(fault.seconds)
                return self._send(200, reply)
            if fault.kind == "empty_choices":
                return self._send(200, {**reply, "choices": []})
            if fault.kind == "wrong_model":
                return self._send(200, {**reply, "model": "some-other-model"})
            data = json.dumps(reply).encode()
            if fault.kind == "truncated":  # a body cut short, its length header matching the cut
                return self._send_bytes(200, data[: len(data) // 2])
            if fault.kind in ("stall", "slow"):
                self._head(200, len(data))
                chunks = [data[: len(data) // 2], data[len(data) // 2 :]]
                if fault.kind == "slow":
                    chunks = [data[i : i + 16] for i in range(0, len(data), 16)]
                for k, chunk in enumerate(chunks):
                    if k:
                        time.sleep(fault.seconds)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                return None
            assert fault.kind == "ok", fault
            return self._send(200, reply)

        def _head(self, code: int, length: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()

        def _send_bytes(self, code: int, data: bytes, headers: dict[str, str] | None = None):
            self._head(code, len(data), headers)
            self.wfile.write(data)

        def _send(self, code: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            self._send_bytes(code, json.dumps(payload).encode(), headers)

    return Handler
