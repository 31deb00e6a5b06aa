"""APGD: Auto-PGD, step-size-free PGD with momentum and checkpoints, on cross-entropy or the DLR loss.

Source: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690). Runs the reference implementation
``pyautoattack.autopgd_base.APGDAttack`` (the one ``autoattack`` runs as its apgd-ce / apgd-dlr components),
here on its own so that more iterations and restarts can be asked of it by name.
Norms: Linf, L2, L1. Defaults as AutoAttack: n_iter=100, n_restarts=1, rho=0.75, eot_iter=1, loss="ce".
``loss="dlr"`` needs at least 3 classes (it uses the third-largest logit).

The library attacks only the points still classified correctly and keeps, over restarts, the first
iterate that fools the model: the robust-accuracy definition (clean-misclassified points come back as the
clean image). Its seed is drawn from the (seeded) torch RNG, so ``seed`` makes calls deterministic.
"""
from __future__ import annotations

import torch

from .base import ConnectedInput, GradientAttack, register_attack
from .square import library_seed

LOSSES = ("ce", "dlr")


@register_attack("apgd")
class APGD(GradientAttack):
    norms = ("Linf", "L2", "L1")

    def __init__(self, eps: float | None = None, norm: str = "Linf", loss: str = "ce", n_iter: int = 100,
                 n_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1, space: str = "pixel",
                 clip: bool = True, labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._require_pixel_box()
        if loss not in LOSSES:
            raise ValueError(f"loss of attack 'apgd' must be one of {', '.join(LOSSES)}, got {loss!r}")
        rho = self._positive_float("rho", rho)
        if rho >= 1:
            raise ValueError(f"rho of attack 'apgd' must be in (0, 1), got {rho!r}")
        self._record(loss=loss, n_iter=self._positive_int("n_iter", n_iter),
                     n_restarts=self._positive_int("n_restarts", n_restarts), rho=rho,
                     eot_iter=self._positive_int("eot_iter", eot_iter))

    def perturb(self, model, x, y):
        if self.eps == 0:
            return x.clone()
        if self.loss == "dlr":
            with torch.no_grad():
                n_classes = model(x[:1]).shape[1]
            if n_classes < 3:
                raise ValueError(f"attack 'apgd' with loss='dlr' needs at least 3 classes (it uses the third-largest "
                                 f"logit); the model has {n_classes}: use loss='ce'")
        from pyautoattack.autopgd_base import APGDAttack

        atk = APGDAttack(ConnectedInput(model), n_iter=self.n_iter, norm=self.norm, n_restarts=self.n_restarts,
                         eps=self.eps, seed=library_seed(), loss=self.loss, eot_iter=self.eot_iter, rho=self.rho,
                         device=x.device)
        return atk.perturb(x, y).to(x.dtype)
