"""Continuations run after one cached prefix give the logits of each whole sequence run alone."""

from __future__ import annotations

import pytest

from axflow.lm.shared_prefix import common_prefix_length, run_continuations, run_prefix


def test_common_prefix_leaves_a_token_for_every_sequence():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 2


@pytest.mark.parametrize("shared", [0, 2])
def test_continuations_after_a_prefix_match_whole_sequences(smollm_dir, shared):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32).eval()
    texts = [
        "The ocean waves rolled onto the shore at dawn.",
        "The ocean is blue.",
        "The ocean floor",
    ]
    seqs = [tok(t)["input_ids"] for t in texts]
    assert common_prefix_length(seqs) >= shared
    prefix = run_prefix(model, seqs[0][:shared])
    assert (prefix is None) == (shared == 0)
    rest = [s[shared:] for s in seqs]
    logits, ids, real = run_continuations(model, prefix, shared, rest, pad_id=0)
    assert real.sum(-1).tolist() == [len(r) for r in rest]  # left-padded
    assert ids[real].tolist() == [t for r in rest for t in r]
    for row, seq in enumerate(seqs):
        with torch.inference_mode():
            alone = model(input_ids=torch.tensor([seq])).logits[0, shared:]
        torch.testing.assert_close(logits[row, real[row]], alone, rtol=1e-4, atol=1e-4)
