"""Solving a convex head's program to a certified tolerance: accelerated proximal gradient (FISTA).

Every convex head reduces to the same problem over a lifted weight matrix ``Zm`` (F x C)::

    P(Z) = (1/n) sum_i CE(phi_i^T Zm, y_i) + R(Zm)

with ``phi_i`` the head's lifted features of sample i (``Phi``, n x F) and R either a (block) nuclear norm
``w * sum_p ||Z_p||_*`` (the blocks ``Z_p`` are reshapes of ``Zm``) or ``beta/2 ||Zm||_F^2`` (the linear head).

Why FISTA with singular-value thresholding (SVT): the loss is smooth with a known Lipschitz constant
(the Hessian of softmax cross-entropy w.r.t. the logits has spectral norm <= 1/2, so
``L = ||Phi||_2^2 / (2n)``), the regularizer's prox is exact and cheap (SVT of each block), so FISTA
converges at the well-understood O(L ||Z0 - Z*||^2 / k^2) rate with no tuning (Beck & Teboulle, 2009),
and each iterate gives a dual point for free, hence a certificate.

Certificate (Fenchel duality). With ``f(U) = (1/n) sum_i CE(u_i, y_i)`` and ``A Z = Phi Zm``::

    D(Lambda) = -f*(Lambda) - R*(-A^T Lambda) <= p* <= P(Z)     for every Lambda,

``f*(Lambda) = (1/n) sum_i sum_c q_ic log q_ic`` with ``q_i = n lambda_i + y_i`` on the simplex, and for the
nuclear norm ``R*`` is the indicator of ``max_p ||(A^T Lambda)_p||_2 <= w``. We take the dual point from the
gradient, ``Lambda = t (P - Y) / n`` (P the softmax probabilities), scaled by ``t = min(1, w / max_p ||grad_p||_2)``
so that it is feasible (``q_i = y_i + t (p_i - y_i)`` stays on the simplex); then ``D = mean_i H(q_i)``
(entropy). The gap ``P(Z) - D(Lambda) >= P(Z) - p*`` is what the stopping rule bounds: the solver stops
when the gap is <= ``tol`` (absolute, in nats per sample), and the checkpoint stores it.
"""
from __future__ import annotations

import contextlib

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


def svt(Z: torch.Tensor, tau: float) -> torch.Tensor:
    """Singular-value thresholding, the prox of ``tau * ||.||_*``: ``U max(S - tau, 0) V^T``.

    Batched over leading dimensions (each block is thresholded on its own: the prox of the block nuclear
    norm ``sum_p ||Z_p||_*`` is separable)."""
    U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    S = (S - tau).clamp_min(0)
    return (U * S.unsqueeze(-2)) @ Vh


class Regularizer:
    """R(Zm): value, prox, and the dual pieces the certificate needs."""

    def value(self, Zm: torch.Tensor) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def prox(self, V: torch.Tensor, step: float) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def dual(self, grad: torch.Tensor) -> tuple[float, float]:  # pragma: no cover
        """(t, penalty): scale of the dual point and ``R*(-t grad)``."""
        raise NotImplementedError


class BlockNuclear(Regularizer):
    """``weight * sum_p ||Z_p||_*``, the blocks given by ``to_blocks(Zm) -> (P, rows, cols)``."""

    def __init__(self, weight: float, to_blocks: Callable[[torch.Tensor], torch.Tensor],
                 from_blocks: Callable[[torch.Tensor], torch.Tensor]):
        self.weight, self.to_blocks, self.from_blocks = float(weight), to_blocks, from_blocks

    def value(self, Zm: torch.Tensor) -> float:
        return self.weight * float(torch.linalg.matrix_norm(self.to_blocks(Zm), ord="nuc").sum())

    def prox(self, V: torch.Tensor, step: float) -> torch.Tensor:
        return self.from_blocks(svt(self.to_blocks(V), step * self.weight))

    def dual(self, grad: torch.Tensor) -> tuple[float, float]:
        spec = float(torch.linalg.matrix_norm(self.to_blocks(grad), ord=2).max())
        return (1.0 if spec <= self.weight else self.weight / spec), 0.0

    def ranks(self, Zm: torch.Tensor, rtol: float = 0.0) -> list[int]:
        S = torch.linalg.svdvals(self.to_blocks(Zm))
        return [int((s > rtol * max(float(s.max()), 1e-300)).sum()) if rtol else int((s > 0).sum()) for s in S]


