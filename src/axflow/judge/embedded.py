"""Offline judge: MiniLM similarity for concept and instruction, perplexity for fluency.

This backend needs no API and no network. It approximates AxBench's gpt-4o-mini judge (§3.2) with
three measurements, each mapped to 0/1/2 by two thresholds (`x >= lo` gives 1, `x >= hi` gives 2):

- concept: cosine similarity of MiniLM (all-MiniLM-L6-v2) embeddings of the concept description
  and the whole generation;
- instruction: cosine similarity of the instruction and the generation;
- fluency: the lower of two scores. Perplexity of the generation under the (unsteered) target
  model, conditioned on the instruction in the model's chat template and counted over generation
  tokens only (`ppl <= lo` gives 2, `ppl <= hi` gives 1), catches word salad. Perplexity alone
  rewards loops ("dates dates dates ..." is very predictable), so the distinct-trigram ratio of
  the whitespace tokens (`ratio >= hi` gives 2, `>= lo` gives 1) catches repetition.

An empty generation scores 0 on all three. The raw measurements are cached in the CallCache
(similarities under "embedded-sim:<minilm>", perplexities under "perplexity:<model>@<fingerprint>"),
and thresholds are applied afterwards, so recalibrating costs nothing and a rerun loads no model.

The thresholds were calibrated on AxBench Concept10's train_data (gpt-4o-mini outputs, MiniLM,
SmolLM2-135M-Instruct as the target model). How well a config separates Concept10 ground truth
(concept positives from negatives, matched from shuffled instructions, real from broken text) is
measured by `bench/judge_validity.py` and shown in the Judge section of every report judged by
that config (records in `axflow/report/judge_validity/`).

These thresholds fit one embedder and, for perplexity, one target model; recalibrate the
perplexity thresholds when the target model changes (larger models give lower perplexities).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from axflow.judge import CallCache, JudgeItem, Rating, config_from_dict, register_judge
from axflow.lm.shared_prefix import run_continuations, run_prefix
from axflow.lm.similarity import SIM_MODEL, load_embedder, minilm_similarities
from axflow.progress import progress_bar

# Bump when a measurement's definition changes, so old cached values are not reused.
_MEASURE_VERSION = 1


@dataclass
class EmbeddedJudgeConfig:
    """Keys of config/judge/embedded.yaml (besides `name`)."""

    concept_thresholds: Sequence[float]
    instruction_thresholds: Sequence[float]
    perplexity_thresholds: Sequence[float]
    repetition_thresholds: Sequence[float]
    batch_size: int  # sequences per perplexity forward pass
    embed_batch_size: int
    max_length: int  # prompt + generation tokens per perplexity sequence
    dtype: str
    device: str
    unparseable: str  # accepted for every judge; this one always produces its scores

    def __post_init__(self) -> None:
        if self.unparseable not in ("fail", "zero"):
            raise ValueError(f"judge.unparseable={self.unparseable!r}; use 'fail' or 'zero'")
        for key in ("concept_thresholds", "instruction_thresholds", "repetition_thresholds"):
            _check_pair(key, getattr(self, key))
        _check_pair("perplexity_thresholds", self.perplexity_thresholds)
        if self.max_length < 8:
            raise ValueError(f"judge.max_length must be at least 8 tokens, got {self.max_length}")


def _check_pair(key: str, value: Sequence[float]) -> None:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(
            f"judge.{key} must be two numbers [low, high] with low <= high, got {list(value)}"
        )


def three_level(value: float, thresholds: Sequence[float]) -> float:
    """0, 1 or 2: how many of the two ascending thresholds `value` reaches."""
    lo, hi = thresholds
    return 2.0 if value >= hi else 1.0 if value >= lo else 0.0


def perplexity_level(ppl: float, thresholds: Sequence[float]) -> float:
    """2 at or below the low threshold, 1 at or below the high one, else 0."""
    lo, hi = thresholds
    return 2.0 if ppl <= lo else 1.0 if ppl <= hi else 0.0


def distinct_trigram_ratio(text: str) -> float:
    """Distinct trigrams of whitespace tokens / all trigrams (1.0 below 3 tokens).

    Whitespace tokens, not word characters, so a loop of punctuation ("* * * *") counts too.
    """
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(grams)) / len(grams) if grams else 1.0


# -- perplexity under the target model ------------------------------------------------------------


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Folder name plus a hash of config.json and the weight files' names and sizes."""
    path = Path(model_dir)
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{path.name}@{digest.hexdigest()[:12]}"


