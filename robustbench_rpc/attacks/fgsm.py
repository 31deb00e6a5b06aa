"""FGSM: the fast gradient sign method.

Source: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(arXiv:1412.6572). One step of size eps along the sign of the input gradient of the cross-entropy
(Linf); for L2 the step follows the L2-normalized gradient (the "fast gradient method").
Norms: Linf, L2. Defaults: loss="ce", amp_dtype=None.
"""
from __future__ import annotations

import torch

from .base import GradientAttack, amp_dtype_of, register_attack
from .budget import lp_norms


@register_attack("fgsm")
class FGSM(GradientAttack):
    norms = ("Linf", "L2")

    def __init__(self, eps: float | None = None, norm: str = "Linf", loss: str = "ce", amp_dtype=None,
                 space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss of attack 'fgsm' must be 'ce' or 'margin', got {loss!r}")
        self._record(loss=loss)
        self.amp_dtype = amp_dtype_of(amp_dtype)
        self.params["amp_dtype"] = None if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1]

    def perturb(self, model, x, y):
        grad = self.input_grad(model, x, y, self.loss)
        if self.norm == "Linf":
            step = grad.sign()
        else:
            step = grad / (lp_norms(grad, "L2") + 1e-10).reshape(-1, *([1] * (x.dim() - 1)))
        return self.box.clamp(x + self.eps * step)
