"""``gated_attention``: the convex self-attention head with gated-ReLU activation (after Sahiner et al.,
"Unraveling Attention via Convex Duality", ICML 2022: non-linear self-attention gives a *block* nuclear-norm
program; gated ReLU with fixed gates is the convex-NN literature's tractable variant of ReLU). Restated and
derived here, by us, for a head mean-pooled over tokens with fixed random gates.

Notation as in ``attention``: tokens ``X`` (N x d). P fixed gates ``H_p`` (d x d, Gaussian, seeded) define
attention-pattern masks ``D_p(X) = 1[X H_p X^T >= 0]`` (N x N, entrywise): gated ReLU replaces
``relu(s) = 1[s >= 0] s`` by ``1[gate >= 0] s`` with a gate that does not depend on the trained weights.

Non-convex head (each head j uses gate g(j); ``⊙`` entrywise)::

    f(X) = sum_j (1/N) 1^T (D_{g(j)}(X) ⊙ (X W1_j X^T / N)) X W2_j
    min_{W1_j, W2_j}  (1/n) sum_i CE(f(X_i), y_i) + beta/2 sum_j (||W1_j||_F^2 + ||W2_j||_F^2)

Convex program solved here (one d^2 x dC block Z_p per gate; block nuclear norm)::

    M_p(X)[a,k,l] = (1/N^2) sum_{t,u} D_p(X)[t,u] X[t,a] X[u,k] X[u,l]
    f_Z(X)_c = sum_p sum_{a,k,l} M_p(X)[a,k,l] Z_p[(a,k),(l,c)]
    min_{Z_1..Z_P}  (1/n) sum_i CE(f_Z(X_i), y_i) + beta sum_p ||Z_p||_*

Why the optimal values coincide: f is linear in ``Z_p = sum_{j: g(j)=p} vec(W1_j) vec(W2_j)^T`` for each
gate, and, gate by gate, the minimum weight decay of a factorization of Z_p is ``||Z_p||_*`` (as for
``attention``); the gates are fixed, so the problem separates into P nuclear-norm terms. Equal optimal
values for m >= sum_p rank(Z_p*) heads; ``set_from_lifted`` builds them. The block nuclear norm promotes
few gates in use and few heads per gate (the paper's "block nuclear norm promotes low rank across tokens
and features").
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Head, factor_heads, register_head
from .convex import BlockNuclear


@register_head("gated_attention")
class GatedAttentionHead(Head):
    convex = True
    default_proj_dim = 12
    source = "Sahiner et al., Unraveling Attention via Convex Duality, ICML 2022 (self-attention, gated ReLU)"

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None, heads: int = 8,
                 gates: int = 4, gate_seed: int = 0):
        super().__init__(dim, num_tokens, num_classes, proj_dim, heads=int(heads), gates=int(gates),
                         gate_seed=int(gate_seed))
        d, c, m, P = self.d, num_classes, int(heads), int(gates)
        g = torch.Generator().manual_seed(int(gate_seed))
        self.register_buffer("gate_matrices", torch.randn(P, d, d, generator=g))
        self.register_buffer("head_gate", torch.arange(m) % P)
        self.W1 = nn.Parameter(torch.zeros(m, d, d))
        self.W2 = nn.Parameter(torch.zeros(m, d, c))

    def _gated_means(self, X: torch.Tensor) -> torch.Tensor:
        """E[b,p,a,u] = (1/N) sum_t D_p[t,u] X[t,a]."""
        N = X.shape[1]
        with torch.no_grad():
            D = (torch.einsum("bta,pak,buk->bptu", X, self.gate_matrices.to(X.dtype), X) >= 0).to(X.dtype)
        return torch.einsum("bptu,bta->bpau", D, X) / N

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        N = X.shape[1]
        E = self._gated_means(X)[:, self.head_gate]  # (B, m, d, N)
        q = torch.einsum("bjau,jak,buk->bju", E, self.W1.to(X.dtype), X)
        return torch.einsum("bju,bul,jlc->bc", q, X, self.W2.to(X.dtype)) / N

    def lifted(self, X: torch.Tensor) -> torch.Tensor:
        N = X.shape[1]
        E = self._gated_means(X)
        M = torch.einsum("bpau,buk,bul->bpakl", E, X, X) / N
        return M.reshape(len(X), -1)

    def regularizer(self, beta: float) -> BlockNuclear:
        d, c, P = self.d, self.num_classes, self.gate_matrices.shape[0]
        return BlockNuclear(beta, lambda Zm: Zm.reshape(P, d * d, d * c), lambda B: B.reshape(P * d ** 3, c))

    def set_from_lifted(self, Zm: torch.Tensor) -> None:
        d, c, P = self.d, self.num_classes, self.gate_matrices.shape[0]
        W1, W2, gates = [], [], []
        for p, Zp in enumerate(Zm.reshape(P, d * d, d * c)):
            A, B, _ = factor_heads(Zp)
            W1.append(A.T.reshape(-1, d, d))
            W2.append(B.T.reshape(-1, d, c))
            gates += [p] * A.shape[1]
        self.W1 = nn.Parameter(torch.cat(W1).float().contiguous())
        self.W2 = nn.Parameter(torch.cat(W2).float().contiguous())
        self.head_gate = torch.tensor(gates, dtype=torch.long, device=self.gate_matrices.device)
        self.config["heads"] = len(gates)

    def lifted_weight(self) -> torch.Tensor:
        d, c, P = self.d, self.num_classes, self.gate_matrices.shape[0]
        m = self.W1.shape[0]
        outer = self.W1.reshape(m, d * d, 1) * self.W2.reshape(m, 1, d * c)
        Z = torch.zeros(P, d * d, d * c, dtype=outer.dtype, device=outer.device).index_add(0, self.head_gate, outer)
        return Z.reshape(P * d ** 3, c)
