"""Prompting baseline: the target model itself detects and steers; nothing is trained.

Steering (AxBench §2.4 `PromptSteering`): AxBench has gpt-4o-mini write a per-concept prompt that
tells the model to include the concept. Here the concept goes into a fixed template of our own, so
the baseline needs no external LM: the model is asked to answer the request while working the
concept into its answer. The factor is irrelevant, so each instruction is generated once.

Detection (AxBench §2.3 `PromptDetection`): the target model is asked whether the response text
contains the concept. AxBench samples up to 512 tokens and parses a 0-2 rating; we read the answer's
probability instead: score = log P(yes) − log P(no) of the first answer token (summed over the
casings and leading-space variants the tokenizer has). That is one forward pass per example, gives
a continuous score for the ROC curve, and never fails to parse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from axflow.methods import Example, Method, TokenBatch, register


def steering_prompt(concept: str, instruction: str, template: str) -> str:
    """The user turn that asks the model to follow `instruction` while weaving in `concept`
    (`template`: `method.prompt.template`, with {concept} and {instruction})."""
    return template.format(concept=concept.strip(), instruction=instruction.strip())


@dataclass
class PromptConfig:
    template: str  # must contain {concept} and {instruction}
    detect_template: str  # must contain {concept} and {text}
    batch_size: int  # detection prompts per forward pass

    def __post_init__(self) -> None:
        for key, value, needed in (
            ("template", self.template, ("{concept}", "{instruction}")),
            ("detect_template", self.detect_template, ("{concept}", "{text}")),
        ):
            missing = [k for k in needed if k not in value]
            if missing:
                raise ValueError(
                    f"method prompt: {key} lacks the placeholder(s) {missing}; "
                    f"write {' and '.join(needed)} into method.<name>.{key}"
                )
        if self.batch_size < 1:
            raise ValueError(f"method prompt: batch_size={self.batch_size} must be ≥ 1")


@register("prompt")
class Prompt(Method):
    Config = PromptConfig
    detect_level = "sequence"
    steering = "prompt"
    factor_free = True
    reads_activations = False
    trains_on_negatives = False

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        return {}

    def sequence_scores(
        self, params: dict[str, np.ndarray], examples: list[Example], *, concept: str
    ) -> np.ndarray:
        import torch

        from axflow.lm.prompts import format_prompt
        from axflow.lm.shared_prefix import common_prefix_length, run_continuations, run_prefix

        if not examples:
            return np.zeros(0, np.float32)
        lm = self.runtime.lm
        tok = lm.tokenizer
        yes, no = _answer_ids(tok, "yes"), _answer_ids(tok, "no")
        texts = [
            format_prompt(
                tok, self.cfg.detect_template.format(concept=concept, text=ex.response), lm.chat
            )
            for ex in examples
        ]
        ids = [tok(t, add_special_tokens=not lm.chat)["input_ids"] for t in texts]
        # Every prompt of a concept starts the same (template, concept): that part runs once.
        shared = common_prefix_length(ids)
        prefix = run_prefix(lm.model, ids[0][:shared])
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        scores = np.zeros(len(texts), np.float32)
        for start in range(0, len(ids), self.cfg.batch_size):
            rest = [seq[shared:] for seq in ids[start : start + self.cfg.batch_size]]
            logits, _, _ = run_continuations(lm.model, prefix, shared, rest, pad, logits_to_keep=1)
            logp = torch.log_softmax(logits[:, -1].float(), -1).cpu()
            score = torch.logsumexp(logp[:, yes], -1) - torch.logsumexp(logp[:, no], -1)
            scores[start : start + len(rest)] = score.numpy()
        return scores

    def prompt_for(self, concept: str, instruction: str) -> str:
        """`steering_prompt` with this method's configured template."""
        return steering_prompt(concept, instruction, self.cfg.template)


def _answer_ids(tok, word: str) -> list[int]:
    """Single-token ids of `word` in its casings, with and without a leading space."""
    ids = set()
    for variant in (word, word.capitalize(), word.upper()):
        for text in (variant, " " + variant):
            enc = tok(text, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(enc[0])
    if not ids:
        raise ValueError(f"method prompt: the tokenizer has no single token for {word!r}")
    return sorted(ids)
