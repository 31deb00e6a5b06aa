"""Per-sample outcomes of an attack, recomputed from the adversarial images it returns.

Robust accuracy never comes from an attack's own bookkeeping: ``attack_outcomes`` runs the attack,
checks the returned images against the threat model (``BudgetError`` if they leave [0, 1] when the
attack clips, or its eps ball, measured in the attack's ``space`` with a derived float rounding bound,
``budget.measure_budget``; ``NonFiniteAdversarialError`` for NaN/inf images), and classifies clean and
adversarial images again with the model in eval mode.

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
from .budget import BudgetReport, measure_budget, perturbation_norms
from .patches import patch_problems


class BudgetError(RuntimeError):
    """An attack's output breaks its threat model: beyond its eps budget, outside [0, 1] although it
    clips, NaN/inf, or not a tensor of the images' shape. One line naming the attack and what it broke;
    the fields say it for programs: ``attack`` (name), ``eps``, ``norm``, ``units`` ("pixel" |
    "normalized"), ``total`` (samples checked), ``count`` (samples that broke it), ``worst`` (largest
    measured norm), ``excess`` (worst - eps), ``tolerance`` (rounding bound allowed), ``problems`` (the
    parts of the message). Fields that do not apply are None / 0."""

    def __init__(self, attack: str, problems: list[str], *, report: BudgetReport | None = None):
        self.attack, self.problems = attack, list(problems)
        r = report
        self.eps, self.norm = (r.eps, r.norm) if r else (None, None)
        self.units = r.units if r else None
        self.total = r.total if r else 0
        over = r is not None and r.over_budget > 0
        self.count = r.broken if r else 0
        self.worst = r.worst if over else None
        self.excess = r.worst_excess if over else None
        self.tolerance = float(r.tolerance[r.over].max()) if over else None
        budget = f" (eps {r.eps:.6g}, norm {r.norm}, {r.units} units)" if r and r.eps is not None else ""
        super().__init__(f"attack '{attack}'{budget} broke its threat model: " + "; ".join(self.problems))


class NonFiniteAdversarialError(BudgetError):
    """The attack returned NaN or inf adversarial images (``count`` of ``total`` samples)."""


def attack_name(attack) -> str:
    return str(getattr(attack, "name", None) or getattr(attack, "__name__", None) or type(attack).__name__)


def check_threat_model(model: nn.Module, attack, images: torch.Tensor, x_adv, eps: float | None,
                       norm: str | None, tol: float = 0.0) -> None:
    """Raise ``BudgetError`` (``NonFiniteAdversarialError`` for NaN/inf) unless ``x_adv`` is a tensor of
    the images' shape within the attack's threat model, measured in its ``space`` on its device."""
    name = attack_name(attack)
    if not isinstance(x_adv, torch.Tensor):
        raise BudgetError(name, [f"returned {type(x_adv).__name__}, expected a tensor of adversarial images"])
    if x_adv.shape != images.shape:
        raise BudgetError(name, [f"returned shape {tuple(x_adv.shape)}, expected {tuple(images.shape)}"])
    mean = std = None
    if getattr(attack, "space", "pixel") == "normalized":
        mean, std = normalization_of(model)
    device = model_device(model, x_adv.device)
    x_adv = x_adv.detach().to(device)
    report = measure_budget(images.detach().to(device, x_adv.dtype), x_adv, eps, norm,
                            clip=bool(getattr(attack, "clip", True)), mean=mean, std=std, extra_tol=tol)
    if report.nonfinite:
        raise NonFiniteAdversarialError(name, report.problems()[:1], report=report)
    if not report.ok:
        raise BudgetError(name, report.problems(), report=report)
    patch_budget = getattr(attack, "patch_budget", None)  # patch attacks: only their patches may change
    if patch_budget is not None:
        tol = 0.0 if std is None else 16 * torch.finfo(torch.float32).eps  # the normalized round trip's rounding
        problems = patch_problems(images.detach().to(device, x_adv.dtype), x_adv, patch_budget, tol)
        if problems:
            raise BudgetError(name, problems)


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
    l0: torch.Tensor  # changed values, every channel value counted (foolbox's l0), as a float

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


def _worst_draw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                amp: torch.dtype | None, topk: int, repeats: int, what: str):
    """(logits, top-1 correct, top-k correct) over ``repeats`` classifications of ``x``: correct only if
    correct in every draw; the logits of each sample's first wrong draw (else of the first draw)."""
    logits = _logits(model, x, batch_size, amp, what)
    c1, ck = logits.argmax(1) == y, _in_topk(logits, y, topk)
    for _ in range(repeats - 1):
        again = _logits(model, x, batch_size, amp, what)
        a1 = again.argmax(1) == y
        logits = torch.where((c1 & ~a1)[:, None], again, logits)  # the first draw that is wrong is kept
        c1, ck = c1 & a1, ck & _in_topk(again, y, topk)
    return logits, c1, ck


