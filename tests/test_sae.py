"""SAE / SAE-A: a trained SAE reloads exactly, trains, picks latents that detect held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from axflow.lm.sae import SparseAutoencoder
from axflow.methods import TokenBatch, Unmatched, build_method, method_class
from axflow.methods._sae_training import train_topk
from axflow.metrics.detection import max_pool, roc_auc

LAYER = 10
TRAIN_TOKENS = 20_000  # about the default experiment's training set
SMALL = {"width": 1024, "k": 32, "epochs": 4, "batch_size": 1024, "lr": 2e-3}
CONCEPTS = (0, 1, 2, 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(concept10_acts):
    """A small TopK SAE on a seeded 20k-token sample of Concept10's layer-10 training tokens."""
    acts = concept10_acts.train.acts[LAYER]
    sample = np.random.default_rng(0).choice(len(acts), TRAIN_TOKENS, replace=False)
    sae, log = train_topk(acts[np.sort(sample)], seed=0, **SMALL)
    print(f"\ntrained width {sae.width} on {log.tokens} tokens in {log.seconds:.1f}s: {log}")
    return sae, log


def method_with(kind: str, sae: SparseAutoencoder):
    method = build_method({"kind": kind, **SMALL})
    method.sae = sae
    return method


def held_out_auroc(acts, method, params, concept_id: int) -> float:
    token_acts, example, rows = acts.eval_tokens(concept_id, LAYER)
    maxima, _ = max_pool(method.token_scores(params, token_acts), example)
    category = rows["category"].to_numpy()
    scored = category != "hard negative"
    return roc_auc((category[scored] == "positive").astype(int), maxima[scored])


# --- the SAE itself -----------------------------------------------------------------------


def test_saved_sae_reloads_exactly_and_reconstructs(trained, concept10_acts, tmp_path):
    sae, _ = trained
    held_out = concept10_acts.eval.acts[LAYER][:4000]
    z = sae.encode(held_out)
    assert z.shape == (len(held_out), sae.width)
    assert ((z > 0).sum(1) <= sae.k).all()
    for saved in (sae.save(tmp_path / "saelens"), sae.save_npz(tmp_path / "gemmascope")):
        loaded = SparseAutoencoder.load(saved)
        assert (loaded.architecture, loaded.k) == ("topk", sae.k)
        np.testing.assert_array_equal(loaded.encode(held_out), z)
        np.testing.assert_array_equal(loaded.decode(z), sae.decode(z))
    assert sorted(p.name for p in (tmp_path / "saelens").iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    cfg = json.loads((tmp_path / "saelens/cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["d_in"], cfg["d_sae"]) == ("topk", 32, 576, 1024)
    # Held-out tokens (the eval split): a real share of their variance is reconstructed.
    fvu = sae.fvu(concept10_acts.eval.acts[LAYER][:20_000])
    print(f"\nheld-out FVU {fvu:.3f}")
    assert fvu < 0.5
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=1), 1.0, atol=1e-5)


def test_training_loss_falls_and_is_deterministic(trained, concept10_acts):
    _, log = trained
    fvu = log.epoch_fvu
    assert all(b < a for a, b in zip(fvu, fvu[1:], strict=False)), fvu
    assert fvu[-1] < 0.6 * fvu[0], fvu
    acts = concept10_acts.train.acts[LAYER][:3000]
    small = {"width": 128, "k": 8, "epochs": 2, "batch_size": 256, "lr": 2e-3}
    first, _ = train_topk(acts, seed=5, **small)
    again, _ = train_topk(acts, seed=5, **small)
    other, _ = train_topk(acts, seed=6, **small)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.W_dec, other.W_dec)


