"""LoReFT, LoRA and SFT on the real SmolLM2 with Concept10 positives (AxBench §2.4).

Each method trains once per module on a few positives of one concept (short sequences, a few
steps, one thread); the tests then check that training lowers the loss, that `steered` changes
the model while active and restores it bit-exactly, and that the steered model assigns its
concept's held-out positives a higher likelihood (relative to held-out negatives; LoRA and SFT
also outright), scored the way generation runs the model: prompt prefill, then the response
through the KV cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from axflow.lm.finetune import encode_examples
from axflow.lm.generate import GenerationRequest, generate
from axflow.lm.prompts import format_prompt
from axflow.methods import Example, Runtime, TokenBatch, build_method, method_class
from axflow.methods._finetune import resolve_layers
from axflow.methods.loreft import LoreftIntervention, prompt_positions

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config/method"
KINDS = ["loreft", "lora", "sft"]
CONCEPT = 1  # "technical specifications related to audio products and their performance"
MAX_LENGTH = 64
# Few steps on few positives; learning rates raised above AxBench's so that 3 steps show an
# effect (the shipped YAMLs keep AxBench's values).
SETTINGS = {
    "loreft": {"batch_size": 6, "grad_accum": 1, "epochs": 4, "lr": 4e-3},
    "lora": {"batch_size": 6, "grad_accum": 1, "epochs": 3, "lr": 5e-3},
    "sft": {"batch_size": 4, "grad_accum": 1, "epochs": 2, "lr": 1e-4},
}
N_TRAIN = {"loreft": 6, "lora": 6, "sft": 4}
PROMPTS = ["Tell me about cats.", "How do I boil an egg quickly without it cracking in the pot?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(smollm):
    return smollm


@pytest.fixture(scope="module")
def rows(concept10) -> dict[str, pl.DataFrame]:
    return {
        split: pl.read_parquet(concept10 / f"{split}.parquet").with_row_index("row")
        for split in ("train_data", "latent_eval_data")
    }


def examples(df: pl.DataFrame, label: int) -> list[Example]:
    return [Example(r["row"], r["input"], r["output"], label) for r in df.iter_rows(named=True)]


def train_batch(rows, concept_id: int, n: int) -> TokenBatch:
    """`n` positives of the concept plus as many genre negatives (which fit must ignore)."""
    train = rows["train_data"]
    pos = examples(train.filter(pl.col("concept_id") == concept_id).head(n), 1)
    neg = examples(train.filter(pl.col("concept_id") == -1).head(n), 0)
    return TokenBatch(
        acts=np.zeros((0, 576), np.float32),
        example=np.zeros(0, np.int64),
        label=np.zeros(0, np.int8),
        examples=sorted(pos + neg, key=lambda e: e.example_id),
    )


def held_out(rows, concept_id: int, category: str, n: int = 8) -> list[Example]:
    ev = rows["latent_eval_data"]
    picked = ev.filter((pl.col("concept_id") == concept_id) & (pl.col("category") == category))
    return examples(picked.head(n), int(category == "positive"))


@torch.no_grad()
def response_nll(lm, exs: list[Example]) -> float:
    """Mean per-token NLL of the responses, run as generation runs: prompt prefill, then cache."""
    losses = []
    for ids, start, _ in encode_examples(lm, exs, max_length=MAX_LENGTH):
        if start >= len(ids):
            continue  # a long instruction left no response token within MAX_LENGTH
        ids = torch.tensor([ids])
        first = lm.model(input_ids=ids[:, :start], attention_mask=torch.ones_like(ids[:, :start]))
        rest = lm.model(
            input_ids=ids[:, start:],
            attention_mask=torch.ones_like(ids),
            past_key_values=first.past_key_values,
        )
        logits = torch.cat([first.logits[:, -1:], rest.logits[:, :-1]], dim=1)[0]
        losses.append(float(torch.nn.functional.cross_entropy(logits, ids[0, start:])))
    assert len(losses) >= len(exs) // 2, "too few held-out examples have a response to score"
    return float(np.mean(losses))


@torch.no_grad()
def prefill_logits(lm, prompts: list[str]) -> torch.Tensor:
    """Last-position logits of a left-padded batch, called exactly as `generate` prefills."""
    enc = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), lm.tokenizer.pad_token_id)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for r, seq in enumerate(enc):
        ids[r, width - len(seq) :] = torch.tensor(seq)
        mask[r, width - len(seq) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
    return out.logits[:, -1]


@pytest.fixture(scope="module")
def fitted(lm, rows) -> Callable[[str], dict]:
    """Train each method once (lazily): method, params, and the base model's reference values."""
    cache: dict[str, dict] = {}
    prompts = [format_prompt(lm.tokenizer, p, True) for p in PROMPTS]

    def get(kind: str) -> dict:
        if kind not in cache:
            method = build_method(
                {"kind": kind, "max_length": MAX_LENGTH, **SETTINGS[kind]}, Runtime(lm=lm)
            )
            before = prefill_logits(lm, prompts)
            params = method.fit(train_batch(rows, CONCEPT, N_TRAIN[kind]), concept="c", seed=0)
            cache[kind] = {
                "method": method,
                "params": params,
                "prompts": prompts,
                "base_logits": before,
                "logits_after_fit": prefill_logits(lm, prompts),
            }
        return cache[kind]

    return get


