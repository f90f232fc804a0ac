"""protocol=axbench: one preset that switches off every documented departure from AxBench.

Config composition (no model), the switches it sets (probe without bias, probe positions from 1,
SAE own latent, judge unparseable=zero) on small real inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from axflow.config import ConfigError, compose
from axflow.judge import CallCache, JudgeItem, Rating, build_judge
from axflow.methods import Example, Runtime, TokenBatch, Unmatched, build_method
from chat_server import ScriptedChatServer

AXBENCH_PROBE = {
    "standardize": False,
    "bias": False,
    "unit_norm": True,
    "l2_coeff": 0.0,
    "weight_decay": 1e-3,
    "train_positions": "from_1",
}

# -- composition ---------------------------------------------------------------------------------


def test_axbench_protocol_sets_axbench_values_in_every_default_method():
    ours, theirs = compose(), compose(["protocol=axbench"])
    assert set(theirs["method"]) == set(ours["method"])  # same methods, nothing added
    for name in ("pca", "lat"):
        assert ours["method"][name]["orient_sign"] is True
        assert theirs["method"][name]["orient_sign"] is False
    for key, value in AXBENCH_PROBE.items():
        assert theirs["method"]["probe"][key] == value, key
        assert ours["method"]["probe"][key] != value, key
    assert theirs["method"]["diffmean"] == ours["method"]["diffmean"]
    assert theirs["method"]["bow"] == ours["method"]["bow"]
    assert (ours["judge"]["unparseable"], theirs["judge"]["unparseable"]) == ("fail", "zero")
    assert ours["report"]["winrate_baseline"] == "prompt"
    assert theirs["report"]["winrate_baseline"] == "sae"
    assert theirs["extraction"]["positions"] == "all"
    assert (ours["training"]["negatives"], theirs["training"]["negatives"]) == ("all", "genre")
    assert (ours["protocol"]["name"], theirs["protocol"]["name"]) == ("axflow", "axbench")


def test_protocol_creates_no_method_that_is_not_selected():
    cfg = compose(["protocol=axbench", "method=[diffmean,probe]"])
    assert set(cfg["method"]) == {"diffmean", "probe"}  # no half-made pca/lat/sae nodes
    cfg = compose(["protocol=axbench", "method=[sae,sae_a]", "judge=openai"])
    assert cfg["method"]["sae"]["latent"] == "own"
    assert "latent" not in cfg["method"]["sae_a"]  # per kind: sae_a is another kind
    assert cfg["judge"]["unparseable"] == "zero"


def test_protocol_applies_after_other_overrides():
    cfg = compose(["protocol=axbench", "method.probe.bias=true", "judge.unparseable=fail"])
    assert cfg["method"]["probe"]["bias"] is False
    assert cfg["judge"]["unparseable"] == "zero"
    cfg = compose(["protocol=axbench", "protocol.methods.probe.bias=true"])
    assert cfg["method"]["probe"]["bias"] is True
    with pytest.raises(ConfigError, match=r"protocol\.methods\.prbe"):
        compose(["protocol=axbench", "+protocol.methods.prbe.bias=true"])
    with pytest.raises(ConfigError, match=r"method\.probe"):
        compose(["protocol=axbench", "+protocol.methods.probe.no_such_key=1"])


def test_a_concept_trains_against_every_genres_negatives_or_its_own_genres():
    from axflow.protocol.training import concept_rows

    ids = np.array([0, 0, 1, -1, -1, -1, 0])
    cats = np.array(["positive"] * 3 + ["negative"] * 3 + ["hard negative"])
    genres = np.array(["text", "text", "code", "text", "code", "math", "text"])
    rows, positive = concept_rows(ids, cats, genres, 0, "text", "all")
    assert rows.tolist() == [0, 1, 3, 4, 5] and positive.tolist() == [1, 1, 0, 0, 0]
    rows, positive = concept_rows(ids, cats, genres, 0, "text", "genre")
    assert rows.tolist() == [0, 1, 3] and positive.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="training.negatives='some'"):
        concept_rows(ids, cats, genres, 0, "text", "some")


# -- probe without bias, from position 1 ---------------------------------------------------------


def _small_batch(smollm, layer: int) -> tuple[TokenBatch, list[Example]]:
    """Six positives about the sea, six negatives about arithmetic (after-prefix tokens)."""
    from axflow.lm.extract import extract_residuals

    sea = [
        ("Describe a beach.", "Waves roll onto the sand while gulls circle over the salty sea."),
        ("Write about sailing.", "The boat leaned into the ocean wind, spray over the bow."),
        ("Tell me about fish.", "Tuna cross the open sea, diving deep below the waves."),
        ("Describe a harbour.", "Fishing boats rock at anchor as the tide comes in from sea."),
        ("Write a line on storms.", "The ocean heaved, grey waves crashing on the rocky shore."),
        ("Describe a coral reef.", "Under the clear sea water, coral and bright fish glitter."),
    ]
    maths = [
        ("What is 7 times 8?", "Seven times eight is fifty-six, since 7 x 8 = 56."),
        ("Add 15 and 27.", "15 + 27 = 42, so the sum is forty-two."),
        ("Divide 81 by 9.", "81 divided by 9 equals 9 exactly."),
        ("What is 12 squared?", "12 squared is 144 because 12 x 12 = 144."),
        ("Subtract 19 from 50.", "50 - 19 = 31, which is thirty-one."),
        ("Is 17 prime?", "Yes, 17 is prime: no number from 2 to 4 divides it."),
    ]
    texts = sea + maths
    examples = [Example(k, i, r, int(k < len(sea))) for k, (i, r) in enumerate(texts)]
    acts, example = [], []
    for ex in extract_residuals(smollm, texts, layer=layer, max_length=64):
        acts.append(ex.acts)
        example.append(np.full(len(ex.positions), ex.index))
    example = np.concatenate(example)
    label = (example < len(sea)).astype(np.int8)
    return TokenBatch(np.concatenate(acts), example, label, examples), examples


def test_probe_without_bias_learns_none_and_separates_real_examples(smollm):
    from axflow.metrics.detection import max_pool, roc_auc

    layer = 10
    batch, _ = _small_batch(smollm, layer)
    cfg = {"kind": "probe", **AXBENCH_PROBE, "batch_size": 2, "epochs": 24}
    method = build_method(cfg, Runtime(layer=layer, lm=smollm))
    params = method.fit(batch, concept="the sea", seed=0)
    assert float(params["bias"]) == 0.0
    assert np.linalg.norm(params["direction"]) == pytest.approx(1.0, abs=1e-5)
    maxima, _ = max_pool(method.token_scores(params, batch.acts), batch.example)
    auroc = roc_auc(batch.example_labels()[1], maxima)  # both in ascending example id order
    assert auroc >= 0.9, auroc
    # With a bias the same probe learns one (AxBench's LinearProbe has none).
    biased = build_method({**cfg, "bias": True}, Runtime(layer=layer, lm=smollm))
    assert float(biased.fit(batch, concept="the sea", seed=0)["bias"]) != 0.0


def test_probe_from_1_adds_the_shared_prefix_positions_as_extraction_gives_them(smollm):
    from axflow.lm.extract import extract_residuals
    from axflow.lm.prompts import shared_prefix_length

    layer = 10
    batch, examples = _small_batch(smollm, layer)
    method = build_method(
        {"kind": "probe", "train_positions": "from_1"}, Runtime(layer=layer, lm=smollm)
    )
    extended = method._with_prefix_tokens(batch)
    prefix = shared_prefix_length(smollm.tokenizer, smollm.chat)
    n_ex = len(examples)
    assert len(extended.acts) == len(batch.acts) + n_ex * (prefix - 1)
    # Every example now holds exactly what a from_1 extraction of it gives (as a token set).
    last = examples[-1]
    (full,) = extract_residuals(
        smollm, [(last.instruction, last.response)], layer=layer, positions="from_1", max_length=64
    )
    mine = extended.acts[extended.example == last.example_id]
    assert len(mine) == len(full.positions)
    np.testing.assert_allclose(mine[: prefix - 1], full.acts[: prefix - 1], atol=1e-4)
    assert (extended.label[extended.example == last.example_id] == last.label).all()


def test_extract_from_1_keeps_position_1_onward(smollm):
    from axflow.lm.extract import extract_residuals
    from axflow.lm.prompts import shared_prefix_length, tokenize_example

    example = ("Name a colour.", "Blue, like the sky on a clear day.")
    seq, _ = tokenize_example(smollm.tokenizer, *example, smollm.chat, 64)
    (one,) = extract_residuals(smollm, [example], layer=5, positions="from_1", max_length=64)
    (after,) = extract_residuals(smollm, [example], layer=5, positions="all", max_length=64)
    np.testing.assert_array_equal(one.positions, np.arange(1, len(seq)))
    prefix = shared_prefix_length(smollm.tokenizer, smollm.chat)
    assert after.positions[0] == prefix > 1
    np.testing.assert_allclose(one.acts[prefix - 1 :], after.acts, atol=1e-5)
    with pytest.raises(ValueError, match="from_1"):
        next(extract_residuals(smollm, [example], layer=5, positions="from_0"))


# -- SAE: the concept's own latent -------------------------------------------------------------


def test_sae_own_latent_uses_the_concepts_sae_id_when_loaded(tmp_path):
    from axflow.lm.sae import SparseAutoencoder

    rng = np.random.default_rng(0)
    d, n = 8, 6
    sae = SparseAutoencoder(
        rng.normal(size=(d, n)), np.zeros(n), rng.normal(size=(n, d)), np.zeros(d)
    )
    sae.save_npz(tmp_path)
    acts = rng.normal(size=(40, d)).astype(np.float32)
    example = np.repeat(np.arange(8), 5)
    label = (example < 4).astype(np.int8)
    batch = TokenBatch(acts, example, label, sae_id=3)
    own = build_method({"kind": "sae", "source": "load", "path": str(tmp_path), "latent": "own"})
    own.setup(batch)
    params = own.fit(batch, concept="c", seed=0)
    np.testing.assert_allclose(params["w_enc"], sae.W_enc[:, 3])
    with pytest.raises(Unmatched, match="not a latent"):
        own.fit(TokenBatch(acts, example, label, sae_id=n), concept="c", seed=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['latent'\]"):  # SAE-A: by AUROC
        build_method({"kind": "sae_a", "latent": "own"})


# -- judge: unparseable replies ------------------------------------------------------------------


def _scripted(prompt: str, nth: int) -> tuple[int, str]:
    """BROKEN generations never get a parseable rating; the rest get concept 2, others 1."""
    if "BROKEN" in prompt:
        return 200, "I would rather not give a number."
    return 200, f"Reason.\nRating: [[{2 if 'Concept:' in prompt else 1}]]"


@pytest.fixture
def server() -> Iterator[ScriptedChatServer]:
    srv = ScriptedChatServer(_scripted)
    yield srv
    srv.close()


@pytest.mark.parametrize("config", ["openai", "vllm_server"])
def test_judge_unparseable_zero_scores_zero_where_fail_counts_a_failure(
    tmp_path: Path, server: ScriptedChatServer, config: str
):
    import yaml

    from axflow.config import CONFIG_DIR

    base = yaml.safe_load((CONFIG_DIR / "judge" / f"{config}.yaml").read_text())
    assert base["unparseable"] == "fail"
    cfg = {
        "name": "openai",
        "base_url": server.base_url,
        "model": "scripted",
        "api_key_env": "AXFLOW_TEST_NO_SUCH_KEY",
        "max_retries": 2,
        "transport_retries": 0,
        "timeout_s": 10,
    }
    items = [JudgeItem("sea", "Say hi.", "GOOD text"), JudgeItem("sea", "Say hi.", "BROKEN")]

    fail = build_judge(cfg, model_dir=None, cache=CallCache(tmp_path / "fail.sqlite"))
    good, broken = fail.rate(items)
    assert good == Rating(2.0, 1.0, 1.0, perplexity=None, failures=0)
    assert broken == Rating(None, None, None, perplexity=None, failures=3)
    assert broken.overall is None
    assert server.requests == 3 + 3 * 3  # BROKEN asked 1 + max_retries times per aspect

    before = server.requests
    zero = build_judge(
        {**cfg, "unparseable": "zero"}, model_dir=None, cache=CallCache(tmp_path / "zero.sqlite")
    )
    good, broken = zero.rate(items)
    assert good == Rating(2.0, 1.0, 1.0, perplexity=None, failures=0)
    assert broken == Rating(0.0, 0.0, 0.0, perplexity=None, failures=0)
    assert broken.overall == 0.0
    assert server.requests - before == 3 + 3  # AxBench: the first reply is final
    with pytest.raises(ValueError, match="unparseable"):
        build_judge({**cfg, "unparseable": "maybe"}, model_dir=None, cache=zero.cache)
