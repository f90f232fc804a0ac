"""What the steering-only finetuning baselines (LoReFT, LoRA, SFT) share besides the loop.

AxBench §2.4 trains all three the same way: LM cross-entropy on the response tokens of the
concept's positives only, AdamW, a linear decay to 0 without warm-up, gradient accumulation, and
(LoReFT, SFT) gradient-norm clipping at 1.0. Only what is trained differs, so each method hands
its parameters and loss to the loop every LM-trained method uses (`_lm_training`); this module
holds their base class, the positives they train on and the blocks they edit.

Private module: registers nothing.
"""

from __future__ import annotations

from typing import Any

from axflow.lm.finetune import encode_examples
from axflow.methods import Method, TokenBatch

# AxBench's layers for LoReFT and LoRA on Gemma-2-2B ([5, 10, 15, 20] of its 26 blocks).
AXBENCH_2B_LAYERS = (5, 10, 15, 20)
AXBENCH_2B_DEPTH = 26


class FinetunedModel(Method):
    """A finetuning baseline: it does not detect, and it steers by swapping in the concept's
    finetuned model while that concept's rows generate, so the factor plays no part."""

    detects = False
    steering = "model"
    factor_free = True
    reads_activations = False
    trains_on_negatives = False  # positives only (encoded_positives)

    loss_history: list[float]  # mean LM loss of every optimiser step of the last `fit`


def check_layers(name: str, layers: Any) -> list[int] | None:
    """Validate a `layers` config value: null or a non-empty list of distinct block indices."""
    if layers is None:
        return None
    try:
        values = [int(x) for x in layers]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"method {name}: layers={layers!r} must be null or a list of block indices"
        ) from err
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(
            f"method {name}: layers={layers!r} must be distinct block indices ≥ 0 (or null)"
        )
    return sorted(values)


def resolve_layers(name: str, layers: list[int] | None, n_blocks: int) -> list[int]:
    """The configured blocks, or AxBench's 2B depths scaled to this model (null).

    Gemma-2-2B (26 blocks) gets exactly [5, 10, 15, 20]; SmolLM2-135M (30) gets [6, 12, 17, 23].
    """
    if layers is None:
        return sorted({round(k * n_blocks / AXBENCH_2B_DEPTH) for k in AXBENCH_2B_LAYERS})
    if max(layers) >= n_blocks:
        raise ValueError(
            f"method {name}: layers={layers} but the model has {n_blocks} blocks (0-{n_blocks - 1})"
        )
    return layers


def encoded_positives(
    lm: Any, data: TokenBatch, *, max_length: int, method: str, concept: str
) -> list[tuple[list[int], int, int]]:
    """The concept's positive examples, encoded: AxBench trains these baselines on positives only.

    An example whose prompt fills `max_length` is kept (it adds no loss term); the rank-1
    methods' `train_vector` drops such examples.
    """
    positives = [ex for ex in data.examples if ex.label == 1]
    if not positives:
        raise ValueError(
            f"method {method}, concept {concept!r}: no positive example among the "
            f"{len(data.examples)} training examples (TokenBatch.examples with label 1)"
        )
    return encode_examples(lm, positives, max_length=max_length)
