"""SLD: sparse L1 descent, a PGD variant for the L1 threat model.

Source: Tramer & Boneh, "Adversarial Training and Robustness for Multiple Perturbations",
NeurIPS 2019 (arXiv:1904.13000), Section 4 ("SLIDE"); reference implementation cleverhans'
``sparse_l1_descent``. Each step moves only the coordinates whose |gradient| reaches the ``sparsity``-th
percentile (cleverhans' rule: every |g| >= the k-th smallest, k = int(sparsity/100 * D)): the step is
sign(g) on those coordinates divided by their count, times ``alpha``; the perturbation is then brought
back into the L1 ball of radius eps and the image clamped into the valid box. ``projection="l1-ball"``
(default) is the Euclidean projection (Duchi et al. 2008); ``projection="rescale"`` scales the whole
perturbation down to L1 norm eps, as cleverhans does (``renorm``). With ``mask_saturated`` (on by
default, as suggested in the paper; cleverhans' ``clip_grad``) coordinates at the box's bound whose
gradient points out of it are not selected, so the step is not wasted on values the clamp would undo.
Norm: L1. Defaults: steps=20, alpha=eps/10 (the eps_iter/eps ratio of the cleverhans defaults),
sparsity=99 (percentile), projection="l1-ball", random_start=False, loss="ce".
"""
from __future__ import annotations

import torch

from .base import GradientAttack, register_attack
from .budget import project_l1_ball


@register_attack("sld")
class SparseL1Descent(GradientAttack):
    norms = ("L1",)

    def __init__(self, eps: float | None = None, norm: str = "L1", steps: int = 20, alpha: float | None = None,
                 sparsity: float = 99.0, mask_saturated: bool = True, projection: str = "l1-ball",
                 random_start: bool = False,
                 loss: str = "ce", space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 <= sparsity < 100:
            raise ValueError(f"sparsity of attack 'sld' must be a percentile in [0, 100), got {sparsity!r}")
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss of attack 'sld' must be 'ce' or 'margin', got {loss!r}")
        if projection not in ("l1-ball", "rescale"):
            raise ValueError(f"projection of attack 'sld' must be 'l1-ball' or 'rescale', got {projection!r}")
        alpha = self.eps / 10 if alpha is None else self._positive_float("alpha", alpha, allow_zero=True)
        self._record(steps=self._positive_int("steps", steps, minimum=0), alpha=alpha,
                     sparsity=float(sparsity), mask_saturated=bool(mask_saturated), projection=projection,
                     random_start=bool(random_start), loss=loss)

    def _direction(self, adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        b = grad.shape[0]
        g = grad.reshape(b, -1)
        a = adv.reshape(b, -1)
        mag = g.abs()
        stuck = torch.zeros_like(mag, dtype=torch.bool)
        if self.mask_saturated and self.box.bounded:
            lo, hi = (torch.as_tensor(t, dtype=adv.dtype, device=adv.device).expand_as(adv).reshape(b, -1)
                      for t in (self.box.lo, self.box.hi))
            stuck = ((a <= lo) & (g < 0)) | ((a >= hi) & (g > 0))
            mag = mag.masked_fill(stuck, 0.0)
        k = max(1, int(self.sparsity / 100.0 * g.shape[1]))
        thresh = mag.kthvalue(k, dim=1, keepdim=True).values
        chosen = ((mag >= thresh) & ~stuck).to(g.dtype)
        e = g.sign() * chosen / chosen.sum(dim=1, keepdim=True).clamp_min(1.0)
        return e.reshape(grad.shape)

    def _into_ball(self, delta: torch.Tensor) -> torch.Tensor:
        if self.projection == "l1-ball":
            return project_l1_ball(delta, self.eps)
        return delta.renorm(p=1, dim=0, maxnorm=self.eps)

    def perturb(self, model, x, y):
        if self.random_start:
            delta = project_l1_ball(torch.empty_like(x).uniform_(-1, 1) * self.eps / x[0].numel(), self.eps)
            adv = self.box.clamp(x + delta)
        else:
            adv = x.clone()
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y, self.loss)
            adv = adv + self.alpha * self._direction(adv, grad)
            adv = self.box.clamp(x + self._into_ball(self.box.clamp(adv) - x))
        return adv

