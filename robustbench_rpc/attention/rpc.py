"""``rpc``: RPC-Attention — Principal Attention Pursuit (PAP) inside symmetric attention.

Teo & Nguyen, "Unveiling the Hidden Structure of Self-Attention via Kernel Principal Component Analysis",
NeurIPS 2024. Per head, with K the keys (B, H, N, d) and C the full embedding dim::

    mu = N*C / (4 * ||K||_1)                  # L1 over tokens x head dim, per sample and head
    L = Y = 0
    repeat n_iter times:
        S  = soft_threshold(K - L + Y/mu, lambda*mu)
        K2 = K - S - Y/mu
        L  = softmax(K2 K2^T / sqrt(d)) V     # fused SDPA; explicit path kept for diagnostics
        Y  = Y + mu * (K - L - S)
    output L  (then the usual output projection)

Defaults: n_iter=4, lambda=4.0. The last Y update cannot change the output and is skipped.

Checked against the paper's public code, ``Attack/softmax.py`` (``Attention`` with ``robust``, ``n``,
``lambd``, ``layer``): its ``n - 1`` loop iterations plus the final one are our ``n_iter``; which blocks run
PAP (its ``layer``: -1 all, else that block) is decided by the model, see ``models.loading.resolve_model``.

Diagnostics: the module exposes its iterates (``exposes_iterates = True``). When ``iterate_recorder`` is set
(``robustbench_rpc.diagnostics.record_iterates`` does it, and switches to the explicit path), it is called
once per iteration with ``(iteration, k=K, S=S, L=L, Z=Y/mu, mu=mu, tau=lambda*mu)``; unset (the default),
the forward pays one attribute test per iteration.
"""
from __future__ import annotations

import torch

from .base import _sdpa_or_explicit, register_attention
from .symmetric import SymmetricAttention


def soft_threshold(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """sign(x) * max(|x| - tau, 0), the proximal operator of tau*||.||_1, written as x - clamp(x, -tau, tau)
    (two elementwise kernels instead of four)."""
    return x - torch.clamp(x, -tau, tau)


class _SymmetricClamp(torch.autograd.Function):
    """``clamp(x, -tau, tau)`` for a per-(sample, head) threshold ``tau`` of shape (B, H, 1, 1).

    Same values and gradients as ``torch.clamp`` with tensor bounds, with a leaner backward: one mask
    ``|x| < tau`` serves both inputs (d/dx = inside; d/dtau = sign(x) outside, summed over tokens and
    features). At ViT token counts torch's generic ``ClampBackward`` (gradients for a min and a max tensor,
    each with its own masks) was a third of RPC attention's fwd+bwd time (profiled at N=197, 3 heads)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, tau)
        return torch.clamp(x, -tau, tau)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, tau = ctx.saved_tensors
        inside = x.abs() <= tau  # torch.clamp passes the gradient to x on the closed interval
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_tau = None
        if ctx.needs_input_grad[1]:
            grad_tau = torch.where(inside, 0.0, grad * x.sign()).sum(dim=(-2, -1), keepdim=True)
        return grad_x, grad_tau


def symmetric_clamp(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``clamp(x, -tau, tau)`` with tau (B, H, 1, 1); see :class:`_SymmetricClamp`."""
    return _SymmetricClamp.apply(x, tau)


@register_attention("rpc")
class RPCAttention(SymmetricAttention):
    exposes_iterates = True  # diagnostics may set ``iterate_recorder`` (see the module docstring)

    def __init__(self, dim: int, num_heads: int = 8, n_iter: int = 4, lam: float = 4.0, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        if int(n_iter) < 1:
            raise ValueError(f"rpc n_iter must be >= 1, got {n_iter}")
        if float(lam) <= 0:
            raise ValueError(f"rpc lambda must be > 0, got {lam}")
        self.n_iter = int(n_iter)
        self.lam = float(lam)
        self.embed_dim = dim
        self.iterate_recorder = None

    def mix(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.attn_drop.p if self.training else 0.0
        mu, tau = self.mu_and_threshold(k)
        # The loop in Z = Y/mu (mu is fixed across iterations) and C = clamp(K - L + Z, -tau, tau), so that
        # S = soft_threshold(K - L + Z) = (K - L + Z) - C. Substituting S into the paper's updates gives
        #     K2 = K - S - Z = L - 2 Z + C          and          Z' = Z + (K - L' - S) = L - L' + C,
        # the same iterates with 7 elementwise kernels per iteration instead of 8 (5 in the last, whose
        # Z' cannot change the output), and fewer tensors kept for the backward pass. First iteration:
        # L = Z = 0, so K2 = C = clamp(K).
        rec = self.iterate_recorder
        c = symmetric_clamp(k, tau)
        L = _sdpa_or_explicit(c, c, v, self.scale, self.fused_attn, p)
        if rec is not None:
            rec(1, k=k, S=k - c, L=L, Z=None, mu=mu, tau=tau)
        Z = c - L if self.n_iter > 1 else None
        for it in range(2, self.n_iter + 1):
            r = (k - L).add_(Z)  # K - L + Y/mu
            c = symmetric_clamp(r, tau)
            k2 = (L + c).add_(Z, alpha=-2.0)
            L_next = _sdpa_or_explicit(k2, k2, v, self.scale, self.fused_attn, p)
            if rec is not None:
                rec(it, k=k, S=r - c, L=L_next, Z=Z, mu=mu, tau=tau)
            if it < self.n_iter:
                Z = (L - L_next).add_(c)
            L = L_next
        return L

    def mu_and_threshold(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's mu = N*C / (4 ||K||_1) per sample and head, and the soft threshold lambda*mu."""
        N = k.shape[-2]
        mu = (N * self.embed_dim) / (4 * k.abs().sum(dim=(-2, -1), keepdim=True))
        return mu, self.lam * mu

    def variant_params(self) -> dict:
        return {"n_iter": self.n_iter, "lambda": self.lam}


@register_attention("rpc_keyscale")
class RPCKeyScaleAttention(RPCAttention):
    """PAP with a scale-aware soft threshold (ours, not the paper's; issue 10).

    The paper's threshold lambda*mu = lambda*H / (4 mean|K|) (H heads) shrinks as the keys grow, so the
    fraction of key entries it flags depends on the key scale a model happens to learn: on the shipped
    micro RPC model (mean|K| ~ 1.25) S ends up dense, on SymViT's weights (mean|K| ~ 0.17) S stays empty.
    Here the threshold is measured in units of the keys' own magnitude,

        threshold = lambda * H/4 * mean|K|      (per sample and head; equal to the paper's at mean|K| = 1)

    so scaling K scales the threshold with it and the flagged fraction is scale-invariant. Everything else
    (the loop tracks Y/mu, so mu enters only through the threshold) is the paper's PAP.
    """

    def mu_and_threshold(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, _ = super().mu_and_threshold(k)
        B, H, N, d = k.shape
        mean_abs = k.abs().mean(dim=(-2, -1), keepdim=True)
        return mu, self.lam * (self.embed_dim / (4 * d)) * mean_abs

    def variant_params(self) -> dict:
        return {"n_iter": self.n_iter, "lambda": self.lam, "threshold": "keyscale"}
