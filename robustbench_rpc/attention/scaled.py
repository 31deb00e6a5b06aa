"""``scaled``: Scaled Attention as in the RPC-Attention paper (Teo & Nguyen, NeurIPS 2024).

Checked against the paper's public code, ``Scaled_Attention/softmax.py`` (class ``Attention``, flag
``s_scalar``). The qkv linear emits Q, K and V (weight ``(3*dim, dim)``) and the learned parameter is named
``s`` (state-dict key ``blocks.{i}.attn.s``), so the paper's checkpoints load strictly. Two forms, both
with ``s`` initialised at 0 (the module then starts as plain softmax attention)::

    A = softmax(Q K^T / sqrt(d))
    form="matrix" ("Scaled S"):     out = A (I - S) V              S: (heads, N, N), shared over the batch
    form="scalar" ("alpha x Asym"): out = A (I - s softmax(K K^T / sqrt(d))) V     s: shape (1,)

``form="matrix"`` needs the token count N (``patch_attention`` passes it from the model).

``scaled_symmetric`` is NOT from the paper: a project variant kept for comparison, with the SymViT qkv
(K and V only, ``(2*dim, dim)``), one scalar per head (shape ``(heads, 1, 1)``, default init -1) and output
``V - s softmax(K K^T / sqrt(d)) V`` (no Q K^T attention at all). Paper checkpoints do not load into it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import _sdpa_or_explicit, register_attention
from .symmetric import SymmetricAttention


@register_attention("scaled")
class ScaledAttention(nn.Module):
    needs_num_tokens = True
    dynamic = False  # one attention pass per forward (``adaptive_protocol``)
    dynamic_why = "one attention pass per forward (no optimization loop)"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        form: str = "matrix",
        num_tokens: Optional[int] = None,
        fused_attn: bool = True,
        s_init: Optional[float] = None,
        **_: object,
    ) -> None:
        super().__init__()
        if s_init is not None:
            raise TypeError("the paper's scaled attention initialises s at 0 and takes no s_init; the per-head "
                            "variant with s_init is 'scaled_symmetric' (not the paper's)")
        if form not in ("matrix", "scalar"):
            raise ValueError(f"scaled attention form must be 'matrix' (Scaled S) or 'scalar' (alpha x Asym), "
                             f"got {form!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if form == "matrix" and not num_tokens:
            raise ValueError("scaled attention form='matrix' needs num_tokens (the sequence length N)")
        self.form = form
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.num_tokens = num_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        shape = (num_heads, num_tokens, num_tokens) if form == "matrix" else (1,)
        self.s = nn.Parameter(torch.zeros(shape))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, **_: object) -> torch.Tensor:
        if attn_mask is not None:
            raise NotImplementedError("ScaledAttention does not support attention masks")
        B, N, C = x.shape
        p = self.attn_drop.p if self.training else 0.0
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        s = self.s.to(x.dtype)
        if self.form == "matrix":
            if N != self.num_tokens:
                raise ValueError(f"scaled attention was built for {self.num_tokens} tokens, got {N}")
            v_scaled = v - s @ v  # (I - S) V with S (H, N, N) broadcast over the batch
        else:
            v_scaled = v - s * _sdpa_or_explicit(k, k, v, self.scale, self.fused_attn, 0.0)  # (I - s A_kk) V
        out = _sdpa_or_explicit(q, k, v_scaled, self.scale, self.fused_attn, p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def variant_params(self) -> dict:
        return {"form": self.form}


@register_attention("scaled_symmetric")
class ScaledSymmetricAttention(SymmetricAttention):
    """Project variant (not the paper's): V - s softmax(K K^T / sqrt(d)) V, per-head s, SymViT qkv."""

    def __init__(self, dim: int, num_heads: int = 8, s_init: float = -1.0, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.s_init = float(s_init)
        self.s = nn.Parameter(torch.full((num_heads, 1, 1), self.s_init))

    def mix(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.attn_drop.p if self.training else 0.0
        return v - self.s.to(v.dtype) * _sdpa_or_explicit(k, k, v, self.scale, self.fused_attn, p)

    def variant_params(self) -> dict:
        return {"s_init": self.s_init}