# --- flags and configuration ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_flags_say_steering_only_and_factor_free(kind):
    cls = method_class(kind)
    flags = (cls.detects, cls.steering, cls.factor_free, cls.reads_activations)
    assert flags == (False, "model", True, False)


@pytest.mark.parametrize("kind", KINDS)
def test_yaml_holds_axbench_2b_settings_and_rejects_bad_values(kind):
    cfg = yaml.safe_load((CONFIG_DIR / f"{kind}.yaml").read_text())
    method = build_method(cfg)
    expected = {
        "loreft": (18, 2, 24, 9e-4),
        "lora": (18, 2, 24, 9e-4),
        "sft": (18, 4, 8, 4e-5),
    }[kind]
    c = method.cfg
    assert (c.batch_size, c.grad_accum, c.epochs, c.lr) == expected
    assert c.weight_decay == 0.0
    if kind == "sft":
        assert cfg["max_concepts"] == 2
    for key, bad in (("lr", 0.0), ("grad_accum", 0), ("max_grad_norm", -1.0)):
        with pytest.raises(ValueError, match=key):
            build_method({"kind": kind, key: bad})
    if kind != "sft":
        with pytest.raises(ValueError, match="layers"):
            build_method({"kind": kind, "layers": [3, 3]})


def test_default_layers_scale_axbench_2b_blocks_to_the_model():
    assert resolve_layers("x", None, 26) == [5, 10, 15, 20]  # Gemma-2-2B: AxBench's own
    assert resolve_layers("x", None, 30) == [6, 12, 17, 23]  # SmolLM2-135M
    with pytest.raises(ValueError, match="layers"):
        resolve_layers("x", [5, 40], 30)


def test_loreft_edit_is_pyreft_formula_with_orthonormal_rows():
    torch.manual_seed(0)
    m = LoreftIntervention(16, 4)
    R = m.rotate.weight.detach()
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)
    h = torch.randn(3, 16)
    W, b = m.source.weight.detach(), m.source.bias.detach()
    expected = h + (h @ W.T + b - h @ R.T) @ R
    assert torch.allclose(m(h).detach(), expected, atol=1e-5)
    # Outside the row space of R the edit changes nothing.
    orth = h - (h @ R.T) @ R
    assert torch.allclose((m(h) - h).detach() @ orth.T, torch.zeros(3, 3), atol=1e-4)


