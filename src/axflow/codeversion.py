"""The version of the code that computes an artefact, as a digest that stage keys carry.

`code_digest(["axflow.stages.train", "axflow.methods.diffmean"])` hashes the *normalised syntax
tree* of every module those modules run: the modules themselves, their parent packages, and the
transitive closure of their `axflow.*` imports. Imports are found statically with `ast`, anywhere
in a module (this codebase imports lazily inside functions), relative ones included; a string
literal naming an axflow module (`importlib.import_module("axflow.judge.embedded")`) counts as
an import of it. The tree is `ast.dump` with module, class and function docstrings removed, so
comments, docstrings and formatting leave the digest unchanged while any change to what the code
does (an expression, a constant, a default) changes it. Not followed: third-party packages, and
the planning modules (`PLANNING`: config, plan, layout, this one), whose effect on an artefact
is its slice and its path.

Pure file reading: nothing is imported. Each module is parsed once per process and each closure
digest is computed once, so planning thousands of jobs costs one parse per module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "axflow"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of module `name` (`axflow.x.y`), or None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _parents(name: str) -> list[str]:
    """`axflow.a.b` -> [`axflow`, `axflow.a`]: the packages Python runs before the module."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# Planning code: it computes the slices, which enter the keys themselves, and never an artefact
# (a stage importing `REPO_ROOT` from it would otherwise put every edit of it in every key).
PLANNING = frozenset(f"{PACKAGE}.{m}" for m in ("config", "plan", "layout", "codeversion"))
_STRING_IMPORT = re.compile(rf"""["']({PACKAGE}(?:\.[A-Za-z_][A-Za-z0-9_]*)+)["']""")


def _statements(body: list[ast.stmt]):
    """Every statement in `body` and in the blocks nested in it (functions, classes, if, try,
    with, loops, match), in order. Imports and docstrings are statements, so expressions need no
    visit: far fewer nodes than `ast.walk`."""
    for node in body:
        yield node
        for value in ast.iter_fields(node):
            items = value[1]
            if isinstance(items, list) and items and isinstance(items[0], ast.AST):
                for item in items:
                    if isinstance(item, ast.stmt):
                        yield from _statements([item])
                    elif isinstance(item, ast.excepthandler | ast.match_case):
                        yield from _statements(item.body)


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _normalise(tree: ast.Module, name: str, path: Path, text: str) -> set[str]:
    """Remove module, class and function docstrings from `tree` (in place) and return the
    axflow modules that module `name` (at `path`, source `text`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(candidate: str) -> None:
        # `from a import b`: b is a submodule or an attribute of a; for a string, the longest
        # prefix that is a module (`axflow.lm.vllm_engine.SteeringExtension`).
        while candidate.startswith(PACKAGE):
            if module_file(candidate) is not None:
                found.add(candidate)
                return
            candidate = candidate.rpartition(".")[0]

    scopes = [tree]
    for node in _statements(tree.body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            scopes.append(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            add(base)
            for alias in node.names:
                add(f"{base}.{alias.name}")
    for scope in scopes:
        if scope.body and _is_docstring(scope.body[0]):
            scope.body = scope.body[1:] or [ast.Pass()]
    if _STRING_IMPORT.search(text):  # importlib.import_module("axflow.x.y"); rare, so walk then
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = _STRING_IMPORT.fullmatch(f'"{node.value}"')
                if match:
                    add(match.group(1))
    found.discard(name)
    return found - PLANNING


@functools.cache
def _module(name: str) -> tuple[str, frozenset[str]]:
    """(digest of the normalised tree, axflow modules it imports, parents included)."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(f"no source file for module {name!r} under {PACKAGE_DIR}")
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    deps = _normalise(tree, name, path, text)
    deps.update(p for p in _parents(name) if module_file(p) is not None)
    dump = ast.dump(tree, annotate_fields=True, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest(), frozenset(deps)


def closure(module_names: Iterable[str]) -> list[str]:
    """Every axflow module that running `module_names` runs (sorted)."""
    todo = list(module_names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_module(name)[1] - seen)
    return sorted(seen)


@functools.cache
def _digest(module_names: frozenset[str]) -> str:
    h = hashlib.sha256()
    for name in closure(module_names):
        h.update(f"{name}\0{_module(name)[0]}\n".encode())
    return h.hexdigest()[:12]


def code_digest(module_names: Iterable[str]) -> str:
    """12-hex digest of the normalised code of `module_names` and everything they import."""
    return _digest(frozenset(module_names))


def clear_cache() -> None:
    """Forget parsed modules and digests (for tests that edit a module in one process)."""
    _module.cache_clear()
    _digest.cache_clear()
