"""``attention``: the convex self-attention head with linear activation (Sahiner et al., "Unraveling Attention
via Convex Duality", ICML 2022, arXiv 2205.08078: the linear-activation self-attention result). The
derivation is restated here, by us, for a head whose output is mean-pooled over tokens, with the attention
scores scaled by 1/N; section/equation numbers of the paper are deliberately not quoted.

Tokens ``X`` (N x d, the projected backbone tokens with a constant feature), ``G = X^T X / N`` (d x d),
``xbar = X^T 1 / N`` (the mean token). C classes, m heads.

Non-convex head (linear-activation dot-product self-attention, ``W1_j = Q_j K_j^T``, ``W2_j = V_j O_j``)::

    f(X) = (1/N) 1^T sum_j (X W1_j X^T / N) X W2_j = sum_j xbar^T W1_j G W2_j        (in R^C)
    min_{W1_j in R^{d x d}, W2_j in R^{d x C}}  (1/n) sum_i CE(f(X_i), y_i) + beta/2 sum_j (||W1_j||_F^2 + ||W2_j||_F^2)

Convex program solved here (Z is a d x d grid of d x C blocks Z_kl, i.e. a d^2 x dC matrix with rows
(a, k) and columns (l, c))::

    f_Z(X)_c = sum_{a,k,l} xbar_a G_kl Z[(a,k),(l,c)]     (= sum_{k,l} G_kl xbar^T Z_kl, linear in Z)
    min_Z  (1/n) sum_i CE(f_Z(X_i), y_i) + beta ||Z||_*

Why the optimal values coincide: f depends on the weights only through
``Z = sum_j vec(W1_j) vec(W2_j)^T`` (vec(W1_j) indexed (a,k), vec(W2_j) indexed (l,c)), so the non-convex
problem is the convex one with ``||Z||_*`` replaced by
``min {sum_j (||u_j||^2 + ||v_j||^2)/2 : Z = sum_j u_j v_j^T}``, and that minimum *is* ``||Z||_*`` (AM-GM
on each pair, attained by the balanced SVD factors ``u_j = sqrt(s_j) a_j``, ``v_j = sqrt(s_j) b_j``) once
``m >= rank(Z*)``. Hence p*_convex = p*_non-convex for m >= rank(Z*) <= min(d^2, dC), every non-convex
weight set has objective >= p*_convex, and ``set_from_lifted`` turns the convex solution into
``rank(Z*)`` attention heads with exactly the same objective. The nuclear norm promotes few heads
(low rank across the (feature, token-correlation) rows and (feature, class) columns).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Head, factor_heads, register_head
from .convex import BlockNuclear


@register_head("attention")
class ConvexAttentionHead(Head):
    convex = True
    source = "Sahiner et al., Unraveling Attention via Convex Duality, ICML 2022 (self-attention, linear activation)"

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None, heads: int = 8):
        super().__init__(dim, num_tokens, num_classes, proj_dim, heads=int(heads))
        d, c, m = self.d, num_classes, int(heads)
        self.W1 = nn.Parameter(torch.zeros(m, d, d))
        self.W2 = nn.Parameter(torch.zeros(m, d, c))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        N = X.shape[1]
        xbar = X.mean(1)
        G = X.transpose(1, 2) @ X / N
        u = torch.einsum("ba,jak->bjk", xbar, self.W1.to(X.dtype))
        v = torch.einsum("bjk,bkl->bjl", u, G)
        return torch.einsum("bjl,jlc->bc", v, self.W2.to(X.dtype))

    def lifted(self, X: torch.Tensor) -> torch.Tensor:
        N = X.shape[1]
        G = X.transpose(1, 2) @ X / N
        return torch.einsum("ba,bkl->bakl", X.mean(1), G).reshape(len(X), -1)

    def regularizer(self, beta: float) -> BlockNuclear:
        d, c = self.d, self.num_classes
        return BlockNuclear(beta, lambda Zm: Zm.reshape(1, d * d, d * c), lambda B: B.reshape(d ** 3, c))

    def set_from_lifted(self, Zm: torch.Tensor) -> None:
        d, c = self.d, self.num_classes
        A, B, _ = factor_heads(Zm.reshape(d * d, d * c))
        m = A.shape[1]
        self.W1 = nn.Parameter(A.T.reshape(m, d, d).float().contiguous())
        self.W2 = nn.Parameter(B.T.reshape(m, d, c).float().contiguous())
        self.config["heads"] = m

    def lifted_weight(self) -> torch.Tensor:
        d, c = self.d, self.num_classes
        m = self.W1.shape[0]
        Z = self.W1.reshape(m, d * d).T @ self.W2.reshape(m, d * c)
        return Z.reshape(d ** 3, c)
