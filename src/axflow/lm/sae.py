"""Sparse autoencoders on residual activations: encode/decode, load, save, and TopK training.

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

Training (`train_topk`) follows Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"):
z = TopK(ReLU)((h − b_dec)·W_enc + b_enc), ĥ = z·W_dec + b_dec, MSE loss, Adam, decoder rows kept
at unit norm (gradient parallel to each row removed before the step, rows renormalised after),
W_enc initialised to W_decᵀ, b_dec to the data mean (Gao et al.: geometric median), and the
AuxK loss: dead latents (no activation for a whole epoch of tokens) reconstruct the residual error
with their `aux_k` largest pre-activations, weighted `aux_coeff` (1/32 in the paper). Inputs are
scaled to unit mean per-dimension variance for training and the scale is folded back, so the
returned SAE works on raw activations with unit-norm decoder rows; b_dec is folded into b_enc,
so every returned SAE encodes with pre = h·W_enc + b_enc (apply_b_dec_to_input false). Only the
k selected latents take part in the backward pass and the decoder sum, which makes a step about
as cheap as the dense encoder matmul. Deterministic for a seed on a given machine and thread count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


# --- training --------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """What training did: per-epoch mean training FVU, final dead-latent fraction, seconds."""

    epoch_fvu: list[float] = field(default_factory=list)
    dead_fraction: float = 0.0
    seconds: float = 0.0
    tokens: int = 0


class _SelectedPre(torch.autograd.Function):
    """Pre-activations of the selected latents, pre_all[t, idx[t, j]], with sparse gradients.

    The forward reads the dense pre-activations already computed for the TopK selection; the
    backward touches only the selected (token, latent) pairs, through embedding_bag sums, instead
    of the dense [tokens, width] matmuls autograd would run.
    """

    @staticmethod
    def forward(ctx, centred, w_enc, b_enc, idx, pre_all):
        ctx.save_for_backward(centred, w_enc, idx)
        return pre_all.gather(-1, idx)

    @staticmethod
    def backward(ctx, grad):
        centred, w_enc, idx = ctx.saved_tensors
        grad_x = F.embedding_bag(idx, w_enc, per_sample_weights=grad, mode="sum")
        flat, weights = idx.reshape(-1), grad.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=w_enc.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        token = torch.div(order, idx.shape[1], rounding_mode="floor")
        grad_w = F.embedding_bag(
            token, centred, offsets, per_sample_weights=weights[order], mode="sum"
        )
        grad_b = torch.zeros_like(w_enc[:, 0]).index_add_(0, flat, weights)
        return grad_x, grad_w, grad_b, None, None


def train_topk(
    acts: np.ndarray,
    *,
    width: int,
    k: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    aux_k: int = 256,
    aux_coeff: float = 1 / 32,
    device: str = "cpu",
) -> tuple[SparseAutoencoder, TrainLog]:
    """Train a TopK SAE on `acts` [n_tokens, d] (see the module docstring for the recipe).

    The learning rate decays linearly to 0 over the last half of the steps.
    """
    start = time.perf_counter()
    x_all = torch.as_tensor(np.asarray(acts, dtype=np.float32)).to(device)
    n_tokens, d = x_all.shape
    if n_tokens < 2:
        raise ValueError(f"SAE training needs activations of at least 2 tokens, got {n_tokens}")
    if not 1 <= k <= width:
        raise ValueError(f"SAE training needs 1 <= k ({k}) <= width ({width})")
    gen = torch.Generator().manual_seed(seed)

    mean = x_all.mean(0)
    scale = float(((x_all - mean) ** 2).sum(1).mean().div(d).sqrt().clamp_min(1e-12))
    x_all = x_all / scale

    w_dec = torch.randn(width, d, generator=gen)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True)).to(device)
    W_dec = torch.nn.Parameter(w_dec)
    W_enc = torch.nn.Parameter(w_dec.clone())  # stored [n, d]: rows gathered per token below
    b_enc = torch.nn.Parameter(torch.zeros(width, device=device))
    b_dec = torch.nn.Parameter((mean / scale).clone())
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr, eps=6.25e-10)
    steps_per_epoch = math.ceil(n_tokens / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, 2.0 * (1 - step / total)))
    since_fired = torch.zeros(width, dtype=torch.long, device=device)
    log = TrainLog(tokens=n_tokens)
    total_var = float(((x_all - x_all.mean(0)) ** 2).sum())

    for _ in range(epochs):
        order = torch.randperm(n_tokens, generator=gen).to(device)
        err_sum = 0.0
        for first in range(0, n_tokens, batch_size):
            x = x_all[order[first : first + batch_size]]
            centred = x - b_dec
            with torch.no_grad():
                pre_all = centred @ W_enc.T + b_enc
                top = pre_all.topk(k, dim=-1).indices
            pre = _SelectedPre.apply(centred, W_enc, b_enc, top, pre_all)
            z = pre.clamp_min(0)
            recon = F.embedding_bag(top, W_dec, per_sample_weights=z, mode="sum") + b_dec
            err = recon - x
            loss = err.pow(2).sum(-1).mean()
            with torch.no_grad():
                fired = torch.zeros(width, dtype=torch.bool, device=device)
                fired[top[z > 0]] = True
                since_fired += len(x)
                since_fired[fired] = 0
                dead = since_fired >= n_tokens
                n_dead = int(dead.sum())
            if aux_k and aux_coeff and n_dead:
                kk = min(aux_k, n_dead)
                with torch.no_grad():
                    aux_top = pre_all.masked_fill(~dead, -torch.inf).topk(kk, dim=-1).indices
                aux_z = _SelectedPre.apply(centred, W_enc, b_enc, aux_top, pre_all).clamp_min(0)
                aux_recon = F.embedding_bag(aux_top, W_dec, per_sample_weights=aux_z, mode="sum")
                aux = (aux_recon + err.detach()).pow(2).sum(-1).mean()
                loss = loss + aux_coeff * min(n_dead / aux_k, 1.0) * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            opt.step()
            sched.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            err_sum += float(err.detach().pow(2).sum())
        log.epoch_fvu.append(err_sum / total_var)

    with torch.no_grad():
        # Back to raw activations: pre_raw = scale · pre, z_raw = scale · z (TopK and ReLU commute
        # with a positive scale), and b_dec folded into b_enc so pre = h·W_enc + b_enc.
        w_enc = W_enc.detach().T.contiguous().cpu().numpy()
        b_dec_raw = (b_dec.detach() * scale).cpu().numpy()
        b_enc_raw = (b_enc.detach() * scale).cpu().numpy() - b_dec_raw @ w_enc
        sae = SparseAutoencoder(
            w_enc,
            b_enc_raw,
            W_dec.detach().cpu().numpy(),
            b_dec_raw,
            architecture="topk",
            k=k,
        )
    log.dead_fraction = float((since_fired >= n_tokens).float().mean())
    log.seconds = time.perf_counter() - start
    return sae, log