class SquaredFrobenius(Regularizer):
    """``beta/2 ||Zm||_F^2`` (weight decay; the linear head)."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def value(self, Zm: torch.Tensor) -> float:
        return 0.5 * self.beta * float((Zm ** 2).sum())

    def prox(self, V: torch.Tensor, step: float) -> torch.Tensor:
        return V / (1.0 + step * self.beta)

    def dual(self, grad: torch.Tensor) -> tuple[float, float]:
        return 1.0, float((grad ** 2).sum()) / (2.0 * self.beta)


@dataclass
class Certificate:
    """What the solver proves about its answer (stored in the head checkpoint's metadata)."""

    objective: float        # P(Z) at the returned Z
    loss: float             # its data term (mean cross-entropy)
    regularizer: float      # its regularizer term
    dual: float             # D(Lambda) <= p*
    gap: float              # objective - dual >= objective - p*
    tol: float              # the stopping tolerance on the gap
    converged: bool         # gap <= tol
    iterations: int
    lipschitz: float        # global Lipschitz bound ||Phi||_2^2 / (2n): the step never goes below 1 / lipschitz
    restarts: int
    seconds: float
    backtracks: int = 0
    method: str = ("FISTA with backtracking (step from the sufficient-decrease test, capped by the global "
                   "Lipschitz bound), gradient-based adaptive restart; prox = SVT")

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_and_grad(Phi: torch.Tensor, Y1: torch.Tensor, Zm: torch.Tensor):
    logits = Phi @ Zm
    logp = torch.log_softmax(logits, dim=1)
    loss = -(Y1 * logp).sum(1).mean()
    P = logp.exp()
    return float(loss), P, Phi.T @ ((P - Y1) / Phi.shape[0])


def spectral_norm_sq(Phi: torch.Tensor, iters: int = 300, rtol: float = 1e-7, seed: int = 0) -> float:
    """||Phi||_2^2 by power iteration on Phi^T Phi (converged to rtol)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(Phi.shape[1], generator=g, dtype=Phi.dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = Phi.T @ (Phi @ v)
        new = float(w.norm())
        v = w / max(new, 1e-300)
        if abs(new - lam) <= rtol * new:
            lam = new
            break
        lam = new
    return lam


def certificate_at(Phi: torch.Tensor, Y1: torch.Tensor, Zm: torch.Tensor, reg: Regularizer) -> dict:
    """Primal, dual and gap at Zm (see the module docstring)."""
    loss, P, grad = _loss_and_grad(Phi, Y1, Zm)
    r = reg.value(Zm)
    t, penalty = reg.dual(grad)
    Q = Y1 + t * (P - Y1)
    dual = float(-(torch.special.xlogy(Q, Q)).sum(1).mean()) - penalty
    return {"objective": loss + r, "loss": loss, "regularizer": r, "dual": dual, "gap": loss + r - dual}


def fista(Phi: torch.Tensor, y: torch.Tensor, num_classes: int, reg: Regularizer, *, tol: float = 1e-4,
          max_iter: int = 20000, check_every: int = 10, Z0: torch.Tensor | None = None,
          log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, Certificate]:
    """min_Z mean CE(Phi Z, y) + R(Z) to a duality gap <= tol. Phi: (n, F); returns (Zm (F, C), certificate).

    Runs single-threaded: bit-reproducible, and the many small SVDs are faster on one thread."""
    with one_thread():
        return _fista(Phi, y, num_classes, reg, tol, max_iter, check_every, Z0, log)


@contextlib.contextmanager
def one_thread():
    """Torch intra-op threads set to 1 for the block (restored after): results independent of core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fista(Phi, y, num_classes, reg, tol, max_iter, check_every, Z0, log):
    t0 = time.time()
    n = Phi.shape[0]
    Y1 = torch.nn.functional.one_hot(y.long(), num_classes).to(Phi.dtype)
    L_max = 1.05 * spectral_norm_sq(Phi) / (2.0 * n)  # global bound (5 % over the power-iteration estimate)
    L = L_max / 64.0  # optimistic start; backtracking raises it where the local curvature is higher

    def smooth(logits):
        logp = torch.log_softmax(logits, dim=1)
        return float(-(Y1 * logp).sum(1).mean()), logp

    Z = torch.zeros(Phi.shape[1], num_classes, dtype=Phi.dtype) if Z0 is None else Z0.clone().to(Phi.dtype)
    logits_Z = Phi @ Z
    Yv, logits_Y, tk, restarts, backtracks = Z.clone(), logits_Z.clone(), 1.0, 0, 0
    cert = certificate_at(Phi, Y1, Z, reg)
    k = 0
    for k in range(1, max_iter + 1):
        fY, logp = smooth(logits_Y)
        grad = Phi.T @ ((logp.exp() - Y1) / n)
        L_prev = L
        L = max(L * 0.8, 1e-12)  # try a longer step first (decreasing-L backtracking, Scheinberg et al. 2014)
        while True:
            Znew = reg.prox(Yv - grad / L, 1.0 / L)
            logits_new = Phi @ Znew
            D = Znew - Yv
            f_new, _ = smooth(logits_new)
            if f_new <= fY + float((grad * D).sum()) + 0.5 * L * float((D * D).sum()) + 1e-12 * abs(fY) or L >= L_max:
                break
            L, backtracks = min(2.0 * L, L_max), backtracks + 1
        if float(((Yv - Znew) * (Znew - Z)).sum()) > 0:  # momentum points uphill: restart (O'Donoghue-Candes)
            tk, restarts = 1.0, restarts + 1
        tnew = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * tk * tk * L / L_prev))
        mom = (tk - 1.0) / tnew
        Yv = Znew + mom * (Znew - Z)
        logits_Y = logits_new + mom * (logits_new - logits_Z)  # logits are linear in Z: no extra product
        Z, logits_Z, tk = Znew, logits_new, tnew
        if k % check_every == 0 or k == max_iter:
            cert = certificate_at(Phi, Y1, Z, reg)
            if log and k % (check_every * 50) == 0:
                log(f"  iter {k}: objective {cert['objective']:.6f} gap {cert['gap']:.2e} (L {L:.3g})")
            if cert["gap"] <= tol:
                break
    out = Certificate(**cert, tol=tol, converged=cert["gap"] <= tol, iterations=k, lipschitz=L_max,
                      restarts=restarts, seconds=round(time.time() - t0, 2), backtracks=backtracks)
    return Z, out
