"""Per-sample outcomes of an attack, recomputed from the adversarial images it returns.

Robust accuracy never comes from an attack's own bookkeeping: ``attack_outcomes`` runs the attack,
checks the returned images against the threat model (``BudgetError`` if they leave [0, 1] when the
attack clips, or its eps ball, in the attack's ``space``, with a 1e-5 tolerance), and classifies clean
and adversarial images again with the model in eval mode.

Two accuracy definitions are kept for every sample:
* robust (``adv_correct1/5``): correct clean AND correct under attack (RobustBench's);
* plain adversarial (``plain_correct1/5``): ``model(x_adv)`` against the true label, whatever the clean
  prediction (the RPC paper's: its ``engine.evaluate`` scores top-1/top-5 of the attacked batch).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

import contextlib

from .base import ModelOutputError, check_logits, eval_mode, model_device, normalization_of
from .budget import BUDGET_TOL, budget_violations, perturbation_norms


class BudgetError(RuntimeError):
    """An attack returned images outside [0, 1] or beyond its eps budget."""


class NonFiniteLogitsError(ModelOutputError):
    """The model returned NaN or inf logits: accuracy on them would be meaningless, never a silent 0."""

    def __init__(self, count: int, total: int, where: str = "", model: str = "the model"):
        self.count, self.total, self.where, self.model = int(count), int(total), where, model
        super().__init__(f"{model} returned non-finite logits (NaN or inf) for {self.count} of {self.total} "
                         f"samples{' ' + where if where else ''}")


def check_finite(logits: torch.Tensor, where: str = "") -> None:
    """``NonFiniteLogitsError`` (with the count of samples) if any row of ``logits`` is not finite."""
    bad = int((~torch.isfinite(logits)).any(dim=1).sum()) if logits.numel() else 0
    if bad:
        raise NonFiniteLogitsError(bad, logits.shape[0], where)


@dataclass
class AttackOutcomes:
    """Per-sample tensors (CPU), all of length B."""

    clean_pred: torch.Tensor
    clean_correct1: torch.Tensor
    clean_correct5: torch.Tensor
    adv_pred: torch.Tensor
    adv_correct1: torch.Tensor
    adv_correct5: torch.Tensor
    plain_correct1: torch.Tensor
    plain_correct5: torch.Tensor
    adv_confidence: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    l1: torch.Tensor

    def __len__(self) -> int:
        return int(self.clean_pred.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct1.float().mean()) if len(self) else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return float(self.adv_correct1.float().mean()) if len(self) else float("nan")

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def worst_case(corrects: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample AND over several attacks' correctness tensors (robust to all of them)."""
    if not corrects:
        raise ValueError("worst_case needs at least one per-sample correctness tensor")
    shape = corrects[0].shape
    out = torch.ones(shape, dtype=torch.bool, device=corrects[0].device)
    for c in corrects:
        if c.shape != shape:
            raise ValueError(f"worst_case: shapes differ ({tuple(c.shape)} vs {tuple(shape)})")
        out = out & c.to(out.device).bool()
    return out


def _in_topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int | None, amp: torch.dtype | None = None,
            what: str = "") -> torch.Tensor:
    size = batch_size or max(len(x), 1)
    outs = []
    cast = torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    for s in range(0, len(x), size):
        with cast:
            out = model(x[s:s + size])
        check_logits(out, len(x[s:s + size]))
        outs.append(out.float())
    logits = torch.cat(outs)
    check_finite(logits, what)
    return logits


def attack_outcomes(model: nn.Module, attack, images: torch.Tensor, labels: torch.Tensor, *, topk: int = 5,
                    eps: float | None = None, norm: str | None = None, tol: float = BUDGET_TOL,
                    amp: torch.dtype | None = None) -> AttackOutcomes:
    """Run ``attack(model, images, labels)`` and recompute the per-sample outcomes from its output.

    The budget checked is ``eps`` / ``norm`` when given, else the attack's own ``eps`` / ``norm``
    attributes (an attack with ``eps=None``, e.g. unbounded CW, is only checked for [0, 1]), in the
    attack's ``space`` (normalized units divide by the model's std); [0, 1] is checked when the attack
    clips. Per-sample norms are in the same units. NaN/inf logits raise ``NonFiniteLogitsError`` with the
    number of samples affected. ``amp``: autocast dtype of the two classification
    passes (the paper classifies under fp16 autocast; attacks choose their own precision).
    """
    eps = getattr(attack, "eps", None) if eps is None else float(eps)
    norm = getattr(attack, "norm", None) if norm is None else norm
    clip = bool(getattr(attack, "clip", True))
    labels = torch.as_tensor(labels)
    std = normalization_of(model)[1] if getattr(attack, "space", "pixel") == "normalized" else None
    x_adv = attack(model, images, labels)
    if not isinstance(x_adv, torch.Tensor):
        raise BudgetError(f"attack {getattr(attack, 'name', attack)!r} returned {type(x_adv).__name__}, "
                          "expected a tensor of adversarial images")
    x = images.detach().to(x_adv.device, x_adv.dtype)
    problems = budget_violations(x, x_adv.detach(), eps, norm, tol, clip=clip, std=std)
    if problems:
        raise BudgetError(f"attack {getattr(attack, 'name', attack)!r} broke its threat model "
                          f"(eps={eps}, norm={norm}, space={getattr(attack, 'space', 'pixel')}): "
                          + "; ".join(problems))
    device = model_device(model, x.device)
    batch_size = getattr(attack, "batch_size", None)
    with eval_mode(model):
        clean = _logits(model, x.to(device), batch_size, amp, "on the clean images")
        adv = _logits(model, x_adv.detach().to(device), batch_size, amp,
                      f"on the adversarial images of {getattr(attack, 'name', 'the attack')}")
    y = labels.to(device).long()
    clean_c1 = clean.argmax(1) == y
    clean_c5 = _in_topk(clean, y, topk)
    plain_c1 = adv.argmax(1) == y
    plain_c5 = _in_topk(adv, y, topk)
    xa, xc = x_adv.detach().to(device), x.to(device)
    out = AttackOutcomes(
        clean_pred=clean.argmax(1),
        clean_correct1=clean_c1,
        clean_correct5=clean_c5,
        adv_pred=adv.argmax(1),
        adv_correct1=clean_c1 & plain_c1,
        adv_correct5=clean_c5 & plain_c5,
        plain_correct1=plain_c1,
        plain_correct5=plain_c5,
        adv_confidence=adv.softmax(dim=1).amax(dim=1),
        linf=perturbation_norms(xc, xa, "Linf", std).float(),
        l2=perturbation_norms(xc, xa, "L2", std).float(),
        l1=perturbation_norms(xc, xa, "L1", std).float(),
    )
    return AttackOutcomes(**{k: v.detach().cpu() for k, v in out.as_dict().items()})
