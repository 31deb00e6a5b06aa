"""CW-L2 as cleverhans runs it: the RPC paper's CW row, reproduced step for step.

Source: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
(arXiv:1608.04644), in the form of cleverhans' PyTorch ``carlini_wagner_l2`` (v4.0.0), which the RPC
paper's ``Attack/engine.py`` calls as ``carlini_wagner_l2(model, images, 1000, confidence=eps)`` on
*normalized* images (so ``n_classes=1000`` and every other argument at its default).

What that function does, and so what this file does (it differs from ``cw`` in each point):

* the input is first clamped into ``[clip_min, clip_max]`` (default [0, 1] *in the attack's working
  units*: with ``space="normalized"`` that discards every negative normalized value, as the paper's run
  does), and L2 distances are measured from that clamped input;
* tanh change of variables over that box: ``x' = (tanh(w + atanh((2 t - 1) * 0.999999)) + 1) / 2``,
  rescaled to the box, ``w`` starting at 0;
* one Adam optimizer (``lr``) for the whole run: neither ``w`` nor the optimizer state is reset between
  the ``binary_search_steps`` outer steps;
* loss ``(const * f + l2).sum()`` with ``f = max(Z_y - max_{j != y} Z_j + confidence, 0)`` and
  ``l2 = ||x' - x||^2`` of shape (B,) but ``const`` of shape (B, 1): the sum broadcasts to (B, B) and
  equals ``sum(const) * sum(f) + B * sum(l2)`` (computed here as it is, in that (B, B) form, so the
  gradients agree with cleverhans' to the bit), so every sample is attacked with the batch's *mean*
  constant (and the result depends on which images share a batch: the paper's batches hold 72);
* a step counts as a success when the argmax of the logits, with ``confidence`` added to the label's
  logit, is not the label; the smallest-L2 success is kept;
* per-sample search on ``c`` from ``initial_const`` *with cleverhans' aliasing bug*: its bounds are
  Python lists, and ``upper_bound[n] = min(upper_bound[n], const[n])`` (its line 179) and
  ``lower_bound[n] = max(lower_bound[n], const[n])`` (line 185) store the tensor view ``const[n]``, not its
  value, whenever ``const[n]`` is the smaller (larger) one, which it is at a sample's first success
  (failure). From then on that bound *is* ``const[n]`` and follows every in-place write to it. So a sample
  halves ``c`` while it only succeeds and multiplies it by 10 while it only fails, but once it has had
  both a success and a failure, ``(lower + upper) / 2`` is ``(c + c) / 2`` and its constant freezes.
  Verified against cleverhans 4.0.0 (tests/test_cw_cleverhans.py); the intended bisection is ``cw``'s.
  The paper's CW rows ran this search too (where no sample's search changes direction, both agree);
* a sample never fooled gets the clamped input back.

Norm: L2, unbounded (``eps=None``): the result is what cleverhans returns. Defaults are cleverhans':
confidence=0, lr=5e-3, initial_const=1e-2, binary_search_steps=5, max_iterations=1000,
clip_min=0, clip_max=1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GradientAttack, register_attack


@register_attack("cw-cleverhans")
class CWCleverhans(GradientAttack):
    norms = ("L2",)
    eps_required = False

    def __init__(self, eps: float | None = None, norm: str = "L2", confidence: float = 0.0, lr: float = 5e-3,
                 initial_const: float = 1e-2, binary_search_steps: int = 5, max_iterations: int = 1000,
                 clip_min: float = 0.0, clip_max: float = 1.0, space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        if not clip_min < clip_max:
            raise ValueError(f"attack 'cw-cleverhans' needs clip_min < clip_max, got {clip_min}, {clip_max}")
        self._record(confidence=self._positive_float("confidence", confidence, allow_zero=True),
                     lr=self._positive_float("lr", lr), initial_const=self._positive_float("initial_const",
                                                                                         initial_const),
                     binary_search_steps=self._positive_int("binary_search_steps", binary_search_steps),
                     max_iterations=self._positive_int("max_iterations", max_iterations),
                     clip_min=float(clip_min), clip_max=float(clip_max))

    def perturb(self, model, x, y):
        lo, hi, kappa = self.clip_min, self.clip_max, self.confidence
        n = x.shape[0]
        shape = (-1, *([1] * (x.dim() - 1)))
        ox = x.clamp(lo, hi)
        best_attack = ox.clone()
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)  # x.new_ones(n, 1) * c
        upper_is_const = torch.zeros(n, dtype=torch.bool, device=x.device)  # cleverhans' aliased bounds
        lower_is_const = torch.zeros_like(upper_is_const)
        t = torch.atanh((((ox - lo) / (hi - lo)).clamp(0, 1) * 2 - 1) * 0.999999)
        modifier = torch.zeros_like(t, requires_grad=True)
        opt = torch.optim.Adam([modifier], lr=self.lr)
        rows = torch.arange(n, device=x.device)
        onehot = None
        for _ in range(self.binary_search_steps):
            step_l2 = torch.full_like(best_l2, float("inf"))
            step_pred = torch.full((n,), -1, dtype=torch.long, device=x.device)
            for _ in range(self.max_iterations):
                with torch.enable_grad():
                    new_x = (torch.tanh(modifier + t) + 1) / 2 * (hi - lo) + lo
                    logits = model(new_x).float()
                    if onehot is None:
                        onehot = F.one_hot(y, logits.shape[1]).float()
                    real = (onehot * logits).sum(1)
                    other = ((1 - onehot) * logits - onehot * 1e4).amax(1)
                    f = torch.maximum(real - other + kappa, real.new_zeros(()))  # its torch.max(., 0)
                    l2 = (new_x - ox).pow(2).flatten(1).sum(1)
                    opt.zero_grad()
                    (const[:, None] * f + l2).sum().backward()  # cleverhans' (B, 1) * (B,) -> (B, B) broadcast
                opt.step()
                with torch.no_grad():
                    adjusted = logits.detach().clone()
                    adjusted[rows, y] += kappa
                    succeeded = adjusted.argmax(1) != y
                    pred = logits.argmax(1)
                    l2 = l2.detach()
                    overall = succeeded & (l2 < best_l2)
                    best_l2 = torch.where(overall, l2, best_l2)
                    best_attack = torch.where(overall.reshape(shape), new_x.detach(), best_attack)
                    this_step = succeeded & (overall | (l2 < step_l2))
                    step_l2 = torch.where(this_step, l2, step_l2)
                    step_pred = torch.where(this_step, pred, step_pred)
            success = (step_pred != y) & (step_pred != -1)
            const, upper_is_const, lower_is_const = _cleverhans_search_step(success, const, upper_is_const,
                                                                             lower_is_const)
        return best_attack


def _cleverhans_search_step(success: torch.Tensor, const: torch.Tensor, upper_is_const: torch.Tensor,
                            lower_is_const: torch.Tensor):
    """One step of cleverhans 4.0.0's binary search on the constant, its list-of-views aliasing included.

    Its bounds start as the floats 1e10 (upper) and 0.0 (lower). Python's ``min(a, b)`` returns ``b`` only
    when ``b < a`` (``max``: only when ``b > a``), so the bound becomes the view ``const[n]`` at the first
    success with ``const < 1e10`` (first failure with ``const > 0``) and stays that view for good (later
    ``min``/``max`` calls compare equal values and return the view already held). A bound that is a view
    reads the constant's current value. Then, as cleverhans: ``(lower + upper) / 2`` if upper < 1e9,
    else the constant is kept after a success and multiplied by 10 after a failure.
    Returns (const, upper_is_const, lower_is_const).
    """
    upper_is_const = upper_is_const | (success & (const < 1e10))
    lower_is_const = lower_is_const | (~success & (const > 0))
    upper = torch.where(upper_is_const, const, torch.full_like(const, 1e10))
    lower = torch.where(lower_is_const, const, torch.zeros_like(const))
    const = torch.where(upper < 1e9, (lower + upper) / 2, torch.where(success, const, const * 10))
    return const, upper_is_const, lower_is_const
