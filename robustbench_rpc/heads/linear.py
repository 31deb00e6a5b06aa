"""``linear``: a linear classifier on the class token or the mean token (the standard ViT head).

Source: the ViT linear probe (Dosovitskiy et al., 2021), one of the baseline heads of Sahiner et al.
(ICML 2022) transfer experiments. Its training problem is already convex (multinomial logistic regression
with weight decay)::

    min_W  (1/n) sum_i CE(W^T pool(X_i), y_i) + beta/2 ||W||_F^2,   W in R^{d x C}

(pool = class token or mean over tokens; X_i includes the constant feature, so the bias is in W and is
regularized too). No non-convex counterpart; solved by the same FISTA (prox = shrinkage by 1/(1 + beta/L)),
with the L2 Fenchel dual ``D = mean_i H(p_i) - ||Phi^T (P - Y)/n||_F^2 / (2 beta)`` as certificate.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Head, register_head
from .convex import SquaredFrobenius


def pool_tokens(X: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "token":
        return X[:, 0]
    if pool == "mean":
        return X.mean(1)
    raise ValueError(f"pool must be 'token' (class token) or 'mean', got {pool!r}")


@register_head("linear")
class LinearHead(Head):
    convex = True
    default_proj_dim = None  # full width: a rotation of the backbone features, nothing dropped
    source = "ViT linear probe; Sahiner et al. ICML 2022 baseline head"

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None,
                 pool: str = "token"):
        super().__init__(dim, num_tokens, num_classes, proj_dim, pool=pool)
        pool_tokens(torch.zeros(1, 1, 1), pool)  # validate
        self.pool = pool
        self.W = nn.Parameter(torch.zeros(self.d, num_classes))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return pool_tokens(X, self.pool) @ self.W.to(X.dtype)

    def lifted(self, X: torch.Tensor) -> torch.Tensor:
        return pool_tokens(X, self.pool)

    def regularizer(self, beta: float) -> SquaredFrobenius:
        return SquaredFrobenius(beta)

    def set_from_lifted(self, Zm: torch.Tensor) -> None:
        self.W = nn.Parameter(Zm.detach().float().clone())

    def lifted_weight(self) -> torch.Tensor:
        return self.W