def test_saelens_config_of_older_releases_and_b_dec_subtraction(trained, concept10_acts, tmp_path):
    """SAELens < 6 wrote TopK as standard + activation_fn_str, and subtracts b_dec by default."""
    from safetensors.numpy import save_file

    sae, _ = trained
    b_enc = sae.b_enc + sae.b_dec @ sae.W_enc  # same encoder when b_dec is subtracted first
    save_file(
        {"W_enc": sae.W_enc, "b_enc": b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec},
        str(tmp_path / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": sae.k},
        "d_in": sae.d,
        "d_sae": sae.width,
        "normalize_activations": "none",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = SparseAutoencoder.load(tmp_path)
    assert (loaded.architecture, loaded.k, loaded.apply_b_dec_to_input) == ("topk", sae.k, True)
    h = concept10_acts.eval.acts[LAYER][:500]
    # Same latents up to float rounding (which may swap near-ties at TopK's cut).
    assert np.isclose(loaded.encode(h), sae.encode(h), atol=2e-3).mean() > 0.999
    method = method_with("sae", loaded)
    for latent in (0, 17, 500):
        np.testing.assert_allclose(
            method.token_scores(loaded.latent_params(latent), h),
            method.token_scores(sae.latent_params(latent), h),
            atol=2e-3,
        )
    cfg["normalize_activations"] = "constant_norm_rescale"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="normalize_activations"):
        SparseAutoencoder.load(tmp_path)


# --- the methods --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sae", "sae_a"])
def test_config_file_and_flags(kind):
    # The YAML contract (header, kind, builds) is test_methods.test_config_file_builds_its_method.
    cls = method_class(kind)
    flags = (cls.detects, cls.detect_level, cls.steering, cls.reads_activations, cls.factor_free)
    assert flags == (True, "token", "add", True, False)
    with pytest.raises(ValueError, match="learning_rte"):
        build_method({"kind": kind, "learning_rte": 0.1})
    with pytest.raises(ValueError, match=rf"method\.{kind}\.k"):
        build_method({"kind": kind, "width": 16, "k": 32})


def test_sae_a_latent_detects_held_out_concepts(trained, concept10_acts):
    sae, _ = trained
    scores = {"sae": [], "sae_a": [], "random": []}
    rng = np.random.default_rng(0)
    for concept_id in CONCEPTS:
        batch = concept10_acts.train_batch(concept_id, LAYER)
        concept = concept10_acts.concepts[concept_id]
        for kind in ("sae", "sae_a"):
            method = method_with(kind, sae)
            params = method.fit(batch, concept=concept, seed=0)
            assert set(params) == {"latent", "w_enc", "b_enc", "threshold", "w_dec"}
            latent = int(params["latent"])
            # The per-concept parameters reproduce the latent's activation wherever TopK keeps
            # it (elsewhere TopK would zero it; see the method's docstring).
            h = batch.acts[:2000]
            own = method.token_scores(params, h)
            full = sae.encode(h)[:, latent]
            kept = full > 0
            np.testing.assert_allclose(own[kept], full[kept], rtol=1e-4, atol=1e-4)
            assert (own >= 0).all()
            vector = method.steering_vector(params)
            np.testing.assert_allclose(vector, sae.W_dec[latent], atol=1e-5)
            scores[kind].append(held_out_auroc(concept10_acts, method, params, concept_id))
        for latent in rng.choice(sae.width, 5, replace=False):
            params = sae.latent_params(int(latent))
            scores["random"].append(
                held_out_auroc(concept10_acts, method_with("sae", sae), params, concept_id)
            )
    means = {kind: float(np.mean(v)) for kind, v in scores.items()}
    print(f"\nheld-out AUROC concepts {CONCEPTS}: {scores}\nmeans {means}")
    assert means["sae_a"] > 0.8
    assert means["sae"] > 0.7
    assert means["sae_a"] > means["random"] + 0.2


def test_unmatched_concepts_are_reported(trained, concept10_acts, tmp_path):
    sae, _ = trained
    batch = concept10_acts.train_batch(0, LAYER)
    # Positives indistinguishable from negatives: every latent has AUROC 0.5 and gap 0.
    negative = batch.label == 0
    example = batch.example[negative]
    twin = TokenBatch(
        acts=np.concatenate([batch.acts[negative]] * 2),
        example=np.concatenate([example, example + example.max() + 1]),
        label=np.repeat(np.array([0, 1], np.int8), negative.sum()),
    )
    for kind in ("sae", "sae_a"):
        with pytest.raises(Unmatched):
            method_with(kind, sae).fit(twin, concept="twin", seed=0)
    # A JumpReLU SAE (loaded from GemmaScope's layout) whose thresholds no positive reaches.
    pre = batch.acts[batch.label == 1] @ sae.W_enc + sae.b_enc
    silent = SparseAutoencoder(
        sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, pre.max(0) + 1.0, architecture="jumprelu"
    )
    silent.save_npz(tmp_path)
    for kind in ("sae", "sae_a"):
        method = build_method({"kind": kind, "source": "load", "path": str(tmp_path)})
        method.setup(batch)
        assert method.sae.architecture == "jumprelu"
        with pytest.raises(Unmatched, match="fires"):
            method.fit(batch, concept="silent", seed=0)


def test_bad_path_is_a_clear_error(trained, tmp_path):
    sae, _ = trained
    with pytest.raises(ValueError, match=r"method\.sae\.path is required"):
        build_method({"kind": "sae", "source": "load"})
    batch = TokenBatch(np.zeros((4, 576), np.float32), np.arange(4), np.array([0, 1, 0, 1]))
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path: "neither params.npz",
    }
    for path, reason in cases.items():
        for kind in ("sae", "sae_a"):
            method = build_method({"kind": kind, "source": "load", "path": str(path)})
            with pytest.raises(ValueError, match=rf"method\.{kind}\.path=.*{reason}"):
                method.setup(batch)
    np.savez(tmp_path / "params.npz", W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec)
    method = build_method({"kind": "sae", "source": "load", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"method\.sae\.path=.*missing tensor.*b_dec"):
        method.setup(batch)
    sae.save_npz(tmp_path)
    wrong_width = TokenBatch(np.zeros((4, 64), np.float32), np.arange(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="576-dimensional"):
        method.setup(wrong_width)
