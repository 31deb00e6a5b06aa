"""DDN: Decoupled Direction and Norm, a minimum-L2-norm attack.

Source: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger, "Decoupling Direction and Norm for Efficient
Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019 (arXiv:1811.09600), Algorithm 1; checked side
by side with foolbox 3.3.4's ``DDNAttack`` (tests/test_min_norm_foolbox.py).

Each step moves along the L2-normalized gradient of the cross-entropy (a zero gradient is replaced by a
Gaussian direction, as foolbox does, so a stuck sample still moves), then rescales the perturbation onto the
sphere of radius eps_k: eps_k shrinks by (1 - gamma) after an adversarial iterate and grows by (1 + gamma)
after a non-adversarial one, capped by the largest norm the box allows. The step size follows cosine
annealing from 1 to 0.01. The smallest adversarial iterate seen is kept per sample.
Norm: L2. Defaults (foolbox's, the paper's): steps=100, init_epsilon=1.0, gamma=0.05. The paper's optional
quantization of the iterate to 256 levels is not applied (foolbox does not either).

eps: None (default) returns each sample's minimum-norm adversarial (a sample never broken comes back
unchanged); with a number, a sample whose smallest adversarial is larger than eps also comes back unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GradientAttack, register_attack
from .fmn import cosine, l2_normalized, norms_of


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("ddn")
class DDN(GradientAttack):
    norms = ("L2",)
    eps_required = False
    minimum_norm = True  # its stored rows hold each sample's minimal norm (none for a sample it never broke)

    def __init__(self, eps: float | None = None, norm: str = "L2", steps: int = 100, init_epsilon: float = 1.0,
                 gamma: float = 0.05, space: str = "pixel", clip: bool = True, labels: str = "true",
                 seed: int | None = None, batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        gamma = self._positive_float("gamma", gamma)
        if gamma >= 1:
            raise ValueError(f"gamma of attack 'ddn' must be in (0, 1), got {gamma!r}")
        self._record(steps=self._positive_int("steps", steps),
                     init_epsilon=self._positive_float("init_epsilon", init_epsilon), gamma=gamma)

    def _ce_grad(self, model, x_adv, y):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            loss = F.cross_entropy(logits.float(), y, reduction="none").sum()
            grad = torch.autograd.grad(loss, x_adv, allow_unused=True)[0] if loss.requires_grad else None
        grad = torch.zeros_like(x_adv) if grad is None else grad.detach()
        zero = norms_of(grad, "L2") == 0
        grad = torch.where(_bcast(zero, grad), torch.randn_like(grad), grad)
        return logits.detach(), l2_normalized(grad)

    def perturb(self, model, x, y):
        n = x.shape[0]
        delta = torch.zeros_like(x)
        if self.box.bounded:
            lo, hi = self.box.lo, self.box.hi
            lo = lo.to(x.dtype) if isinstance(lo, torch.Tensor) else lo
            hi = hi.to(x.dtype) if isinstance(hi, torch.Tensor) else hi
            worst = norms_of(torch.maximum(x - lo, hi - x), "L2")
        else:
            worst = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        eps_k = torch.full((n,), self.init_epsilon, device=x.device, dtype=x.dtype)
        best_norm, best_delta = worst.clone(), delta.clone()
        adv_found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            alpha = cosine(i, self.steps, 1.0, 0.01)
            logits, step = self._ce_grad(model, x + delta, y)
            is_adv = logits.argmax(dim=1) != y
            delta_norm = norms_of(delta, "L2")
            better = is_adv & (delta_norm <= best_norm)
            adv_found |= is_adv
            best_norm = torch.where(better, delta_norm, best_norm)
            best_delta = torch.where(_bcast(better, x), delta, best_delta)
            delta = delta + step * alpha
            eps_k = torch.minimum(torch.where(is_adv, eps_k * (1 - self.gamma), eps_k * (1 + self.gamma)), worst)
            delta = delta * _bcast(eps_k / norms_of(delta, "L2").clamp_min(1e-12), delta)
            delta = self.box.clamp(x + delta) - x
        keep = adv_found if self.eps is None else adv_found & (best_norm <= self.eps)
        return torch.where(_bcast(keep, x), x + best_delta, x)
