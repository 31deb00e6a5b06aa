"""``symmetric`` (SymViT): queries = keys, softmax(K K^T / sqrt(d)) V.

The qkv linear emits only K and V (weight shape (2*dim, dim), K first), as in the RPC-Attention paper's
public code (``Attack/softmax.py``, ``Attention`` with ``robust`` off) and checkpoints, so those files load
without renaming.
"""
from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from .base import _sdpa_or_explicit, register_attention


@register_attention("symmetric")
class SymmetricAttention(nn.Module):
    #: static: one attention pass, no optimization or autograd inside forward (``adaptive_protocol``)
    dynamic = False
    dynamic_why = "one attention pass per forward (no optimization loop)"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[Type[nn.Module]] = None,
        fused_attn: bool = True,
        **_: object,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.k_norm = norm_layer(self.head_dim) if qk_norm and norm_layer else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        kv = self.qkv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        return self.k_norm(k), v

    def mix(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head token mixing (B, H, N, d) -> (B, H, N, d); variants override this."""
        p = self.attn_drop.p if self.training else 0.0
        return _sdpa_or_explicit(k, k, v, self.scale, self.fused_attn, p)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, **_: object) -> torch.Tensor:
        if attn_mask is not None:
            raise NotImplementedError(f"{type(self).__name__} does not support attention masks")
        B, N, C = x.shape
        k, v = self.keys_values(x)
        out = self.mix(k, v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))

    def variant_params(self) -> dict:
        return {}
