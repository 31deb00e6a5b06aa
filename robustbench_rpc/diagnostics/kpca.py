"""``projection_loss`` and ``eq11``: the paper's kernel-PCA diagnostics for softmax / symmetric layers.

Both read the layer's input through a forward pre-hook and recompute its queries, keys and values with
the layer's own weights (so they describe the model's attention; PAP layers are left to ``pap``).
Everything is computed in float64 (``exp`` of raw dot products overflows float32 on large heads).

``projection_loss`` -- Sec. 2.2.1 of Teo & Nguyen (NeurIPS 2024), as the paper's
``Reconstruction/softmax.py`` computes it: with A = softmax(q k^T / sqrt(d)), h = A v,

    ||phi(q_i)||^2 = exp(q_i . q_i) / exp(2 q_i . k_0 - log A_i0^2)       (their num / den)
    error_i       = ||phi(q_i)||^2 - ||h_i||^2
    loss          = log(mean_i error_i)

The dot products in num/den are unscaled while A uses the 1/sqrt(d) scale, exactly as in their code.
Their model standardizes q and k inside its attention; ours do not, so the formula is applied to the q
and k the layer actually attends with. Columns ``proj_loss`` (the log, per head, error averaged over
images and tokens as their ``error.mean()``) and ``proj_error`` (the mean error before the log; a
negative value gives a NaN loss).

``eq11`` -- Eq. (11) of the paper and its appendix figure: if self-attention is kernel PCA, the value
vectors are the Gram matrix's eigenvectors up to the kernel normalisation, K_phi a_d = lambda_d a_d with
K_phi[j, l] = k(k_j, k_l) / (g(k_j) g(k_l)), k(x, y) = exp(x . y / sqrt(d)), g(x) = sum_l k(x, k_l)
and a_d[j] = v_j(d) g(k_j). The ratio vector gamma_d = (K_phi a_d) / a_d (elementwise; it equals
(A_kk V)[:, d] / (v[:, d] g(k)) with A_kk the keys' own softmax) is constant (= lambda_d) when the
claim holds. Per axis d: ``eq11_absdiff_mean`` / ``eq11_absdiff_std`` (mean / std of |gamma_i - gamma_j|
over token pairs i < j), ``eq11_gamma_abs_mean`` (mean |gamma|, the eigenvalue scale it is compared
with) and ``gram_eig_max`` (the largest eigenvalue of K_phi). Not in the paper's released code; derived
from the paper's equations. The main rows carry the averages over axes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from ..attention.base import variant_of
from .base import Diagnostic, attention_blocks, register_diagnostic

KPCA_VARIANTS = ("softmax", "symmetric")


def qkv_of(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v), each (B, H, N, d), as the softmax / symmetric layer computes them from its input x."""
    if variant_of(attn) == "symmetric":
        k, v = attn.keys_values(x)
        return k, k, v
    B, N, C = x.shape
    H = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


@contextlib.contextmanager
def _on_kpca_layers(model: nn.Module, fn) -> Iterator[None]:
    handles = []
    try:
        for layer, attn in attention_blocks(model):
            if variant_of(attn) not in KPCA_VARIANTS:
                continue

            def hook(mod, args, kwargs=None, layer=layer):
                with torch.no_grad():
                    q, k, v = qkv_of(mod, args[0])
                    fn(layer, q.double(), k.double(), v.double(), float(mod.scale))

            handles.append(attn.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@register_diagnostic("projection_loss")
class ProjectionLoss(Diagnostic):
    columns = ("proj_loss", "proj_error")

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with _on_kpca_layers(model, self._record):
            yield

    def _record(self, layer: int, q, k, v, scale: float) -> None:
        qk = q @ k.transpose(-2, -1)
        log_attn = torch.log_softmax(qk * scale, dim=-1)
        h = log_attn.exp() @ v
        log_phi = (q * q).sum(-1) - 2 * qk[..., 0] + 2 * log_attn[..., 0]  # log(num / den), as their code
        error = log_phi.exp() - h.pow(2).sum(-1)  # (B, H, N)
        B, H, N = error.shape
        for head in range(H):
            self.acc.add_total((layer, head, 0), "proj_error", float(error[:, head].sum()), B * N)

    def finalize(self, means):
        for key, v in means.items():
            e = v.get("proj_error", math.nan)
            v["proj_loss"] = math.log(e) if e > 0 else math.nan
        return means


def pairwise_absdiff_stats(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of |g_i - g_j| over pairs i < j along the second-to-last dim, in O(N log N)."""
    n = g.shape[-2]
    pairs = n * (n - 1) / 2
    srt = g.sort(dim=-2).values
    w = (2 * torch.arange(1, n + 1, dtype=g.dtype, device=g.device) - n - 1).reshape(-1, 1)
    mean = (srt * w).sum(-2) / pairs
    sq = (n * g.pow(2).sum(-2) - g.sum(-2).pow(2)) / pairs  # mean of (g_i - g_j)^2 over pairs
    return mean, (sq - mean.pow(2)).clamp_min(0).sqrt()


@register_diagnostic("eq11")
class Eq11Check(Diagnostic):
    columns = ("eq11_absdiff_mean", "eq11_absdiff_std", "eq11_gamma_abs_mean", "gram_eig_max")
    axis_columns = ("eq11_absdiff_mean", "eq11_absdiff_std", "eq11_gamma_abs_mean")

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with _on_kpca_layers(model, self._record):
            yield

    def _record(self, layer: int, q, k, v, scale: float) -> None:
        logits = (k @ k.transpose(-2, -1)) * scale
        log_g = torch.logsumexp(logits, dim=-1)  # log g(k_j)
        av = logits.softmax(-1) @ v  # (K_phi a_d)_j for every axis d
        gamma = av / (v * log_g.exp().unsqueeze(-1))  # (B, H, N, d)
        mean, std = pairwise_absdiff_stats(gamma)  # (B, H, d)
        gabs = gamma.abs().mean(-2)
        self.axis_acc.add((layer, 0), {"eq11_absdiff_mean": mean, "eq11_absdiff_std": std,
                                       "eq11_gamma_abs_mean": gabs})
        log_kphi = logits - log_g.unsqueeze(-1) - log_g.unsqueeze(-2)
        eig = torch.linalg.eigvalsh(log_kphi.exp()).amax(-1)  # K_phi is symmetric
        self.acc.add((layer, 0), {"eq11_absdiff_mean": mean.mean(-1), "eq11_absdiff_std": std.mean(-1),
                                  "eq11_gamma_abs_mean": gabs.mean(-1), "gram_eig_max": eig})
