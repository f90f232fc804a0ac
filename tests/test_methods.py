"""Methods: registry and config contract, fits on synthetic data, and detection on Concept10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from axflow.methods import TokenBatch, build_method, method_class
from axflow.methods.prompt import steering_prompt
from axflow.metrics.detection import max_pool, roc_auc
from conftest import concept10_at

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config/method"
# Every shipped method config: a new method is covered by the contract tests as soon as it lands.
ALL_METHODS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
LEARNED = ["diffmean", "pca", "lat", "probe"]  # fitted from activations
RANK_ONE = [*LEARNED, "random"]


def synthetic_batch(seed: int = 0, d: int = 16, tokens: int = 20) -> tuple[TokenBatch, np.ndarray]:
    """Ten positive and ten negative examples; positive tokens often carry a planted direction."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(size=d)
    planted /= np.linalg.norm(planted)
    acts, example, label = [], [], []
    for ex in range(20):
        positive = ex % 2
        h = rng.normal(size=(tokens, d))
        if positive:
            h[rng.random(tokens) < 0.5] += 4 * planted
        acts.append(h)
        example += [ex] * tokens
        label += [positive] * tokens
    batch = TokenBatch(
        acts=np.concatenate(acts).astype(np.float32),
        example=np.array(example),
        label=np.array(label, dtype=np.int8),
    )
    return batch, planted


# --- registry and configuration -------------------------------------------------------------


def test_registry_lists_all_methods():
    for kind in ALL_METHODS:
        assert method_class(kind).name == kind
    with pytest.raises(KeyError) as err:
        method_class("no-such-method")
    for kind in ALL_METHODS:
        assert kind in str(err.value)


@pytest.mark.parametrize("kind", ALL_METHODS)
def test_config_file_builds_its_method(kind):
    path = CONFIG_DIR / f"{kind}.yaml"
    assert path.read_text().splitlines()[0] == f"# @package method.{kind}"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["kind"] == kind
    assert build_method(cfg).name == kind


@pytest.mark.parametrize("kind", ALL_METHODS)
def test_unknown_config_key_is_rejected_by_name(kind):
    with pytest.raises(ValueError, match="learning_rte"):
        build_method({"kind": kind, "learning_rte": 0.1})


def test_probe_rejects_impossible_settings():
    with pytest.raises(ValueError, match="batch_size"):
        build_method({"kind": "probe", "batch_size": 0})
    with pytest.raises(ValueError, match="lr"):
        build_method({"kind": "probe", "lr": -1.0})


@pytest.mark.parametrize("kind", RANK_ONE)
def test_rank_one_methods_detect_and_steer_by_addition(kind):
    cls = method_class(kind)
    assert (cls.detects, cls.steering, cls.factor_free) == (True, "add", False)


# --- prompt steering baseline ---------------------------------------------------------------


def test_prompt_method_flags_and_fit():
    method = build_method({"kind": "prompt"})
    assert (method.detects, method.detect_level) == (True, "sequence")
    assert (method.steering, method.factor_free) == ("prompt", True)
    batch, _ = synthetic_batch()
    assert method.fit(batch, concept="x", seed=0) == {}
    with pytest.raises(ValueError, match="detect_template"):
        build_method({"kind": "prompt", "detect_template": "no text slot {concept}"})


def test_prompt_detection_scores_are_the_models_yes_no_log_odds(concept10_acts, smollm_dir):
    """Scoring after the concept's shared prompt prefix (run once, its cache repeated over
    left-padded batches) equals the log-odds read off one unpadded forward pass per example.

    (SmolLM2-135M answers this question near chance on Concept10, AUROC ≈ 0.57 on 4 concepts:
    the score is right, the model is weak; the leaderboard reports what it gets.)
    """
    import torch

    from axflow.lm.prompts import format_prompt
    from axflow.methods import Runtime
    from axflow.methods.prompt import _answer_ids

    method = build_method({"kind": "prompt", "batch_size": 4}, Runtime(smollm_dir, layer=10))
    rows = concept10_acts.eval_examples(0)[:6]
    concept = concept10_acts.concepts[0]
    scores = method.sequence_scores({}, rows, concept=concept)
    lm = method.runtime.lm
    tok = lm.tokenizer
    yes, no = _answer_ids(tok, "yes"), _answer_ids(tok, "no")
    assert yes and no and not set(yes) & set(no)
    for ex, score in zip(rows, scores, strict=True):
        text = method.cfg.detect_template.format(concept=concept, text=ex.response)
        ids = tok(format_prompt(tok, text, True), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(**ids).logits[0, -1].float(), -1)
        expected = torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0)
        assert score == pytest.approx(float(expected), abs=1e-3)
    assert np.ptp(scores) > 0.1  # the answer depends on the text


def test_bow_separates_held_out_concept10(concept10_acts):
    method = build_method({"kind": "bow"})
    aurocs = []
    for concept_id, concept in sorted(concept10_acts.concepts.items()):
        params = method.fit(concept10_acts.train_batch(concept_id, 10), concept=concept, seed=42)
        rows = [
            e for e in concept10_acts.eval_examples(concept_id) if e.category != "hard negative"
        ]
        scores = method.sequence_scores(params, rows, concept=concept)
        assert ((scores >= 0) & (scores <= 1)).all()  # P(positive)
        aurocs.append(roc_auc([e.label for e in rows], scores))
    print(f"\nbow Concept10 mean AUROC {np.mean(aurocs):.4f}")
    assert np.mean(aurocs) > 0.75


