"""One name -> implementation table for stages, methods, judges and generators.

A job imports only the code it runs (a judge backend pulls in torch or openai, a stage its
pipeline), so entries are found lazily, and every lookup fails the same way: an `UnknownName`
naming what was asked for, every known name, and where to fix it.

A name is looked up, in order:
1. among the entries registered so far (`Registry.register`, a decorator the implementation's
   module applies when it is imported);
2. in `lazy`, as "module" (imported; it must register the name) or "module:attribute" (imported
   and read; no decorator needed), so the table is known without importing anything;
3. with `package` set: the module of that package named like the entry, then every module of it.

This module imports nothing from axflow: every lookup table in the package builds on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry answers to. A KeyError for lookups, a ValueError for config checks."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries of one kind (`what`: "stage", "method kind", ...) by name, imported on demand."""

    def __init__(
        self,
        what: str,
        *,
        lazy: Mapping[str, str] | None = None,
        package: str | None = None,
        fix: str = "",
    ) -> None:
        self.what, self.fix, self.package = what, fix, package
        self._lazy = dict(lazy or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `obj` under `name`; a second, different entry of that name is an
        error (the same object again, e.g. a module imported twice, is not)."""

        def add(obj: T) -> T:
            held = self._entries.get(name)
            if held is not None and held is not obj:
                raise ValueError(f"{self.what} {name!r} is registered twice: {held!r}, {obj!r}")
            self._entries[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        """Every name known without importing more: registered and lazy ones."""
        return sorted(set(self._entries) | set(self._lazy))

    def module_of(self, name: str) -> str:
        """The module a lazy entry lives in, without importing it."""
        if name not in self._lazy:
            raise self.unknown(name)
        return self._lazy[name].partition(":")[0]

    def get(self, name: str) -> T:
        """The entry `name`, importing its module first if needed."""
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            loaded = importlib.import_module(module)
            if attribute:
                return getattr(loaded, attribute)
            if name not in self._entries:
                raise RuntimeError(
                    f"module {module} was imported but registers no {self.what} "
                    f"{name!r}; register it there with `@register({name!r})`"
                )
            return self._entries[name]
        if self.package is not None:
            # The module named like the entry first, so planning a run does not pay for every
            # module's dependencies; then all of them, for entries named otherwise.
            if name.isidentifier() and importlib.util.find_spec(f"{self.package}.{name}"):
                importlib.import_module(f"{self.package}.{name}")
            if name not in self._entries:
                self._import_package()
            if name in self._entries:
                return self._entries[name]
        raise self.unknown(name)

    def unknown(self, name: object) -> UnknownName:
        """The error for `name`: what was asked for, the known names, and the fix."""
        if self.package is not None:
            self._import_package()
        hint = f" {self.fix}" if self.fix else ""
        return UnknownName(f"unknown {self.what} {name!r}; known: {self.names()}.{hint}")

    def _import_package(self) -> None:
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")
