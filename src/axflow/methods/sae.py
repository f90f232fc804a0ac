"""SAE and SAE-A: detect with one sparse-autoencoder latent, steer with its decoder row.

AxBench §2.2: the SAE rows use GemmaScope's JumpReLU SAEs. A token's score is the latent's
activation (pre · 1[pre > θ], pre = h·w_enc + b_enc), max-pooled per example; steering adds the
latent's decoder row. "SAE" uses the concept's own feature (the Neuronpedia feature the concept
was described from); "SAE-A" (`GemmaScopeSAEMaxAUC`) picks, over the whole SAE, the latent whose
max-pooled activation per training example has the best ROC AUC against the labels.

Here the SAE is loaded from a local directory (`source: load`; GemmaScope `params.npz` or a SAELens
folder, see `axflow.lm.sae`) or trained in `setup` on every training token of every concept
(`source: train`, a TopK SAE, Gao et al. 2024, see `_sae_training.py`), so the default experiment
has SAE rows without a download. Departures:

- `sae`, `latent: max_diff` (default): the latent is AxBench's `GemmaScopeSAEMaxDiff` choice,
  the largest difference between the positives' and negatives' mean activation (token mean per
  example, then class mean), because most concepts carry no feature index (only imported AxBench
  data has `sae_id`, and it indexes GemmaScope, not an SAE trained here). `latent: own`
  (protocol=axbench) is AxBench's "SAE" row: the concept's own feature `TokenBatch.sae_id`,
  used where the data carries one and the SAE is loaded (`source: load`, the SAE the ids
  index); elsewhere (no sae_id, or `source: train`) the train job logs it and falls back to
  `max_diff`.
- Ties in SAE-A's AUROC (several latents separating the training examples perfectly are common)
  go to the larger positive-minus-negative gap of max-pooled activations.
- A concept no latent matches raises `Unmatched` (nothing fires on its positives, or no latent is
  more active on positives than on negatives / has AUROC above 0.5) instead of steering with an
  arbitrary latent.
- For a TopK SAE a single latent's detection score is ReLU(pre): whether a latent is among a
  token's k largest needs the full SAE, which per-concept parameters do not carry. Selection uses
  the same per-latent score, so what is chosen is what is measured. On Concept10 (SmolLM2, 20k
  training tokens) exact TopK membership changes the mean held-out AUROC by < 0.02.
- Steering strength: AxBench's main-table SAE uses Neuronpedia's max activation of the feature;
  here, as for every "add" method, factor × the concept's max detection activation, i.e. AxBench's
  "SAE (max act)" variant (paper Table 6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.stats import rankdata

from axflow.lm.sae import SparseAutoencoder
from axflow.methods import Method, TokenBatch, Unmatched, register
from axflow.methods._sae_training import TrainLog, train_topk

log = logging.getLogger(__name__)


@dataclass
class SAETrainingConfig:
    """Keys of both SAE rows: where the SAE comes from, and how it is trained."""

    source: str  # train: TopK SAE trained in setup; load: read `path`
    path: str | None  # SAE directory (GemmaScope params.npz or SAELens) for source=load
    # TopK training (source=train); measured on the default experiment, see config/method/sae.yaml
    width: int
    k: int
    epochs: int
    batch_size: int  # tokens per step
    lr: float
    aux_k: int  # dead latents in the AuxK loss (0 disables it)
    aux_coeff: float
    seed: int
    device: str

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        where = f"method.{self.name}"
        if self.source not in ("train", "load"):
            raise ValueError(f"{where}.source={self.source!r} must be 'train' or 'load'")
        if self.source == "load" and not self.path:
            raise ValueError(
                f"{where}.path is required with source=load: a directory holding GemmaScope "
                "params.npz or SAELens cfg.json + sae_weights.safetensors"
            )
        for key in ("width", "k", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key}={getattr(self, key)} must be ≥ 1")
        if self.k > self.width:
            raise ValueError(f"{where}.k={self.k} must be ≤ width={self.width}")
        if self.lr <= 0:
            raise ValueError(f"{where}.lr={self.lr} must be > 0")
        if self.aux_k < 0 or self.aux_coeff < 0:
            raise ValueError(f"{where}.aux_k and aux_coeff must be ≥ 0")


@dataclass
class SAEConfig(SAETrainingConfig):
    latent: str  # max_diff | own (the concept's sae_id, AxBench's SAE row)

    name: ClassVar[str] = "sae"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in ("max_diff", "own"):
            raise ValueError(f"method.sae.latent={self.latent!r} must be 'max_diff' or 'own'")


@dataclass
class SAEAConfig(SAETrainingConfig):
    """SAE-A has no `latent` key: it always selects its latent by training AUROC."""

    name: ClassVar[str] = "sae_a"


@register("sae")
class SAE(Method):
    """One SAE latent per concept: `selection` says how it is chosen on the training data."""

    Config = SAEConfig
    detects = True
    detect_level = "token"
    steering = "add"
    selection: ClassVar[str] = "mean_diff"  # "mean_diff" (AxBench MaxDiff) | "auroc" (SAE-A)

    sae: SparseAutoencoder | None = None
    train_log: TrainLog | None = None

    def setup(self, data: TokenBatch) -> None:
        """Load the SAE, or train it on every training token (labels unused: unsupervised)."""
        cfg = self.cfg
        if cfg.source == "load":
            self.sae = self._load()
        else:
            self.sae, self.train_log = train_topk(
                data.acts,
                width=cfg.width,
                k=cfg.k,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=cfg.seed,
                aux_k=cfg.aux_k,
                aux_coeff=cfg.aux_coeff,
                device=cfg.device,
            )
        if data.acts.shape[1:] != (self.sae.d,):
            raise ValueError(
                f"method.{self.name}: the SAE works on {self.sae.d}-dimensional activations, "
                f"the training activations have {data.acts.shape[1]} (wrong model or layer?)"
            )

    def _load(self) -> SparseAutoencoder:
        path = Path(self.cfg.path)
        try:
            return SparseAutoencoder.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"method.{self.name}.path={str(path)!r}: {err}") from None

    def fit(self, data: TokenBatch, *, concept: str, seed: int) -> dict[str, np.ndarray]:
        if self.sae is None:
            if self.cfg.source != "load":
                raise RuntimeError(f"method {self.name!r}: call setup() to train the SAE first")
            self.sae = self._load()
        ids, labels = data.example_labels()
        positive = labels == 1
        if positive.all() or not positive.any():
            raise ValueError(
                f"{self.name} for concept {concept!r}: training tokens need both positive and "
                "negative examples"
            )
        own = self._own_latent(data, concept)
        if own is not None:
            return self.sae.latent_params(own)
        maxima, means = self.sae.pooled_latents(data.acts, data.example)
        fires = maxima[positive].max(axis=0) > 0
        if not fires.any():
            raise Unmatched(f"no SAE latent fires on any positive training example of {concept!r}")
        if self.selection == "auroc":
            latent, quality = _best_auroc(maxima, positive, fires)
            if quality <= 0.5:
                raise Unmatched(
                    f"no SAE latent separates {concept!r}'s training examples (best AUROC "
                    f"{quality:.3f})"
                )
        else:
            gap = means[positive].mean(axis=0) - means[~positive].mean(axis=0)
            gap[~fires] = -np.inf
            latent = int(np.argmax(gap))
            if gap[latent] <= 0:
                raise Unmatched(
                    f"no SAE latent is more active on {concept!r}'s positives than on its negatives"
                )
        return self.sae.latent_params(latent)

    def _own_latent(self, data: TokenBatch, concept: str) -> int | None:
        """The concept's own feature with `latent: own`, where usable; else None (logged)."""
        if self.cfg.latent != "own":
            return None
        if data.sae_id is None or self.cfg.source != "load":
            why = "its data carries no sae_id" if data.sae_id is None else "the SAE is trained here"
            log.warning("%s for %r: latent=own, but %s; using max_diff", self.name, concept, why)
            return None
        if not 0 <= data.sae_id < self.sae.width:
            raise Unmatched(
                f"sae_id {data.sae_id} of {concept!r} is not a latent of this SAE "
                f"(width {self.sae.width}): is method.{self.name}.path the SAE the data names?"
            )
        return int(data.sae_id)

    def token_scores(self, params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
        """The latent's own activation: ReLU(pre) · 1[pre > threshold], pre = h·w_enc + b_enc."""
        w = np.asarray(params["w_enc"], dtype=np.float32)
        pre = np.asarray(acts, dtype=np.float32) @ w + np.float32(params["b_enc"])
        return np.where(pre > np.float32(params["threshold"]), np.maximum(pre, 0), 0).astype(
            np.float32
        )

    def steering_vector(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """The latent's decoder row, unit-normalised (GemmaScope's rows already are)."""
        v = np.asarray(params["w_dec"], dtype=np.float32)
        return v / max(float(np.linalg.norm(v)), 1e-12)


@register("sae_a")
class SAEA(SAE):
    """SAE-A: the latent with the best training AUROC of max-pooled activations."""

    Config = SAEAConfig
    selection = "auroc"

    def _own_latent(self, data: TokenBatch, concept: str) -> int | None:
        return None  # never the concept's own feature: the best training AUROC


def _best_auroc(
    maxima: np.ndarray, positive: np.ndarray, eligible: np.ndarray
) -> tuple[int, float]:
    """(latent, AUROC) of the best eligible latent; ties go to the larger max-activation gap.

    AUROC per latent = Mann-Whitney U / (P·N) from average ranks, so ties count one half.
    """
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(maxima, axis=0)
    auroc = (ranks[positive].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    gap = maxima[positive].mean(axis=0) - maxima[~positive].mean(axis=0)
    auroc = np.where(eligible, auroc, -np.inf)
    order = np.lexsort((-gap, -auroc))  # last key is primary
    return int(order[0]), float(auroc[order[0]])
