"""PGD: projected gradient descent (ascent on the loss) with random restarts.

Source: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (arXiv:1706.06083).
Norms: Linf (signed-gradient steps, clipping to the eps box) and L2 (normalized-gradient steps,
rescaling to the eps ball). Defaults: steps=10, alpha=2.5*eps/steps, random_start=True, restarts=1,
loss="ce" (batch-mean cross-entropy, as torchattacks), amp_dtype=None.

Random start: uniform in the Linf box / uniform radius along a Gaussian direction in the L2 ball.
With restarts > 1 the per-sample best over restarts is kept: a misclassified iterate beats a correct
one, ties are broken by the higher per-sample loss. The step loop has no host synchronization.

``early_stop=True`` (what robust-accuracy evaluations use): samples misclassified on the clean image are
not attacked, and a sample stops being attacked at the first iterate that is misclassified, which is kept
(as AutoAttack's APGD does). Robust accuracy is then never higher than the plain loop's on the same
images, and each step only costs the samples still standing (one host sync per step to know them).
``early_stop=False`` (default; the paper protocol) returns every sample's last iterate.
"""
from __future__ import annotations

import torch

from .base import GradientAttack, amp_dtype_of, per_sample_loss, register_attack
from .budget import lp_norms


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def random_start(x: torch.Tensor, eps: float, norm: str, box) -> torch.Tensor:
    """PGD's random start (Madry et al.): uniform in the Linf ball, or a random direction at a uniform radius
    in the L2 ball; clamped to the threat model's box. Shared by the classification and segmentation PGDs."""
    if norm == "Linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        direction = torch.randn_like(x)
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * eps
        delta = direction * _bcast(radius / lp_norms(direction, "L2").clamp_min(1e-12), x)
    return box.clamp(x + delta)


def projected_step(x: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float, norm: str,
                   box) -> torch.Tensor:
    """One PGD ascent step from ``adv`` along ``grad`` (its sign for Linf, its L2 direction for L2), projected
    onto the eps ball around ``x`` and the threat model's box. Shared by the classification and segmentation
    PGDs."""
    if norm == "Linf":
        adv = adv + alpha * grad.sign()
        delta = torch.clamp(adv - x, -eps, eps)
    else:
        adv = adv + alpha * grad / _bcast(lp_norms(grad, "L2") + 1e-10, x)
        delta = adv - x
        delta = delta * _bcast(torch.clamp(eps / lp_norms(delta, "L2").clamp_min(1e-12), max=1.0), x)
    return box.clamp(x + delta)


@register_attack("pgd")
class PGD(GradientAttack):
    norms = ("Linf", "L2")

    def __init__(self, eps: float | None = None, norm: str = "Linf", steps: int = 10,
                 alpha: float | None = None, random_start: bool = True, restarts: int = 1,
                 early_stop: bool = False,
                 loss: str = "ce", amp_dtype=None, space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        steps = self._positive_int("steps", steps, minimum=0)
        restarts = self._positive_int("restarts", restarts)
        if alpha is None:
            alpha = 2.5 * self.eps / max(steps, 1)
        else:
            alpha = self._positive_float("alpha", alpha, allow_zero=True)
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss of attack 'pgd' must be 'ce' or 'margin', got {loss!r}")
        self._record(steps=steps, alpha=alpha, random_start=bool(random_start), restarts=restarts, loss=loss,
                     early_stop=bool(early_stop))
        self.amp_dtype = amp_dtype_of(amp_dtype)
        self.params["amp_dtype"] = None if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1]

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        return random_start(x, self.eps, self.norm, self.box) if self.random_start else x.clone()

    def _step(self, x: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return projected_step(x, adv, grad, self.alpha, self.eps, self.norm, self.box)

    def _run(self, model, x, y) -> torch.Tensor:
        adv = self._start(x)
        if self.early_stop:
            return self._run_early_stop(model, x, y, adv)
        for _ in range(self.steps):
            adv = self._step(x, adv, self.input_grad(model, adv, y, self.loss))
        return adv

    def _run_early_stop(self, model, x, y, adv) -> torch.Tensor:
        with torch.no_grad(), self.autocast(x.device):
            standing = model(x).argmax(dim=1) == y  # clean-misclassified samples are already lost
        adv = torch.where(_bcast(standing, x), adv, x)
        idx = standing.nonzero().squeeze(1)
        for _ in range(self.steps):
            if idx.numel() == 0:
                break
            grad, logits = self.input_grad(model, adv[idx], y[idx], self.loss, return_logits=True)
            alive = logits.argmax(dim=1) == y[idx]  # a misclassified iterate is kept as it is
            idx, grad = idx[alive], grad[alive]
            adv[idx] = self._step(x[idx], adv[idx], grad)
        return adv

    @torch.no_grad()
    def _score(self, model, adv, y):
        with self.autocast(adv.device):
            logits = model(adv)
        return logits.argmax(dim=1) != y, per_sample_loss(logits, y, self.loss)

    def perturb(self, model, x, y):
        best = self._run(model, x, y)
        if self.restarts == 1:
            return best
        best_fooled, best_loss = self._score(model, best, y)
        for _ in range(self.restarts - 1):
            adv = self._run(model, x, y)
            fooled, loss = self._score(model, adv, y)
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(_bcast(better, x), adv, best)
            best_fooled = best_fooled | fooled
            best_loss = torch.where(better, loss, best_loss)
        return best
