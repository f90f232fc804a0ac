"""Model calls made reproducible: a content-addressed cache and the seeds that key sampled calls.

A call is identified by what determines its answer: the model, the sampling parameters and the
prompt. The key is the SHA-256 of their canonical JSON, so the same call made from another stage,
another process or another day finds the stored answer, and any change to a parameter misses.
Nothing judge-specific lives here: the synthesis generator shares this cache.

The store is one sqlite file in WAL mode with a busy timeout, so several processes (parallel
Snakemake jobs) can read and write it at once; each thread gets its own connection. The first
answer stored for a key wins: a rerun replays exactly what an earlier run saw, even for sampled
calls. To draw a fresh sample, put something that distinguishes it (e.g. an attempt number) into
`params`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key      TEXT PRIMARY KEY,
    model    TEXT NOT NULL,
    params   TEXT NOT NULL,
    prompt   TEXT NOT NULL,
    response TEXT NOT NULL,
    created  REAL NOT NULL
)
"""
# sqlite's default limit on host parameters per statement is 999 on older builds.
_CHUNK = 500


def _json_default(obj: Any) -> Any:
    # numpy scalars and similar expose .item(); anything else has no canonical JSON form.
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(
        f"cache keys must be JSON-serialisable, but got a {type(obj).__name__}; "
        "convert it to a str, number, list or dict before calling the cache"
    )


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always give equal text."""
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def call_key(model: str, params: Mapping[str, Any], prompt: Any) -> str:
    """The content address of a call: sha256 of {"model", "params", "prompt"} as canonical JSON."""
    payload = {"model": model, "params": dict(params), "prompt": prompt}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _prompt_text(prompt: Any) -> str:
    # Plain strings are stored as-is so the table stays readable; chat message lists as JSON.
    return prompt if isinstance(prompt, str) else canonical_json(prompt)


@dataclass
class CacheStats:
    """Counters of this process's lookups; `hits + misses` is the number of keys looked up."""

    hits: int = 0
    misses: int = 0
    writes: int = 0


class CallCache:
    """Persistent map from (model, params, prompt) to the raw response text."""

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._connect()  # fail now, with the path in the message, rather than at first use

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            # A forked child must not share the parent's sqlite handles.
            self._local = threading.local()
            self._connections = []
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise RuntimeError(
                f"cannot open the call cache at {self.path}: {err}. Check that the directory is "
                "writable and on a local file system (sqlite WAL does not work over NFS)."
            ) from err
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened; a later call reopens one."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections = []
        self._local = threading.local()

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- single calls ------------------------------------------------------------------------

    def get(self, model: str, params: Mapping[str, Any], prompt: Any) -> str | None:
        """The stored response of this exact call, or None if it was never stored."""
        row = (
            self._connect()
            .execute("SELECT response FROM calls WHERE key = ?", (call_key(model, params, prompt),))
            .fetchone()
        )
        self._count(hits=int(row is not None), misses=int(row is None))
        return None if row is None else row[0]

    def put(self, model: str, params: Mapping[str, Any], prompt: Any, response: str) -> None:
        """Store a response; if the call is already stored, the earlier response is kept."""
        self.put_many(model, params, [prompt], [response])

    # -- batches -----------------------------------------------------------------------------

    def get_many(
        self, model: str, params: Mapping[str, Any], prompts: Sequence[Any]
    ) -> list[str | None]:
        """Stored responses for many prompts sharing model and params, in prompt order."""
        keys = [call_key(model, params, p) for p in prompts]
        found: dict[str, str] = {}
        conn = self._connect()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                conn.execute(f"SELECT key, response FROM calls WHERE key IN ({marks})", chunk)
            )
        out = [found.get(k) for k in keys]
        hits = sum(r is not None for r in out)
        self._count(hits=hits, misses=len(out) - hits)
        return out

    def put_many(
        self,
        model: str,
        params: Mapping[str, Any],
        prompts: Sequence[Any],
        responses: Iterable[str],
    ) -> None:
        """Store many responses in one transaction; existing keys keep their first response."""
        params_json = canonical_json(dict(params))
        now = time.time()
        rows = []
        for prompt, response in zip(prompts, responses, strict=True):
            if not isinstance(response, str):
                raise TypeError(
                    f"the call cache stores response text, but got a {type(response).__name__}; "
                    "serialise structured results (e.g. json.dumps) before storing them"
                )
            key = call_key(model, params, prompt)
            rows.append((key, model, params_json, _prompt_text(prompt), response, now))
        if not rows:
            return
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO calls (key, model, params, prompt, response, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._count(writes=len(rows))

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def _count(self, hits: int = 0, misses: int = 0, writes: int = 0) -> None:
        with self._lock:
            self.stats.hits += hits
            self.stats.misses += misses
            self.stats.writes += writes


def row_seed(seed: int, *parts: Any) -> int:
    """A stable per-row seed from the run seed and the row's identity."""
    blob = "\x1f".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def open_cache(cache_dir: str | Path) -> CallCache:
    """The run's shared call cache (`<cache_dir>/calls.sqlite`), creating the folder."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return CallCache(Path(cache_dir) / "calls.sqlite")
