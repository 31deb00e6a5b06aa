"""``mlp``: a two-layer ReLU MLP on the class token or the mean token (non-convex; trained by Adam).

Source: the MLP head baseline of Sahiner et al. (ICML 2022, transfer experiments). Training objective::

    min_{W1, b1, W2}  (1/n) sum_i CE(W2^T relu(W1^T pool(X_i) + b1), y_i) + beta/2 (||W1||_F^2 + ||W2||_F^2 + ||b1||^2)

Its convex counterpart (a group-lasso program over ReLU activation patterns, Pilanci & Ergen 2020) is not
implemented here; this head is the non-convex reference point, with no certificate.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Head, register_head
from .linear import pool_tokens


@register_head("mlp")
class MLPHead(Head):
    convex = False
    default_proj_dim = None
    source = "two-layer ReLU MLP head; Sahiner et al. ICML 2022 baseline head"

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None,
                 pool: str = "token", hidden: int = 128):
        super().__init__(dim, num_tokens, num_classes, proj_dim, pool=pool, hidden=int(hidden))
        pool_tokens(torch.zeros(1, 1, 1), pool)
        self.pool = pool
        self.W1 = nn.Parameter(torch.zeros(self.d, int(hidden)))
        self.b1 = nn.Parameter(torch.zeros(int(hidden)))
        self.W2 = nn.Parameter(torch.zeros(int(hidden), num_classes))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(pool_tokens(X, self.pool) @ self.W1.to(X.dtype) + self.b1.to(X.dtype))
        return h @ self.W2.to(X.dtype)

    def init_weights(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.W1.copy_(torch.randn(self.W1.shape, generator=gen) * (2.0 / self.d) ** 0.5)
            self.b1.zero_()
            self.W2.copy_(torch.randn(self.W2.shape, generator=gen) * (1.0 / self.W2.shape[0]) ** 0.5)