def test_random_direction_is_a_floor(concept10_acts):
    """Seeded, unit-norm, different per concept, and detection near chance on real data."""
    method = build_method({"kind": "random"})
    batch = concept10_acts.train_batch(0, 10)
    a = method.fit(batch, concept="c0", seed=1)["direction"]
    np.testing.assert_array_equal(a, method.fit(batch, concept="c0", seed=1)["direction"])
    assert abs(np.linalg.norm(a) - 1) < 1e-5
    assert abs(float(a @ method.fit(batch, concept="c1", seed=1)["direction"])) < 0.3
    mean = float(np.mean(list(concept10_acts.held_out_aurocs(method, 10).values())))
    diffmean_aurocs = concept10_acts.held_out_aurocs(build_method({"kind": "diffmean"}), 10)
    diffmean = float(np.mean(list(diffmean_aurocs.values())))
    print(f"\nrandom L10 mean AUROC {mean:.4f} vs diffmean {diffmean:.4f}")
    assert mean < diffmean - 0.15


def test_steering_prompt_carries_concept_and_instruction():
    template = yaml.safe_load((CONFIG_DIR / "prompt.yaml").read_text())["template"]
    text = steering_prompt(" references to jazz music ", "Write a haiku about autumn.\n", template)
    assert "references to jazz music" in text
    assert text.endswith("Write a haiku about autumn.")
    assert text == template.format(
        concept="references to jazz music", instruction="Write a haiku about autumn."
    )
    assert build_method({"kind": "prompt"}).prompt_for(" references to jazz music ", "x") == (
        steering_prompt("references to jazz music", "x", template)
    )
    method = build_method({"kind": "prompt", "template": "{instruction} (mention {concept})"})
    assert method.prompt_for("cats", "Hi") == "Hi (mention cats)"
    with pytest.raises(ValueError, match="instruction"):
        build_method({"kind": "prompt", "template": "only {concept}"})


# --- fits on synthetic data (no model needed) -----------------------------------------------


def test_diffmean_is_the_normalised_difference_of_token_means():
    batch = TokenBatch(
        acts=np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=np.float32),
        example=np.array([0, 0, 1]),
        label=np.array([1, 1, 0], dtype=np.int8),
    )
    params = build_method({"kind": "diffmean"}).fit(batch, concept="c", seed=0)
    np.testing.assert_allclose(params["direction"], np.array([1.0, -1.0]) / np.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize("kind", LEARNED)
def test_rank_one_fit_finds_planted_direction(kind):
    batch, planted = synthetic_batch()
    method = build_method({"kind": kind})
    params = method.fit(batch, concept="planted", seed=0)
    assert params["direction"].dtype == np.float32 and params["direction"].shape == (16,)
    assert np.linalg.norm(params["direction"]) == pytest.approx(1.0, abs=1e-5)
    assert params["bias"].shape == ()
    # Oriented: positives project higher, so the direction points along the planted one (the
    # probe's 48 short steps from a random start get there less completely: cosine ≈ 0.65).
    assert float(params["direction"] @ planted) > 0.5
    maxima, _ = max_pool(method.token_scores(params, batch.acts), batch.example)
    _, labels = batch.example_labels()
    assert roc_auc(labels, maxima) > 0.95


@pytest.mark.parametrize("kind", ["pca", "lat"])
def test_orient_sign_only_flips(kind):
    batch, _ = synthetic_batch(seed=3)
    oriented = build_method({"kind": kind}).fit(batch, concept="c", seed=1)["direction"]
    raw = build_method({"kind": kind, "orient_sign": False}).fit(batch, concept="c", seed=1)
    assert abs(float(oriented @ raw["direction"])) == pytest.approx(1.0, abs=1e-5)


# --- Concept10: held-out detection and determinism ------------------------------------------

# Mean held-out AUROC floors over the 10 concepts, about 0.05 under the values measured with
# SmolLM2-135M-Instruct (DiffMean .905/.938, PCA .767/.886, LAT .780/.886, Probe .812/.801 at
# layers 10/20). PCA and LAT fit positives only and are weaker, as in AxBench.
# DiffMean and the probe have tighter floors in test_golden_detection. Layer 20: the slow step.
CONCEPT10_FLOORS = {
    ("pca", 10): 0.70,
    ("pca", 20): 0.83,
    ("lat", 10): 0.70,
    ("lat", 20): 0.83,
}


@pytest.mark.parametrize(
    ("kind", "layer"),
    [
        pytest.param(kind, layer, marks=[pytest.mark.slow] if layer == 20 else [])
        for kind, layer in sorted(CONCEPT10_FLOORS)
    ],
)
def test_method_separates_held_out_concept10(request, kind, layer):
    acts = concept10_at(request, layer)
    aurocs = list(acts.held_out_aurocs(build_method({"kind": kind}), layer).values())
    mean = float(np.mean(aurocs))
    print(f"\n{kind} L{layer}: mean held-out AUROC {mean:.4f}")
    assert mean >= CONCEPT10_FLOORS[kind, layer], f"{kind} L{layer}: {np.round(aurocs, 3)}"


@pytest.mark.parametrize("kind", RANK_ONE)
def test_fit_is_deterministic_for_a_seed(concept10_acts, kind):
    batch = concept10_acts.train_batch(0, 10)
    method = build_method({"kind": kind})
    first = method.fit(batch, concept="c0", seed=7)
    second = method.fit(batch, concept="c0", seed=7)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
