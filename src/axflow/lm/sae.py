"""Sparse autoencoders on residual activations: encode/decode, load and save.

AxBench §2.2 uses GemmaScope's JumpReLU SAEs, downloaded from Hugging Face through the Neuronpedia
API. Here an SAE is either loaded from a local directory, offline, or trained on the extracted
activations, so an experiment has an SAE row without any download.

Formats read (key names and shapes as their authors write them):

- GemmaScope `params.npz`: `W_enc` [d, n], `b_enc` [n], `W_dec` [n, d], `b_dec` [d],
  `threshold` [n]; JumpReLU, encode = pre · 1[pre > θ] with pre = h·W_enc + b_enc.
- SAELens `cfg.json` + `sae_weights.safetensors` (same tensor names). From cfg.json:
  `architecture` ("jumprelu", "topk", "standard" = ReLU), `k` (v6) or
  `activation_fn_kwargs.k` (older releases, with `activation_fn_str: "topk"`),
  `apply_b_dec_to_input` (SAELens subtracts b_dec before encoding when true; its default) and
  `normalize_activations` (only "none" is supported: the other settings rescale each token by its
  own norm, which a per-latent linear score cannot reproduce).

`save` writes the SAELens layout (v6 field names) and `save_npz` the GemmaScope one; a TopK SAE
saved as npz also stores `k` (an extra key GemmaScope readers ignore) so it reloads as TopK.

Training a TopK SAE is the SAE method's recipe: `axflow.methods._sae_training.train_topk`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCHITECTURES = ("jumprelu", "topk", "standard")
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMASCOPE_PARAMS = "params.npz"
_BLOCK = 1 << 23  # floats per [tokens, width] block while encoding (32 MiB)


@dataclass(eq=False)
class SparseAutoencoder:
    """An SAE on d-dimensional activations with n latents (numpy float32 weights).

    `threshold` is JumpReLU's θ (zeros for "standard" ReLU and for "topk", which keeps the `k`
    largest ReLU'd pre-activations of each token instead).
    """

    W_enc: np.ndarray  # [d, n]
    b_enc: np.ndarray  # [n]
    W_dec: np.ndarray  # [n, d]
    b_dec: np.ndarray  # [d]
    threshold: np.ndarray | None = None  # [n]
    architecture: str = "jumprelu"
    k: int | None = None
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        d, n = self.W_enc.shape if self.W_enc.ndim == 2 else (-1, -1)
        if self.threshold is None:
            self.threshold = np.zeros(n, np.float32)
        self.threshold = np.ascontiguousarray(self.threshold, dtype=np.float32)
        shapes = {
            "W_enc": (self.W_enc.shape, (d, n)),
            "b_enc": (self.b_enc.shape, (n,)),
            "W_dec": (self.W_dec.shape, (n, d)),
            "b_dec": (self.b_dec.shape, (d,)),
            "threshold": (self.threshold.shape, (n,)),
        }
        bad = [f"{k} {got} (expected {want})" for k, (got, want) in shapes.items() if got != want]
        if d < 1 or bad:
            raise ValueError(
                f"inconsistent SAE shapes: {', '.join(bad) or 'W_enc must be [d, n]'}; "
                "expected W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d], threshold [n]"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unsupported SAE architecture {self.architecture!r}; supported: {ARCHITECTURES}"
            )
        if self.architecture == "topk":
            if self.k is None or not 1 <= int(self.k) <= n:
                raise ValueError(f"a topk SAE needs 1 <= k <= width ({n}), got k={self.k}")
            self.k = int(self.k)

    @property
    def d(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    # --- encode / decode ------------------------------------------------------------------

    def _pre(self, h: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            h = h - torch.from_numpy(self.b_dec)
        return h @ torch.from_numpy(self.W_enc) + torch.from_numpy(self.b_enc)

    def _latent(self, pre: torch.Tensor) -> torch.Tensor:
        """Each latent on its own: ReLU, then JumpReLU's gate (θ = 0 for topk and standard)."""
        return pre.clamp_min(0) * (pre > torch.from_numpy(self.threshold))

    @property
    def _chunk(self) -> int:
        return max(16, _BLOCK // self.width)  # tokens per encode step

    def _chunks(self, h: np.ndarray):
        h = np.asarray(h, dtype=np.float32).reshape(-1, self.d)
        for start in range(0, len(h), self._chunk):
            yield torch.from_numpy(np.ascontiguousarray(h[start : start + self._chunk]))

    @torch.no_grad()
    def encode(self, h: np.ndarray) -> np.ndarray:
        """Latent activations [n_tokens, n] of activations h [n_tokens, d]."""
        out = []
        for x in self._chunks(h):
            pre = self._pre(x)
            if self.architecture == "topk":
                top = pre.topk(self.k, dim=-1)
                z = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.clamp_min(0))
            else:
                z = self._latent(pre)
            out.append(z.numpy())
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)

    @torch.no_grad()
    def decode(self, z: np.ndarray) -> np.ndarray:
        """Reconstruction z·W_dec + b_dec [n_tokens, d] of latents z [n_tokens, n]."""
        z = torch.from_numpy(np.asarray(z, dtype=np.float32).reshape(-1, self.width))
        return (z @ torch.from_numpy(self.W_dec) + torch.from_numpy(self.b_dec)).numpy()

    def fvu(self, h: np.ndarray) -> float:
        """Fraction of variance unexplained: Σ|h − decode(encode(h))|² / Σ|h − mean(h)|²."""
        h = np.asarray(h, dtype=np.float32)
        err = sum(
            float(((self.decode(self.encode(x.numpy())) - x.numpy()) ** 2).sum())
            for x in self._chunks(h)
        )
        return err / float(((h - h.mean(axis=0)) ** 2).sum())

    @torch.no_grad()
    def pooled_latents(self, h: np.ndarray, example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max, mean) of every latent's own activation (`latent_params` score) per example.

        Returns two [n_examples, n] arrays, examples in ascending id order. This is the score a
        single latent gives without the full SAE, i.e. without TopK's competition between latents.
        """
        h = np.asarray(h, dtype=np.float32).reshape(-1, self.d)
        ids, inverse = np.unique(np.asarray(example), return_inverse=True)
        inverse = torch.as_tensor(inverse.reshape(-1))
        maxima = torch.zeros(len(ids), self.width)
        sums = torch.zeros(len(ids), self.width)
        for i, x in enumerate(self._chunks(h)):
            rows = inverse[i * self._chunk : i * self._chunk + len(x)]
            z = self._latent(self._pre(x))
            index = rows[:, None].expand_as(z)
            maxima.scatter_reduce_(0, index, z, reduce="amax", include_self=True)
            sums.index_add_(0, rows, z)
        counts = torch.bincount(inverse, minlength=len(ids)).clamp_min(1)[:, None]
        return maxima.numpy(), (sums / counts).numpy()

    def latent_params(self, latent: int) -> dict[str, np.ndarray]:
        """What scores and steers with one latent, without the rest of the SAE.

        score(h) = ReLU(pre) · 1[pre > threshold] with pre = h·w_enc + b_enc (b_dec folded in
        when the SAE subtracts it from its input); w_dec is the decoder row.
        """
        w_enc = self.W_enc[:, latent].copy()
        b_enc = np.float32(self.b_enc[latent])
        if self.apply_b_dec_to_input:
            b_enc = np.float32(b_enc - self.b_dec @ w_enc)
        return {
            "latent": np.asarray(latent, dtype=np.int64),
            "w_enc": w_enc,
            "b_enc": np.asarray(b_enc, dtype=np.float32),
            "threshold": np.asarray(self.threshold[latent], dtype=np.float32),
            "w_dec": self.W_dec[latent].copy(),
        }

    # --- files --------------------------------------------------------------------------

    def _tensors(self) -> dict[str, np.ndarray]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.architecture == "jumprelu":
            out["threshold"] = self.threshold
        return out

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write SAELens' layout (cfg.json + sae_weights.safetensors) into `directory`."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(dict(self._tensors()), str(directory / SAELENS_WEIGHTS))
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d,
            "d_sae": self.width,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": metadata or {},
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
        (directory / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n")
        return directory

    def save_npz(self, directory: str | Path) -> Path:
        """Write GemmaScope's layout (params.npz) into `directory` (b_dec folded into b_enc)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        b_enc = self.b_enc
        if self.apply_b_dec_to_input:
            b_enc = (b_enc - self.b_dec @ self.W_enc).astype(np.float32)
        arrays = dict(self._tensors(), b_enc=b_enc, threshold=self.threshold)
        if self.architecture == "topk":
            arrays["k"] = np.asarray(self.k, dtype=np.int64)
        np.savez(directory / GEMMASCOPE_PARAMS, **arrays)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> SparseAutoencoder:
        """Read a GemmaScope `params.npz` (or a directory holding one) or a SAELens directory."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_file():
            if path.suffix != ".npz":
                raise ValueError(f"{path} is a file but not a GemmaScope .npz; give its directory")
            return _load_npz(path)
        if (path / SAELENS_CFG).exists() and (path / SAELENS_WEIGHTS).exists():
            return _load_saelens(path)
        if (path / GEMMASCOPE_PARAMS).exists():
            return _load_npz(path / GEMMASCOPE_PARAMS)
        raise FileNotFoundError(
            f"{path} holds neither {GEMMASCOPE_PARAMS} (GemmaScope) nor {SAELENS_CFG} + "
            f"{SAELENS_WEIGHTS} (SAELens)"
        )


def _require(arrays: dict[str, Any], keys: tuple[str, ...], where: Path) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing}; found {sorted(arrays)}")


def _load_npz(path: Path) -> SparseAutoencoder:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    _require(arrays, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), path)
    k = int(arrays["k"]) if "k" in arrays else None
    try:
        return SparseAutoencoder(
            arrays["W_enc"],
            arrays["b_enc"],
            arrays["W_dec"],
            arrays["b_dec"],
            arrays["threshold"],
            architecture="topk" if k is not None else "jumprelu",
            k=k,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _load_saelens(directory: Path) -> SparseAutoencoder:
    from safetensors.torch import load_file

    cfg_path = directory / SAELENS_CFG
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
    architecture = cfg.get("architecture", "standard")
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    if architecture == "standard" and cfg.get("activation_fn_str") == "topk":
        architecture = "topk"  # SAELens < 6 wrote TopK SAEs as standard + activation_fn_str
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{cfg_path}: architecture {architecture!r} is not supported; "
            f"supported: {list(ARCHITECTURES)}"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise ValueError(
            f"{cfg_path}: normalize_activations={norm!r} is not supported (only 'none'); fold "
            "the scaling into the weights first"
        )
    weights = directory / SAELENS_WEIGHTS
    arrays = {k: v.float().numpy() for k, v in load_file(str(weights)).items()}
    if "log_threshold" in arrays and "threshold" not in arrays:
        arrays["threshold"] = np.exp(arrays.pop("log_threshold"))
    _require(arrays, ("W_enc", "b_enc", "W_dec", "b_dec"), weights)
    if architecture == "jumprelu":
        _require(arrays, ("threshold",), weights)
    k = cfg.get("k", fn_kwargs.get("k"))
    try:
        return SparseAutoencoder(
            arrays["W_enc"],
            arrays["b_enc"],
            arrays["W_dec"],
            arrays["b_dec"],
            arrays.get("threshold") if architecture == "jumprelu" else None,
            architecture=architecture,
            k=k if architecture == "topk" else None,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        )
    except ValueError as err:
        raise ValueError(f"{directory}: {err}") from None
