"""Config defaults live in one place: the YAML of each option, `config/<group>/<option>.yaml`.

Hydra users read and override those files, and the composed config (with every value in it) is
what the stage keys hash, so the YAML is the source. The config dataclasses of methods, judges
and generators declare each key's type and check its value, but hold no defaults; when one is
built from a partial dict (a test, a method entry that names only its `kind`), `build_config`
fills each key it leaves out from the option's YAML. `tests/test_config_defaults.py` fails if a
dataclass field gets a default again or a field is missing from its YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

C = TypeVar("C")


@functools.cache
def _read(group: str, option: str) -> dict[str, Any]:
    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def option_defaults(group: str, option: str) -> dict[str, Any]:
    """The keys `config/<group>/<option>.yaml` sets (a fresh copy; {} if there is no file)."""
    return copy.deepcopy(_read(group, option))


def build_config(
    cls: type[C],
    cfg: Mapping[str, Any],
    *,
    group: str,
    option: str,
    accept: Iterable[str] = (),
) -> C:
    """`cls` from `cfg`, each field `cfg` leaves out taken from `config/<group>/<option>.yaml`.

    Keys in `accept` (handled elsewhere, e.g. a method's `kind`) are allowed and dropped; any
    other key that is not a field of `cls` is an error naming it and the file to fix.
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    where = f"{group}/{option}.yaml"
    unknown = sorted(set(cfg) - fields - set(accept))
    if unknown:
        raise ValueError(
            f"{group} {option!r}: unknown key(s) {unknown}; known keys: {sorted(fields)}. "
            f"Fix config/{where} or the override."
        )
    values = {k: v for k, v in cfg.items() if k in fields}
    missing = sorted(fields - set(values))
    if missing:
        defaults = option_defaults(group, option)
        unset = [k for k in missing if k not in defaults]
        if unset:
            state = "does not set them" if (CONFIG_DIR / where).is_file() else "does not exist"
            raise ValueError(
                f"{group} {option!r}: no value for {unset}, and config/{where}, which holds the "
                f"defaults of this option, {state}; set them in the config or in config/{where}."
            )
        values.update({k: defaults[k] for k in missing})
    return cls(**values)
