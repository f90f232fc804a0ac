"""One registry for stages, methods, judges and generators: lookup order, lazy imports, and the
error an unknown name gets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from axflow.calls import CallCache
from axflow.data.generators import GENERATORS, build_generator
from axflow.judge import JUDGES, build_judge
from axflow.methods import METHODS, method_class
from axflow.registry import Registry, UnknownName
from axflow.stages import STAGES, stage_function, stage_module

REPO = Path(__file__).resolve().parents[1]


def test_unknown_name_lists_known_ones_and_is_both_key_and_value_error():
    reg: Registry[int] = Registry("colour", lazy={"red": "json:dumps"}, fix="Pick another.")
    reg.register("blue")(1)
    with pytest.raises(UnknownName) as err:
        reg.get("green")
    assert str(err.value) == "unknown colour 'green'; known: ['blue', 'red']. Pick another."
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_lookup_order_registered_then_lazy_module_attribute():
    reg: Registry[object] = Registry("thing", lazy={"dumps": "json:dumps", "mod": "json"})
    assert reg.get("dumps") is json.dumps  # "module:attribute": imported and read
    assert reg.module_of("dumps") == "json"
    reg.register("dumps")(len)  # a registered entry wins over the lazy one
    assert reg.get("dumps") is len
    # "module" alone: the module must register the name when imported
    with pytest.raises(RuntimeError, match="registers no thing 'mod'"):
        reg.get("mod")
    with pytest.raises(UnknownName, match="unknown thing 'nope'"):
        reg.module_of("nope")


def test_registering_twice_is_an_error_unless_it_is_the_same_object():
    reg: Registry[object] = Registry("thing")
    reg.register("a")(len)
    reg.register("a")(len)
    with pytest.raises(ValueError, match="'a' is registered twice"):
        reg.register("a")(abs)


def test_package_lookup_imports_the_module_named_like_the_entry_first(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from axflow.registry import Registry\nREG = Registry('plugin', package=__name__)\n"
    )
    for module, name in (("alpha", "alpha"), ("beta", "gamma")):
        (pkg / f"{module}.py").write_text(
            f"from plugins import REG\n\n@REG.register({name!r})\nclass X: pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins

    assert plugins.REG.get("alpha").__module__ == "plugins.alpha"
    assert "plugins.beta" not in sys.modules  # only the module named like the entry
    assert plugins.REG.get("gamma").__module__ == "plugins.beta"  # found by importing them all
    with pytest.raises(UnknownName, match=r"known: \['alpha', 'gamma'\]"):
        plugins.REG.get("delta")
    for name in ("plugins", "plugins.alpha", "plugins.beta"):
        sys.modules.pop(name, None)


def test_the_four_tables_use_it():
    method_class("random")  # in random_direction.py: every method module is imported
    assert {"diffmean", "probe", "random", "sae_a", "lora"} <= set(METHODS.names())
    assert {"embedded", "openai"} <= set(JUDGES.names())  # known before they are imported
    assert set(GENERATORS.names()) == {"target", "openai"}
    assert [stage_module(s) for s in ("train", "sweep_report")] == [
        "axflow.stages.train",
        "axflow.stages.report",
    ]
    assert stage_function("report").__name__ == STAGES["report"][1]


def test_unknown_names_get_one_clear_error(tmp_path):
    with pytest.raises(KeyError, match=r"unknown method kind 'nope'; known: \[.*'diffmean'"):
        method_class("nope")
    with pytest.raises(KeyError, match=r"unknown stage 'nope'; known: \['acts', 'data'"):
        stage_function("nope")
    cache = CallCache(tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match=r"unknown judge backend 'gpt'; known: \['embedded'"):
        build_judge({"name": "gpt"}, model_dir=None, cache=cache)
    with pytest.raises(ValueError, match=r"unknown generator 'gpt'; known: \['openai', 'target'"):
        build_generator({"name": "gpt"}, target=None, cache=cache)  # type: ignore[arg-type]
    sentinel = object()
    assert build_generator({"name": "target"}, target=sentinel, cache=cache) is sentinel


def _modules_after(code: str) -> list[str]:
    """The axflow stage, method and judge modules a fresh interpreter holds after `code`."""
    probe = textwrap.dedent(f"""
        import json, sys
        {code}
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(
            ("axflow.stages.", "axflow.methods.", "axflow.judge.")))))
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_lookups_import_only_what_they_return():
    assert _modules_after(
        "from axflow.stages import stage_function, stage_module; "
        "stage_module('train'); stage_function('model')"
    ) == ["axflow.stages.model"]
    assert _modules_after("from axflow.methods import method_class; method_class('diffmean')") == [
        "axflow.methods.diffmean"
    ]
    assert _modules_after("from axflow.judge import JUDGES; JUDGES.names()") == [
        "axflow.judge.rubric"
    ]
