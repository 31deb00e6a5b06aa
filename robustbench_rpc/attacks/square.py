"""Square Attack: score-based black-box attack by random square-shaped updates.

Source: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (arXiv:1912.00049). Runs the reference implementation
(``pyautoattack.square.SquareAttack``) by default, or ``torchattacks.Square`` with
``impl="torchattacks"``. Only forward passes (under no_grad).
Norms: Linf, L2. Defaults: n_queries=5000, p_init=0.8, n_restarts=1, loss="margin",
resc_schedule=True. The library's seed is drawn from the (seeded) torch RNG, so ``seed`` makes calls
deterministic.
"""
from __future__ import annotations

import torch

from .base import Attack, register_attack

IMPLS = ("pyautoattack", "torchattacks")


def library_seed() -> int:
    """An int seed for a wrapped library, drawn from the (already seeded) torch RNG."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


@register_attack("square")
class Square(Attack):
    gradient_based = False
    norms = ("Linf", "L2")

    def __init__(self, eps: float | None = None, norm: str = "Linf", n_queries: int = 5000,
                 p_init: float = 0.8, n_restarts: int = 1, loss: str = "margin", resc_schedule: bool = True,
                 impl: str = "pyautoattack", space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._require_pixel_box()
        if impl not in IMPLS:
            raise ValueError(f"impl of attack 'square' must be one of {', '.join(IMPLS)}, got {impl!r}")
        if loss not in ("margin", "ce"):
            raise ValueError(f"loss of attack 'square' must be 'margin' or 'ce', got {loss!r}")
        p_init = self._positive_float("p_init", p_init)
        self._record(n_queries=self._positive_int("n_queries", n_queries), p_init=p_init,
                     n_restarts=self._positive_int("n_restarts", n_restarts), loss=loss,
                     resc_schedule=bool(resc_schedule), impl=impl)

    @torch.no_grad()
    def perturb(self, model, x, y):
        if self.eps == 0:
            return x.clone()
        seed = library_seed()
        if self.impl == "pyautoattack":
            from pyautoattack.square import SquareAttack

            atk = SquareAttack(model, norm=self.norm, n_queries=self.n_queries, eps=self.eps, p_init=self.p_init,
                               n_restarts=self.n_restarts, seed=seed, verbose=False, loss=self.loss,
                               resc_schedule=self.resc_schedule, device=x.device)
            return atk.perturb(x, y)
        import torchattacks

        atk = torchattacks.Square(model, norm=self.norm, eps=self.eps, n_queries=self.n_queries,
                                  n_restarts=self.n_restarts, p_init=self.p_init, loss=self.loss,
                                  resc_schedule=self.resc_schedule, seed=seed, verbose=False)
        return atk(x, y)
