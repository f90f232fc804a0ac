"""TopK sparse-autoencoder training for the SAE methods, when no SAE is loaded (`source: train`).

The recipe follows Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"):
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

The SAE itself (encode, decode, file formats) is `axflow.lm.sae`; this module is the method's
training recipe. Private module: registers nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from axflow.lm.sae import SparseAutoencoder


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
