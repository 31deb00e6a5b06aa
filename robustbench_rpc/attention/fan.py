"""``fan``: the token-mixing attention of FAN-ViT (Zhou et al., "Understanding The Robustness in Vision
Transformers", ICML 2022; NVlabs/FAN ``models/fan.py``, ``TokenMixing``), written from a reading of it.

Asymmetric softmax attention, ``softmax(Q K^T / sqrt(d)) V`` per head, with the queries and the keys/values
projected by two linears, ``q`` (dim -> dim) and ``kv`` (dim -> 2*dim, keys first), then ``proj``. Those are
the names and layout of FAN's released checkpoints, so they load without renaming. FAN's blocks pass
``(x, H, W)``; with its spatial reduction ratio 1 (every FAN-ViT size) the token mixing ignores H and W, so
here the block calls ``attn(x)`` like a timm block and any variant built on this class plugs in.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import _sdpa_or_explicit, register_attention


@register_attention("fan")
class FANAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused_attn: bool = True, **_: object) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v), each (B, H, N, d)."""
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v, fused SDPA or explicit (``fused_attn``); attention dropout in training."""
        p = self.attn_drop.p if self.training else 0.0
        return _sdpa_or_explicit(q, k, v, self.scale, self.fused_attn, p)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head token mixing (B, H, N, d) -> (B, H, N, d); variants override this."""
        return self.attend(q, k, v)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        if attn_mask is not None:
            raise NotImplementedError(f"{type(self).__name__} does not support attention masks")
        B, N, C = x.shape
        out = self.mix(*self.queries_keys_values(x)).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))

    def constructor_args(self) -> dict[str, Any]:
        """What ``patch_attention`` passes to a variant built in this module's place (the q / kv layout is not
        timm's qkv, so they are read here)."""
        return dict(dim=self.q.in_features, num_heads=self.num_heads, qkv_bias=self.q.bias is not None,
                    proj_bias=self.proj.bias is not None, attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p)

    def variant_params(self) -> dict:
        return {}
