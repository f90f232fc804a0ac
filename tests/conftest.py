"""Shared fixtures: the small test model and Concept10 activations, each prepared once a session.

Environment: AXFLOW_TEST_MODEL_DIR (a prepared SmolLM2 folder; default: prepared from the
bundled GGUF once per machine under AXFLOW_TEST_CACHE), AXFLOW_SHARED_DATA
(the `shared/data` dir), AXFLOW_TEST_CACHE (where extracted activations persist between runs,
default ~/.cache/axflow/tests; "off" re-extracts every session). The loading and caching code
lives in axflow.concept10, which the bench scripts use too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axflow import concept10 as c10
from axflow.concept10 import CONCEPT10_DIR, SHARED_DATA, Concept10Acts, persistent_test_cache


@pytest.fixture(scope="session")
def smollm_dir(tmp_path_factory) -> Path:
    """A prepared SmolLM2-135M-Instruct folder (fp32 safetensors), made by the rule's own code."""
    if os.environ.get("AXFLOW_TEST_MODEL_DIR"):
        return Path(os.environ["AXFLOW_TEST_MODEL_DIR"])
    return c10.smollm_dir(persistent_test_cache() or tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def concept10() -> Path:
    """AxBench's released Concept10 2B-L10 data (train, detection eval, metadata)."""
    path = c10.concept10_dir()
    if path is None:
        pytest.skip(
            f"Concept10 data not found at {SHARED_DATA / CONCEPT10_DIR}; set AXFLOW_SHARED_DATA "
            "to the shared/data dir"
        )
    return path


@pytest.fixture(scope="session")
def concept10_acts(smollm_dir: Path, concept10: Path) -> Concept10Acts:
    """Layer-10 activations of all Concept10 train and eval rows (cached on disk)."""
    return c10.concept10_acts(smollm_dir, concept10, layers=(10,))


@pytest.fixture(scope="session")
def concept10_acts_deep(smollm_dir: Path, concept10: Path) -> Concept10Acts:
    """Layer-10 and layer-20 activations (twice the forward pass): for the slow layer-20 floors."""
    return c10.concept10_acts(smollm_dir, concept10, layers=(10, 20))


def concept10_at(request: pytest.FixtureRequest, layer: int) -> Concept10Acts:
    """The Concept10 fixture that holds `layer`: the deep one (slow tests) for layer 20."""
    return request.getfixturevalue("concept10_acts" if layer == 10 else "concept10_acts_deep")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: small matmuls on a shared 2-core machine lose more to
    thread hand-offs and oversubscription than a second thread gains."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm(smollm_dir):
    """The test model loaded once per session (fp32, chat template)."""
    from axflow.lm.models import load_model

    return load_model(smollm_dir, dtype="float32", chat=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, smollm_dir) -> Path:
    """The whole DAG on the tiny config (dag.TINY), run once a session; its results folder."""
    from dag import run_args, snakemake, stand_in_model

    results = tmp_path_factory.mktemp("workflow") / "results"
    stand_in_model(results, smollm_dir, run_args(results))
    proc = snakemake(overrides=run_args(results))
    logs = "\n".join(p.read_text() for p in results.glob("logs/**/*.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    return results
