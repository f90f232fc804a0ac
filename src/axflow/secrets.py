"""API keys come from the environment only, and never reach a file the run writes.

The judge and generator configs name the variable that holds the key (`api_key_env`); the
config itself is written beside every artefact (config.json), sits in Snakemake's job commands
and metadata, and keys the call cache, so a key in it would be copied everywhere.
`check_no_secrets` refuses such a config while the DAG is planned (axflow.config.validate) and
again when a backend is built; `redacted` masks the key in any error text a server sent back.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_KEYS = ("api_key", "apikey", "key", "token", "secret", "password", "authorization")
KEY_LIKE = re.compile(r"\b(sk|sk-proj|sk-ant)-[A-Za-z0-9_-]{16,}|\bBearer\s+\S{16,}")


def api_key(env_name: str) -> str:
    """The key from $env_name; local servers accept any, so unset gives "EMPTY"."""
    return os.environ.get(env_name) or "EMPTY"


def redacted(err: BaseException | str, env_name: str, limit: int = 300) -> str:
    """`err` as text for a log or message, the key from $env_name masked (a server may echo it)."""
    text = str(err)[:limit]
    key = os.environ.get(env_name)
    return text.replace(key, "***") if key else text


def _walk(cfg: Any, where: str):
    """(dotted path, key, value) of every entry of a nested config."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            yield f"{where}.{k}", str(k), v
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            yield f"{where}[{i}]", "", v
            yield from _walk(v, f"{where}[{i}]")


def check_no_secrets(cfg: dict[str, Any], group: str) -> None:
    """Raise ValueError naming the key to fix if the `group` config (judge, generator) carries
    a secret: a key-named entry, a value that looks like a key or equals $api_key_env's, an
    api_key_env that is no variable name, or a base_url with credentials."""
    env = cfg.get("api_key_env")
    if env is not None and not ENV_NAME.fullmatch(str(env)):
        raise ValueError(
            f"config key {group}.api_key_env: it must name an environment variable (e.g. "
            "OPENAI_API_KEY), and this value is not a variable name; if it is the key itself, "
            f"remove it from the config, export it and set {group}.api_key_env to the variable"
        )
    live = os.environ.get(str(env)) if env else None
    for path, name, value in _walk(cfg, group):
        text = value if isinstance(value, str) else ""
        is_key = bool(KEY_LIKE.search(text)) or (live and len(live) >= 8 and live in text)
        if name.lower() in SECRET_KEYS or is_key:
            raise ValueError(
                f"config key {path}: keys are read from the environment only, never from the "
                "config (it is written to every results folder's config.json). Remove it, export "
                f"the key in a variable and set {group}.api_key_env to the variable's name"
            )
    url = cfg.get("base_url")
    if url and (urlsplit(str(url)).username or urlsplit(str(url)).password):
        raise ValueError(
            f"config key {group}.base_url: it carries credentials (user:password@); remove them "
            f"and pass the key through the variable named by {group}.api_key_env"
        )
