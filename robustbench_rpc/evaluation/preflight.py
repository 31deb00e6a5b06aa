"""Checks on a built model before any evaluation: what its forward returns and whether its input
gradients are finite. Each refuses with one line naming the model and what it saw, before compute, so a
model that returns the wrong thing never produces numbers (AutoAttack's ``checks.py`` runs its flags at the
same point; those are trust checks here, these are refusals)."""
from __future__ import annotations

import torch
from torch import nn

from ..attacks.base import ModelOutputError


def _what(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a {out.dtype} tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    if isinstance(out, dict):
        return f"a dict with keys {', '.join(map(str, list(out)[:5]))}"
    return f"a {type(out).__name__}"


def check_output(model: nn.Module, x: torch.Tensor, num_classes: int, who: str) -> None:
    """``model(x)`` must be floating-point logits of shape (len(x), num_classes), not probabilities."""
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        raise ModelOutputError(f"{who} returned {_what(out)} for a batch of {len(x)} images; robustbench-rpc needs "
                               f"floating-point logits of shape ({len(x)}, classes): return the logits tensor only")
    if out.shape[0] != len(x):
        raise ModelOutputError(f"{who} returned {out.shape[0]} rows for a batch of {len(x)} images")
    if num_classes and out.shape[1] != num_classes:
        raise ModelOutputError(f"{who} returns {out.shape[1]} logits per image but declares {num_classes} classes "
                               f"(and the data has labels 0..{num_classes - 1}): declare num_classes={out.shape[1]} "
                               "or give the model a head of the right width")
    check_not_probabilities(out, who)


def check_not_probabilities(out: torch.Tensor, who: str, atol: float = 1e-5) -> None:
    """Refuse an output whose every row lies in [0, 1] and sums to 1: probabilities, not logits. Every number
    the harness stores is computed from logits (the confidence and OOD scores take their softmax, attacks their
    cross-entropy), so a model returning probabilities would give wrong confidences, OOD scores and calibration
    even in a suite without an attack. Logits of a real model never all look like this."""
    if out.shape[1] < 2 or not out.numel():
        return
    p = out.detach().double()
    lo, hi = float(p.min()), float(p.max())
    dev = float((p.sum(dim=1) - 1).abs().max())
    if lo > -atol and hi < 1 + atol and dev < atol:
        raise ModelOutputError(f"{who} returns probabilities, not logits (every row of its output on the first "
                               f"{out.shape[0]} images lies in [{lo:.3g}, {hi:.3g}] and sums to 1 within {dev:.1e}): "
                               "confidences, OOD scores and attacks are computed from logits; return the "
                               "pre-softmax logits (drop the final softmax)")


def check_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    """The cross-entropy gradient with respect to the images must be finite: with NaN gradients every
    gradient attack silently does nothing and reports the clean accuracy as robust."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(xg).float(), y)
        (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if grad is None:
        return  # no path from the input to the loss: the differentiability trust check reports it
    bad = (~torch.isfinite(grad)).flatten(1).any(1)
    if bad.any():
        raise ModelOutputError(f"{who}: the input gradient of the loss is NaN/inf for {int(bad.sum())} of {len(x)} "
                               "images (first images, before any evaluation), so gradient attacks would silently do "
                               "nothing; fix the model's backward (e.g. a sqrt or log at 0) or evaluate it with "
                               "gradient-free attacks only")
