"""``mixer``: the convex MLP-Mixer head with linear activation (Sahiner et al., "Unraveling Attention via Convex
Duality", ICML 2022: the MLP-Mixer result). Restated and derived here, by us, for one Mixer block whose
output is mean-pooled over tokens.

Tokens ``X`` (N x d), C classes, m heads (token-mixing ``W1_j`` in R^{N x N}, channel-mixing ``W2_j`` in
R^{d x C}).

Non-convex head (one Mixer block, linear activation, mean-pooled)::

    f(X) = (1/N) 1^T sum_j W1_j X W2_j
    min_{W1_j, W2_j}  (1/n) sum_i CE(f(X_i), y_i) + beta/2 sum_j (||W1_j||_F^2 + ||W2_j||_F^2)

Convex program solved here (Z is N x dC: rows are tokens, columns (feature, class))::

    f_Z(X)_c = sum_{u,a} X[u,a] Z[u,(a,c)]
    min_Z  (1/n) sum_i CE(f_Z(X_i), y_i) + beta sqrt(N) ||Z||_*

Why the optimal values coincide: f depends on W1_j only through ``w_j = W1_j^T 1 / N`` and on the pair
through ``Z = sum_j w_j vec(W2_j)^T``. The smallest ``||W1_j||_F`` with a given w_j is ``sqrt(N) ||w_j||``
(attained by ``W1_j = 1 w_j^T``), so the weight decay of a factorization is at least
``beta/2 sum_j (N ||w_j||^2 + ||W2_j||^2) >= beta sqrt(N) sum_j ||w_j|| ||W2_j|| >= beta sqrt(N) ||Z||_*``,
with equality for the SVD factors ``w_j = s_j^{1/2} N^{-1/4} a_j``, ``W2_j = s_j^{1/2} N^{1/4} b_j``. Equal
optimal values once m >= rank(Z*) <= min(N, dC). The nuclear norm promotes low rank across tokens vs
(features, classes): each head is one spatial token weighting paired with one linear classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Head, factor_heads, register_head
from .convex import BlockNuclear


@register_head("mixer")
class ConvexMixerHead(Head):
    convex = True
    source = "Sahiner et al., Unraveling Attention via Convex Duality, ICML 2022 (MLP-Mixer, linear activation)"

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None, heads: int = 8):
        super().__init__(dim, num_tokens, num_classes, proj_dim, heads=int(heads))
        N, d, c, m = num_tokens, self.d, num_classes, int(heads)
        self.W1 = nn.Parameter(torch.zeros(m, N, N))
        self.W2 = nn.Parameter(torch.zeros(m, d, c))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        w = self.W1.to(X.dtype).mean(1)  # (m, N): (1/N) 1^T W1_j
        return torch.einsum("ju,bua,jac->bc", w, X, self.W2.to(X.dtype))

    def lifted(self, X: torch.Tensor) -> torch.Tensor:
        return X.reshape(len(X), -1)

    def regularizer(self, beta: float) -> BlockNuclear:
        N, d, c = self.num_tokens, self.d, self.num_classes
        return BlockNuclear(beta * N ** 0.5, lambda Zm: Zm.reshape(1, N, d * c), lambda B: B.reshape(N * d, c))

    def set_from_lifted(self, Zm: torch.Tensor) -> None:
        N, d, c = self.num_tokens, self.d, self.num_classes
        A, B, _ = factor_heads(Zm.reshape(N, d * c))  # columns sqrt(s_j) a_j, sqrt(s_j) b_j
        m = A.shape[1]
        w = A.T * N ** -0.25                       # (m, N)
        self.W1 = nn.Parameter(w[:, None, :].expand(m, N, N).float().contiguous())  # every row w_j^T
        self.W2 = nn.Parameter((B.T * N ** 0.25).reshape(m, d, c).float().contiguous())
        self.config["heads"] = m

    def lifted_weight(self) -> torch.Tensor:
        N, d, c = self.num_tokens, self.d, self.num_classes
        m = self.W1.shape[0]
        Z = self.W1.mean(1).T @ self.W2.reshape(m, d * c)
        return Z.reshape(N * d, c)
