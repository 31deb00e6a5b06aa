"""Head registry and the contract every head keeps.

A head is an ``nn.Module`` that maps a frozen backbone's final-norm token features ``(B, N, D)`` (a timm
VisionTransformer's ``forward_features``) to logits ``(B, C)``. It starts with a fixed projection fitted on
the training tokens: ``X = [(T - mu) P / s, 1]`` (PCA to ``proj_dim`` directions, one global scale, and a
constant feature appended, so every head also contains a bias / a linear model on the mean token).
``d = proj_dim + 1`` is the head's token width.

A head with a convex program (``convex = True``) also provides:

- ``lifted(X) -> Phi`` (B, F): the features in which the head is linear, ``logits = Phi @ Zm``;
- ``regularizer(beta)``: the program's regularizer on ``Zm`` (a ``heads.convex.Regularizer``);
- ``set_from_lifted(Zm)``: the network weights (one head per singular pair) that realize ``Zm`` with
  weight decay equal to the regularizer (the constructive half of the equivalence);
- ``to_lifted()``: the ``Zm`` the current weights realize.

Every head gives ``penalty()`` = ``1/2 sum ||W||_F^2`` over its trainable weights, so the non-convex training
objective is ``mean CE + beta * penalty()``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Registry

HEADS: Registry[type["Head"]] = Registry("head", name_attr="head_name")


def register_head(name: str):
    """Class decorator: make a head usable by name (``train-head --head NAME``, ``--model BACKBONE+NAME:CKPT``)."""
    return HEADS.register(name)


def get_head(name: str) -> type["Head"]:
    return HEADS.get(name)


def list_heads(pattern: str | None = None) -> list[str]:
    return HEADS.names(pattern)


class Head(nn.Module):
    head_name = "?"
    convex = False            # has a convex program solved by FISTA
    default_proj_dim: int | None = 16
    source = ""               # one line: where the head comes from

    def __init__(self, dim: int, num_tokens: int, num_classes: int, proj_dim: int | None = None, **config: Any):
        super().__init__()
        r = self.default_proj_dim if proj_dim is None else int(proj_dim)
        r = dim if r is None or r <= 0 else min(r, dim)
        self.dim, self.num_tokens, self.num_classes, self.proj_dim = int(dim), int(num_tokens), int(num_classes), r
        self.d = r + 1
        self.register_buffer("proj_mean", torch.zeros(dim))
        self.register_buffer("proj_matrix", torch.eye(dim)[:, :r].clone())
        self.register_buffer("proj_scale", torch.ones(()))
        self.config = dict(config)

    # -- the fixed projection ------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_projection(self, tokens: torch.Tensor) -> None:
        """PCA of the training tokens (all positions), top ``proj_dim`` directions, one global scale."""
        flat = tokens.reshape(-1, tokens.shape[-1]).double()
        mu = flat.mean(0)
        cov = (flat - mu).T @ (flat - mu) / len(flat)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[: self.proj_dim]
        P = evecs[:, order]
        P = P * torch.sign(P[P.abs().argmax(0), torch.arange(P.shape[1])])  # deterministic signs
        self.proj_mean.copy_(mu.float())
        self.proj_matrix.copy_(P.float())
        self.proj_scale.copy_(evals[order].mean().clamp_min(1e-12).sqrt().float())

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        dt = tokens.dtype
        x = (tokens - self.proj_mean.to(dt)) @ self.proj_matrix.to(dt) / self.proj_scale.to(dt)
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits(self.project(tokens))

    def logits(self, X: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # -- training contract ---------------------------------------------------------------------------------
    def weights(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def penalty(self) -> torch.Tensor:
        """1/2 sum of squared Frobenius norms of the trainable weights (the weight decay, per unit beta)."""
        return 0.5 * sum((p.double() ** 2).sum() for p in self.weights())

    def init_weights(self, gen: torch.Generator) -> None:
        """Seeded initialization for the non-convex (Adam) training."""
        for p in self.weights():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p.shape[-2] if p.ndim > 1 else 1)) ** 0.5)

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (stored in the checkpoint so the head is rebuilt with the same shapes)."""
        return {"dim": self.dim, "num_tokens": self.num_tokens, "num_classes": self.num_classes,
                "proj_dim": self.proj_dim, **self.config}

    def rank_info(self, rtol: float = 1e-6) -> dict[str, Any]:
        """Ranks of the learned blocks of the lifted weight (convex heads), for tables and plots."""
        if not self.convex:
            return {}
        reg = self.regularizer(1.0)
        if not hasattr(reg, "to_blocks"):
            return {}
        Zm = self.to_lifted().double()
        blocks = reg.to_blocks(Zm)
        sv = torch.linalg.svdvals(blocks)
        top = float(sv.max()) if sv.numel() else 0.0
        ranks = [int((s > rtol * max(top, 1e-300)).sum()) for s in sv]
        return {"block_shape": list(blocks.shape[1:]), "num_blocks": int(blocks.shape[0]), "ranks": ranks,
                "rank_rtol": rtol, "singular_values": [[float(v) for v in s[:64]] for s in sv]}

    # convex heads override these
    def lifted(self, X: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def regularizer(self, beta: float):  # pragma: no cover - interface
        raise NotImplementedError

    def set_from_lifted(self, Zm: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def lifted_weight(self) -> torch.Tensor:  # pragma: no cover - interface
        """Zm realized by the current weights, differentiable in them (logits = lifted(X) @ Zm)."""
        raise NotImplementedError

    def to_lifted(self) -> torch.Tensor:
        return self.lifted_weight().detach()


def factor_heads(Z: torch.Tensor, rtol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced factors of one block: Z = sum_j a_j b_j^T with ||a_j|| = ||b_j|| = sqrt(sigma_j), so that
    sum_j (||a_j||^2 + ||b_j||^2) / 2 = ||Z||_* (the minimum over all factorizations). Returns (A, B, S)
    with columns a_j, b_j for the nonzero singular values."""
    U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    keep = S > (rtol * float(S.max()) if S.numel() else 0.0)  # SVT zeros come back as ~1e-17 round-off
    r = S[keep].sqrt()
    return U[:, keep] * r, Vh[keep].T * r, S[keep]