def attack_outcomes(model: nn.Module, attack, images: torch.Tensor, labels: torch.Tensor, *, topk: int = 5,
                    eps: float | None = None, norm: str | None = None, tol: float = 0.0,
                    amp: torch.dtype | None = None, repeats: int = 1) -> AttackOutcomes:
    """Run ``attack(model, images, labels)`` and recompute the per-sample outcomes from its output.

    The budget checked is ``eps`` / ``norm`` when given, else the attack's own ``eps`` / ``norm``
    attributes (an attack with ``eps=None``, e.g. unbounded CW, is only checked for [0, 1]), in the
    attack's ``space`` (normalized units: around the clean image as the attack converts it), allowing the
    derived float rounding bound plus ``tol``; [0, 1] is checked when the attack clips
    (``check_threat_model``: ``BudgetError``, ``NonFiniteAdversarialError`` for NaN/inf images). Per-sample
    norms are in the same units. NaN/inf logits raise ``NonFiniteLogitsError`` with the
    number of samples affected. ``amp``: autocast dtype of the two classification
    passes (the paper classifies under fp16 autocast; attacks choose their own precision). ``l0`` counts the
    changed values of the flattened perturbation, each channel value separately (foolbox's ``LpDistance(0)``).

    ``repeats`` (stochastic models): the clean and the adversarial images are classified ``repeats`` times and
    each sample keeps its worst case: correct (top-1 / top-5) only if correct in every draw, its prediction
    and confidence from the first draw that got it wrong. One draw would let a lucky draw count as robust
    (auto-attack PRs #104/#105, which average the draws instead; the worst case is the stricter reading).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    eps = getattr(attack, "eps", None) if eps is None else float(eps)
    norm = getattr(attack, "norm", None) if norm is None else norm
    labels = torch.as_tensor(labels)
    mean, std = normalization_of(model) if getattr(attack, "space", "pixel") == "normalized" else (None, None)
    x_adv = attack(model, images, labels)
    check_threat_model(model, attack, images, x_adv, eps, norm, tol)
    x = images.detach().to(x_adv.device, x_adv.dtype)
    device = model_device(model, x.device)
    batch_size = getattr(attack, "batch_size", None)
    y = labels.to(device).long()
    what = f"on the adversarial images of {getattr(attack, 'name', 'the attack')}"
    with eval_mode(model):
        clean, clean_c1, clean_c5 = _worst_draw(model, x.to(device), y, batch_size, amp, topk, repeats,
                                                "on the clean images")
        adv, plain_c1, plain_c5 = _worst_draw(model, x_adv.detach().to(device), y, batch_size, amp, topk, repeats,
                                              what)
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
        **{k.lower(): v.float() for k, v in perturbation_norms(xc, xa, ("Linf", "L2", "L1", "L0"), mean,
                                                               std).items()},
    )
    return AttackOutcomes(**{k: v.detach().cpu() for k, v in out.as_dict().items()})
