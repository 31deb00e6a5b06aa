"""SPSA: a gradient-free attack with simultaneous-perturbation gradient estimates.

Source: Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and the Dangers of Evaluating
Against Weak Attacks", ICML 2018 (arXiv:1802.05666); estimator of Spall (1992).
Norm: Linf. Each step estimates the gradient of the margin loss (best other logit - true logit) from
``n_samples`` Rademacher directions v with antithetic queries at x +- delta*v, takes an Adam step
(learning rate ``lr``) on the perturbation and projects it back into the eps box and the valid box.
Only forward passes are used (under no_grad). With ``early_stop`` (default) a sample's first
misclassified iterate is kept; without it the last iterate is returned, as cleverhans does.
Defaults: steps=20, n_samples=64, delta=0.01, lr=0.01, random_start=True (uniform in the box, as in the
cleverhans reference), early_stop=True, estimate_at="iterate", query_batch_size=1024 (images per
forward pass while estimating; bounds memory).

``estimate_at="cleverhans"`` reproduces cleverhans' PyTorch ``spsa`` (v4.0.0, which the RPC paper's
``Attack/engine.py`` calls): its ``_compute_spsa_gradient(loss_fn, x, ...)`` passes the *image* where
``loss_fn`` expects a perturbation, so every estimate is taken at ``2 x + delta v`` whatever the current
iterate. That is a bug of the reference, kept only so the ``paper`` preset reproduces the paper's rows.
"""
from __future__ import annotations

import torch

from .base import Attack, per_sample_loss, register_attack


@register_attack("spsa")
class SPSA(Attack):
    gradient_based = False
    norms = ("Linf",)

    def __init__(self, eps: float | None = None, norm: str = "Linf", steps: int = 20, n_samples: int = 64,
                 delta: float = 0.01, lr: float = 0.01, random_start: bool = True, early_stop: bool = True,
                 estimate_at: str = "iterate", query_batch_size: int = 1024, space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._record(steps=self._positive_int("steps", steps, minimum=0),
                     n_samples=self._positive_int("n_samples", n_samples),
                     delta=self._positive_float("delta", delta), lr=self._positive_float("lr", lr),
                     random_start=bool(random_start), early_stop=bool(early_stop), estimate_at=estimate_at,
                     query_batch_size=self._positive_int("query_batch_size", query_batch_size))
        if estimate_at not in ("iterate", "cleverhans"):
            raise ValueError(f"estimate_at of attack 'spsa' must be 'iterate' or 'cleverhans', got {estimate_at!r}")

    def _estimate(self, model, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of (L(adv + d v) - L(adv - d v)) / (2 d) * v over n_samples Rademacher directions v,
        evaluated in groups so that at most ``query_batch_size`` images go through the model at once."""
        b = adv.shape[0]
        group = max(1, self.query_batch_size // (2 * b))
        total = torch.zeros_like(adv)
        view = (b, -1, *([1] * (adv.dim() - 1)))
        for start in range(0, self.n_samples, group):
            k = min(group, self.n_samples - start)
            v = torch.randint(0, 2, (b, k, *adv.shape[1:]), device=adv.device).to(adv.dtype) * 2 - 1
            base = adv.unsqueeze(1)
            both = torch.cat([self.box.clamp(base + self.delta * v).flatten(0, 1),
                              self.box.clamp(base - self.delta * v).flatten(0, 1)])
            yy = y.repeat_interleave(k)
            losses = per_sample_loss(model(both), torch.cat([yy, yy]), "margin")
            diff = (losses[: b * k] - losses[b * k:]).reshape(view)
            total += (diff * v).sum(dim=1)
        return total / (self.n_samples * 2 * self.delta)

    @torch.no_grad()
    def perturb(self, model, x, y):
        if self.random_start:
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            delta = torch.zeros_like(x)
        delta = (self.box.clamp(x + delta) - x).requires_grad_(False)
        opt_var = torch.nn.Parameter(delta)
        opt = torch.optim.Adam([opt_var], lr=self.lr)
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        shape = (-1, *([1] * (x.dim() - 1)))
        for _ in range(self.steps):
            adv = x + opt_var.data
            if self.early_stop:
                fooled = model(adv).argmax(dim=1) != y
                best = torch.where((fooled & ~done).reshape(shape), adv, best)
                done = done | fooled
            at = 2 * x if self.estimate_at == "cleverhans" else adv
            # Adam *minimizes*: descend on the negated margin loss to increase it.
            opt_var.grad = -self._estimate(model, at, y)
            opt.step()
            opt_var.data = self.box.clamp(x + opt_var.data.clamp(-self.eps, self.eps)) - x
        return torch.where(done.reshape(shape), best, x + opt_var.data)
