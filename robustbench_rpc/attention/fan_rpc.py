"""``rpc_fan``: RPC-Attention (Principal Attention Pursuit) inside FAN's asymmetric token mixing.

What the paper states (Teo & Nguyen, NeurIPS 2024): RPC-FAN-tiny, "4iter/layer1" (PAP with 4 iterations in
the first layer), against FAN-tiny (Zhou et al., ICML 2022) on ImageNet-1K, -R, -A and under PGD/FGSM at the
largest budget. Its PAP (Algorithm 1, and ``Attack/softmax.py`` of rachtsy/KPCA_code) is written for symmetric
attention, Q = K: the keys are decomposed, K = L + S, and the cleaned keys attend to themselves. The public
code has no FAN (no file or identifier mentions it at commit 017fa4e), so how PAP meets FAN's separate q and
kv projections is not shown there, and the summary of the paper we worked from does not describe it: the
placement below is our choice, to be replaced if the paper's appendix specifies another.

What we chose: PAP on the keys, with FAN's own queries attending to the recovered keys. In the paper's kernel
PCA reading (its section 2) attention projects each *query* onto principal axes computed from the *keys*; the
keys are the data the (robust) PCA is run on and the query is the point being projected, so the keys are what
PAP cleans and the queries stay as FAN computes them. Per head, with mu = N*C / (4 ||K||_1) and lambda as in
the paper (:class:`~robustbench_rpc.attention.rpc.PrincipalAttentionPursuit`, the same code as ``rpc``)::

    S  = soft_threshold(K - L + Y/mu, lambda*mu)
    K2 = K - S - Y/mu
    L  = softmax(Q K2^T / sqrt(d)) V           # Q, V: FAN's q and kv projections, untouched
    Y  = Y + mu (K - L - S)

repeated ``n_iter`` times from L = Y = 0; the last L goes through FAN's ``proj``. L (N x d) stands against K
(N x d) in the residual exactly as in the symmetric PAP (self-attention: as many queries as keys). No
parameter is added or changed: FAN's q, kv and proj are kept, so FAN's released weights (or an RPC-FAN
checkpoint in FAN's layout) load as they are and PAP runs at evaluation time.

Which setting is FAN's attention exactly: one iteration with a threshold above every |K| entry
(lambda*mu >= max |K|: S = 0, K2 = K). One iteration alone is not (its first step already soft-thresholds
K), and two or more are not even with S = 0 (Y = mu (K - L) makes the second K2 equal L).
"""
from __future__ import annotations

import torch

from .base import register_attention
from .fan import FANAttention
from .rpc import PrincipalAttentionPursuit


@register_attention("rpc_fan")
class FANRPCAttention(PrincipalAttentionPursuit, FANAttention):
    def __init__(self, dim: int, num_heads: int = 8, n_iter: int = 4, lam: float = 4.0, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.init_pursuit(dim, n_iter, lam)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.pursue(k, lambda k2: self.attend(q, k2, v))