def _prompt_and_generation_ids(
    tok: Any, instruction: str, generation: str, max_length: int
) -> tuple[list[int], list[int]]:
    # Same prompt convention as axflow.lm.prompts: chat template if the model has one, else a
    # completion prompt "Instruction: ...\nResponse:" followed by " " + response.
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        gen = tok(generation, add_special_tokens=False)["input_ids"]
    else:
        prompt = tok(f"Instruction: {instruction}\nResponse:", add_special_tokens=True)["input_ids"]
        gen = tok(" " + generation, add_special_tokens=False)["input_ids"]
    gen = gen[: max(max_length - len(prompt), max_length // 2)]
    prompt = prompt[-(max_length - len(gen)) :]
    return prompt, gen


def sequence_perplexities(
    model: Any,
    tok: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    progress: str | None = None,
) -> list[float | None]:
    """exp(mean NLL) of each generation given its instruction; None for an empty generation.
    `progress` labels a bar of sequences scored on stderr (None: no bar).

    A judge scores many generations per prompt (every factor, often every concept), so each
    distinct prompt runs through the model once (`axflow.lm.shared_prefix`) and only the
    generations are computed per sequence, up to `batch_size` at a time.
    """
    import torch

    encoded = [_prompt_and_generation_ids(tok, i, g, max_length) for i, g in pairs]
    out: list[float | None] = [None] * len(pairs)
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for k, (prompt, gen) in enumerate(encoded):
        if gen:
            by_prompt.setdefault(tuple(prompt), []).append(k)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    bar = progress_bar(sum(map(len, by_prompt.values())), progress, "seq") if progress else None
    for prompt, members in by_prompt.items():
        # Never empty: both prompt conventions put tokens around the instruction.
        prefix = run_prefix(model, prompt)
        for start in range(0, len(members), batch_size):
            batch = members[start : start + batch_size]
            logits, ids, real = run_continuations(
                model, prefix, len(prompt), [encoded[k][1] for k in batch], pad_id
            )
            # A generation's first token is predicted by the prompt's last position, every later
            # one by the column before it (real when both columns are).
            lengths = real.sum(-1)
            first = ids[torch.arange(len(batch)), ids.shape[1] - lengths]
            first_nll = -torch.log_softmax(prefix.logits[0, -1].float(), -1)[first]
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            later_nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
            later = real[:, 1:] & real[:, :-1]
            mean_nll = (first_nll + (later_nll * later).sum(-1)) / lengths
            for k, value in zip(batch, mean_nll.tolist(), strict=True):
                out[k] = math.exp(value) if value < 700 else math.inf
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


# -- the judge ----------------------------------------------------------------------------------


@register_judge("embedded")
class EmbeddedJudge:
    """Offline judge; models load on the first call that misses the cache."""

    name = "embedded"

    def __init__(self, cfg: dict[str, Any], *, model_dir: str | None, cache: CallCache) -> None:
        self.cfg: EmbeddedJudgeConfig = config_from_dict(EmbeddedJudgeConfig, cfg, "embedded")
        if model_dir is None:
            raise ValueError(
                "the embedded judge scores fluency with the target model, but no model directory "
                "was given; pass model_dir (the prepared HF folder of the model that was steered) "
                "or use judge=openai"
            )
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded judge expects an HF model folder with config.json at {model_dir}; "
                "prepare the model first (axflow run stops at the model stage) or fix the path"
            )
        self.model_dir = str(model_dir)
        self.cache = cache
        self._embedder: Any = None
        self._lm: Any = None
        self._tok: Any = None
        self._sim_model = SIM_MODEL
        self._ppl_model = f"perplexity:{model_fingerprint(self.model_dir)}"

    # measurement params: what changes the raw numbers (thresholds do not)
    def _ppl_params(self) -> dict[str, Any]:
        return {
            "version": _MEASURE_VERSION,
            "max_length": self.cfg.max_length,
            "dtype": self.cfg.dtype,
        }

    def rate(self, items: list[JudgeItem]) -> list[Rating]:
        """One Rating per item; `perplexity` is the raw target-model perplexity."""
        if not items:
            return []
        sims = self._similarities(items)
        ppls = self._perplexities(items)
        ratings = []
        for item, (c_sim, i_sim), ppl in zip(items, sims, ppls, strict=True):
            if not item.generation.strip():
                ratings.append(Rating(0.0, 0.0, 0.0, perplexity=None, failures=0))
                continue
            fluency = min(
                perplexity_level(ppl, self.cfg.perplexity_thresholds) if ppl is not None else 0.0,
                three_level(
                    distinct_trigram_ratio(item.generation), self.cfg.repetition_thresholds
                ),
            )
            ratings.append(
                Rating(
                    concept_score=three_level(c_sim, self.cfg.concept_thresholds),
                    instruction_score=three_level(i_sim, self.cfg.instruction_thresholds),
                    fluency_score=fluency,
                    perplexity=ppl,
                    failures=0,
                )
            )
        return ratings

    def describe(self) -> dict[str, Any]:
        """The resolved configuration and model identities, for results provenance."""
        return {
            "name": self.name,
            **asdict(self.cfg),
            "embedder": self._sim_model,
            "target": self._ppl_model,
        }

    # -- similarities -------------------------------------------------------------------------

    def _similarities(self, items: list[JudgeItem]) -> list[tuple[float, float]]:
        return minilm_similarities(
            items, self.cache, self._load_embedder, batch_size=self.cfg.embed_batch_size
        )

    def _load_embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = load_embedder(self.cfg.device)
        return self._embedder

    # -- perplexity ---------------------------------------------------------------------------

    def _perplexities(self, items: list[JudgeItem]) -> list[float | None]:
        prompts = [{"instruction": it.instruction, "generation": it.generation} for it in items]
        cached = self.cache.get_many(self._ppl_model, self._ppl_params(), prompts)
        todo = [k for k, hit in enumerate(cached) if hit is None]
        if todo:
            model, tok = self._load_lm()
            values = sequence_perplexities(
                model,
                tok,
                [(items[k].instruction, items[k].generation) for k in todo],
                batch_size=self.cfg.batch_size,
                max_length=self.cfg.max_length,
                progress="judge perplexity",
            )
            fresh = [json.dumps({"perplexity": v}) for v in values]
            self.cache.put_many(
                self._ppl_model, self._ppl_params(), [prompts[k] for k in todo], fresh
            )
            for k, text in zip(todo, fresh, strict=True):
                cached[k] = text
        return [json.loads(text)["perplexity"] for text in cached]  # type: ignore[arg-type]

    def _load_lm(self) -> tuple[Any, Any]:
        if self._lm is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dtype = getattr(torch, self.cfg.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(
                    f"judge.dtype {self.cfg.dtype!r} is not a torch dtype; use float32 or bfloat16"
                )
            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
            self._lm = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
            self._lm.to(self.cfg.device).eval()
        return self._lm, self._tok