def test_loreft_positions_are_first_and_last_prompt_tokens_under_any_padding():
    right = torch.tensor([[1] * 12 + [0] * 3, [1] * 6 + [0] * 9])
    pos = prompt_positions(right, torch.tensor([12, 6]), 5, 5)
    assert pos[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]
    assert pos[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]  # capped at half each
    left = torch.tensor([[0, 0, 0] + [1] * 12])  # prefill of a left-padded generation batch
    edited = prompt_positions(left, None, 5, 5)[0].nonzero().flatten().tolist()
    assert edited == [3, 4, 5, 6, 7, 10, 11, 12, 13, 14]


# --- training and steering on SmolLM2 -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_falls_and_fit_leaves_the_model_unchanged(fitted, kind):
    run = fitted(kind)
    history = run["method"].loss_history
    assert len(history) == SETTINGS[kind]["epochs"]
    assert all(np.isfinite(history))
    assert history[-1] < history[0] - 0.05, history
    assert torch.equal(run["logits_after_fit"], run["base_logits"])


@pytest.mark.parametrize("kind", KINDS)
def test_steered_changes_the_model_and_restores_it_exactly(lm, fitted, kind):
    run = fitted(kind)
    method, params, prompts = run["method"], run["params"], run["prompts"]
    flags = [(n, p.requires_grad) for n, p in lm.model.named_parameters()]
    with method.steered(params):
        during = prefill_logits(lm, prompts)
        short = generate(lm, [GenerationRequest(prompts[0], seed=0)], layer=None, max_new_tokens=3)
    after = prefill_logits(lm, prompts)
    assert torch.equal(after, run["base_logits"])
    assert [(n, p.requires_grad) for n, p in lm.model.named_parameters()] == flags
    shift = (during.log_softmax(-1) - after.log_softmax(-1)).abs().max()
    assert shift > 1e-2, f"{kind}: steering moved log-probs by only {shift:.2e}"
    assert isinstance(short[0], str)
    if kind == "loreft":
        # Positions come from each row's attention mask: a left-padded row equals itself alone.
        with method.steered(params):
            alone = prefill_logits(lm, prompts[:1])
        assert torch.allclose(alone[0], during[0], atol=1e-3)


@pytest.fixture(scope="module")
def base_nll(lm, rows) -> dict[str, float]:
    return {c: response_nll(lm, held_out(rows, CONCEPT, c)) for c in ("positive", "negative")}


@pytest.mark.parametrize("kind", KINDS)
def test_steered_model_prefers_held_out_positives_of_its_concept(lm, rows, fitted, base_nll, kind):
    """Held-out positives gain likelihood relative to the genre's held-out negatives.

    LoRA and SFT also raise the positives' likelihood outright. LoReFT does not, here or at the
    default experiment size (16 positives, 24 epochs: +0.05 nats on positives, +0.32 on
    negatives): its edit of ten prompt positions moves generation towards the concept without
    fitting the held-out responses better than the base model.
    """
    run = fitted(kind)
    with run["method"].steered(run["params"]):
        steered = {c: response_nll(lm, held_out(rows, CONCEPT, c)) for c in base_nll}
    gain = {c: base_nll[c] - steered[c] for c in base_nll}  # > 0: more likely when steered
    assert gain["positive"] > gain["negative"], (kind, base_nll, steered)
    if kind != "loreft":
        assert gain["positive"] > 0, (kind, base_nll, steered)


def test_parameters_have_the_same_keys_and_shapes_for_every_concept(lm, rows, fitted):
    run = fitted("lora")
    other = build_method(
        {"kind": "lora", "max_length": 48, "batch_size": 2, "epochs": 1}, Runtime(lm=lm)
    ).fit(train_batch(rows, 4, 2), concept="other", seed=1)
    assert {k: v.shape for k, v in other.items()} == {k: v.shape for k, v in run["params"].items()}
    assert len(other) == 2 * 4  # A and B of o_proj in 4 blocks


def test_sft_stores_float16_changes_of_every_weight(lm, fitted):
    params = fitted("sft")["params"]
    names = {n for n, _ in lm.model.named_parameters()}
    assert set(params) == names  # tied embedding once, trained as in AxBench
    assert all(v.dtype == np.float16 for v in params.values())
    assert max(float(np.abs(v).max()) for v in params.values()) > 0
