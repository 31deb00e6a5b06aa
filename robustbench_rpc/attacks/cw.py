"""CW-L2: the Carlini-Wagner L2 attack (minimum-norm), with an optional eps budget.

Source: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
(arXiv:1608.04644). Change of variables x' = (tanh(w) + 1) / 2 keeps images in [0, 1]; Adam minimizes
||x' - x||_2^2 + c * max(Z_y - max_{j != y} Z_j, -kappa). Optionally ``binary_search_steps`` > 1
adapts c per sample (x10 until a first success, then bisection). For each sample the smallest-L2
misclassified iterate is kept; samples never misclassified get their last iterate.
Norm: L2. Defaults (those of torchattacks.CW): c=1.0, kappa=0.0, steps=50, lr=0.01,
binary_search_steps=1; eps=None.

How eps is handled: CW is a minimum-norm attack, so by itself it has no budget. With ``eps=None`` the
result is the unbounded minimum-norm adversarial (use the per-sample L2 norms it produces). With a
number, every perturbation larger than eps is projected back onto the L2 ball of radius eps (and into
[0, 1]) by the base class, so the budget always holds; a projected sample may then no longer be
misclassified, which the recomputed robust accuracy reflects.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GradientAttack, register_attack


@register_attack("cw")
class CW(GradientAttack):
    norms = ("L2",)
    eps_required = False

    def __init__(self, eps: float | None = None, norm: str = "L2", c: float = 1.0, kappa: float = 0.0,
                 steps: int = 50, lr: float = 0.01, binary_search_steps: int = 1, space: str = "pixel",
                 clip: bool = True,
                 labels: str = "true", seed: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._record(c=self._positive_float("c", c), kappa=self._positive_float("kappa", kappa, allow_zero=True),
                     steps=self._positive_int("steps", steps), lr=self._positive_float("lr", lr),
                     binary_search_steps=self._positive_int("binary_search_steps", binary_search_steps))

    def _margin(self, logits, y):
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return true - other

    def perturb(self, model, x, y):
        if not self.box.bounded:
            raise ValueError("attack 'cw' maps images through tanh onto the valid box and needs clip=True; "
                             "'cw-cleverhans' takes an explicit clip_min/clip_max instead")
        shape = (-1, *([1] * (x.dim() - 1)))
        box_lo, box_hi = self.box.lo, self.box.hi
        w0 = torch.atanh(((x - box_lo) / (box_hi - box_lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        c = torch.full((x.shape[0],), self.c, device=x.device, dtype=x.dtype)
        lo = torch.zeros_like(c)
        hi = torch.full_like(c, float("inf"))
        best_l2 = torch.full_like(c, float("inf"))
        best = x.clone()
        last = x.clone()
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            success = torch.zeros_like(c, dtype=torch.bool)
            for _ in range(self.steps):
                with torch.enable_grad():
                    adv = (torch.tanh(w) + 1) / 2 * (box_hi - box_lo) + box_lo
                    l2sq = (adv - x).flatten(1).pow(2).sum(1)
                    logits = model(adv)
                    f = (self._margin(logits.float(), y)).clamp_min(-self.kappa)
                    cost = (l2sq + c * f).sum()
                    (w.grad,) = torch.autograd.grad(cost, w)
                opt.step()
                with torch.no_grad():
                    fooled = logits.argmax(1) != y
                    l2 = l2sq.detach().sqrt()
                    improve = fooled & (l2 < best_l2)
                    best = torch.where(improve.reshape(shape), adv.detach(), best)
                    best_l2 = torch.where(improve, l2, best_l2)
                    success |= fooled
                    last = adv.detach()
            # per-sample update of c (C&W's search): bisect after a success, grow x10 until one
            hi = torch.where(success, torch.minimum(hi, c), hi)
            lo = torch.where(success, lo, torch.maximum(lo, c))
            c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
        return torch.where(torch.isfinite(best_l2).reshape(shape), best, last)

