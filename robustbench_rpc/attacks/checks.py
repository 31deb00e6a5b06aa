"""Trust checks for an adversarial evaluation. Each returns ``CheckResult(name, status, message,
details)`` with status "pass", "warn" or "fail".

* ``check_monotone_in_eps``: robust accuracy must not rise with eps.
* ``check_large_eps``: a very large budget must drive accuracy to ~0 (else gradient masking or a
  broken evaluation; Carlini et al., "On Evaluating Adversarial Robustness", 2019, arXiv:1902.06705).
* ``check_gradient_masking``: black-box attacks must not beat gradient attacks at the same eps
  (Athalye et al. 2018; the AutoAttack Square check).
* ``check_differentiability``: autograd directional derivatives must match finite differences and be
  non-zero (catches input quantization, ``.detach()``, other non-differentiable layers).
* ``check_chance_level``: clean accuracy must be significantly above chance (1/classes, Wilson interval):
  a model at chance (untrained, re-initialised weights, the wrong preprocessing) makes every robustness
  number meaningless, however well the other checks pass.
* ``detect_stochastic`` / ``EOTModel``: see ``stochastic``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from .base import ATTACKS, check_logits, eval_mode, get_attack, model_device
from .budget import lp_norms
from .evaluate import attack_outcomes
from .stochastic import EOTModel, detect_stochastic
from ..metrics import wilson_interval

STATUSES = ("pass", "warn", "fail")
#: what a failed gradient check tells the user to run instead (attacks.adaptive)
ADAPTIVE_HINT = ("evaluate it with the adaptive attacks: 'bpda' (declare a differentiable backward for that layer, "
                 "robustbench_rpc.adaptive_protocol) or 'transfer' (surrogate=MODEL[:CHECKPOINT] or self:no-pap), "
                 "e.g. the 'adaptive' preset")
__all__ = ["CheckResult", "EOTModel", "check_chance_level", "check_differentiability", "check_gradient_masking",
           "check_large_eps",
           "check_monotone_in_eps", "detect_stochastic"]


@dataclass
class CheckResult:
    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "pass"


def _default_tol(tol: float | None, n: int | None) -> float:
    """Sampling-noise tolerance: two samples' worth when n is known, else one percentage point."""
    if tol is not None:
        return float(tol)
    return 2.0 / n if n else 0.01


def check_monotone_in_eps(curve: Mapping[float, float], tol: float | None = None, *, n: int | None = None,
                          name: str = "monotone_in_eps") -> CheckResult:
    """``curve`` maps eps -> accuracy (fraction). Accuracy at a larger eps may not exceed the lowest
    accuracy at any smaller eps by more than ``tol`` (default 2/n, or 0.01 without n)."""
    tol = _default_tol(tol, n)
    points = sorted((float(e), float(a)) for e, a in curve.items())
    violations = []
    best = math.inf
    best_eps = None
    for eps, acc in points:
        if acc > best + tol:
            violations.append({"eps": eps, "accuracy": acc, "lower_at_eps": best_eps, "lower_accuracy": best})
        if acc < best:
            best, best_eps = acc, eps
    details = {"curve": dict(points), "tol": tol, "violations": violations}
    if violations:
        v = violations[0]
        return CheckResult(name, "fail", f"accuracy rises with eps: {v['accuracy']:.4f} at eps={v['eps']:.6g} > "
                           f"{v['lower_accuracy']:.4f} at eps={v['lower_at_eps']:.6g} (tol {tol:.4f}); the attack "
                           "is not converging or the evaluation is broken", details)
    return CheckResult(name, "pass", f"accuracy is non-increasing in eps over {len(points)} budgets", details)


def check_chance_level(correct: int, n: int, num_classes: int, *, confidence: float = 0.95,
                       name: str = "chance_level") -> CheckResult:
    """Clean accuracy ``correct / n`` must be significantly above chance ``1 / num_classes``: the lower end
    of its Wilson interval (at ``confidence``) must exceed chance, else FAIL."""
    correct, n, num_classes = int(correct), int(n), int(num_classes)
    if n < 1 or num_classes < 2:
        return CheckResult(name, "warn", f"cannot compare with chance (n={n}, classes={num_classes})",
                           {"n": n, "num_classes": num_classes})
    chance = 1.0 / num_classes
    lo, hi = wilson_interval(correct, n, confidence)
    acc = correct / n
    details = {"accuracy": acc, "correct": correct, "n": n, "num_classes": num_classes, "chance": chance,
               "ci": [lo, hi], "confidence": confidence}
    ci = f"{confidence:.0%} CI [{lo:.3f}, {hi:.3f}]"
    if lo <= chance:
        return CheckResult(name, "fail", f"clean accuracy {acc:.4f} ({correct}/{n}, {ci}) is not significantly "
                           f"above chance 1/{num_classes} = {chance:.3f}: untrained or re-initialised weights "
                           "(--attention-reinit), or preprocessing that does not fit the model; its robustness "
                           "numbers mean nothing", details)
    return CheckResult(name, "pass", f"clean accuracy {acc:.4f} ({ci}) is above chance {chance:.3f}", details)


def check_large_eps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 0.5,
                    norm: str = "Linf", steps: int = 20, threshold: float = 0.05, attack=None, seed: int = 0,
                    name: str = "large_eps") -> CheckResult:
    """A PGD attack (no random start, so noise alone cannot succeed) with a huge budget must bring
    accuracy to at most ``threshold``; otherwise gradients are likely masked or the evaluation broken."""
    if attack is None:
        attack = get_attack("pgd", eps=eps, norm=norm, steps=steps, alpha=2.5 * eps / steps,
                            random_start=False, seed=seed)
    out = attack_outcomes(model, attack, images, labels)
    acc, clean = out.robust_accuracy, out.clean_accuracy
    details = {"eps": getattr(attack, "eps", eps), "norm": getattr(attack, "norm", norm),
               "attack": getattr(attack, "name", str(attack)), "accuracy": acc, "clean_accuracy": clean,
               "threshold": threshold, "n": len(out)}
    if acc <= threshold:
        return CheckResult(name, "pass", f"accuracy {acc:.4f} at eps={details['eps']:.4g} ({details['norm']})", details)
    return CheckResult(name, "fail", f"accuracy stays at {acc:.4f} (clean {clean:.4f}) under a huge budget "
                       f"eps={details['eps']:.4g} ({details['norm']}); suspect gradient masking or a broken "
                       "evaluation", details)


def check_gradient_masking(results: Mapping[str, Mapping[float, float]], gradient_free: Iterable[str] | None = None,
                           *, norms: Mapping[str, str] | None = None, tol: float | None = None,
                           n: int | None = None, name: str = "gradient_masking") -> CheckResult:
    """``results`` maps attack name -> {eps: accuracy}. If a gradient-free attack reaches a lower
    accuracy than the best gradient-based attack at the same eps (and norm, when ``norms`` is given)
    by more than ``tol``, gradients are likely masked. ``gradient_free`` defaults to the registered
    attacks whose class has ``gradient_based = False``."""
    tol = _default_tol(tol, n)
    if gradient_free is None:
        gradient_free = {a for a in results if a in ATTACKS and not getattr(ATTACKS.get(a), "gradient_based", True)}
    free = set(gradient_free)
    norms = dict(norms or {})
    table: dict[tuple[str | None, float], dict[str, dict[str, float]]] = {}
    for attack, curve in results.items():
        kind = "free" if attack in free else "grad"
        for eps, acc in curve.items():
            key = (norms.get(attack), round(float(eps), 12))
            table.setdefault(key, {"free": {}, "grad": {}})[kind][attack] = float(acc)
    compared, flagged = [], []
    for (norm, eps), group in sorted(table.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if not group["free"] or not group["grad"]:
            continue
        gf_name, gf_acc = min(group["free"].items(), key=lambda kv: kv[1])
        gb_name, gb_acc = min(group["grad"].items(), key=lambda kv: kv[1])
        row = {"eps": eps, "norm": norm, "gradient_free": gf_name, "gradient_free_accuracy": gf_acc,
               "gradient_based": gb_name, "gradient_based_accuracy": gb_acc, "gap": gb_acc - gf_acc}
        compared.append(row)
        if gb_acc - gf_acc > tol:
            flagged.append(row)
    details = {"tol": tol, "compared": compared, "flagged": flagged, "gradient_free": sorted(free)}
    if flagged:
        r = flagged[0]
        return CheckResult(name, "fail", f"gradient-free {r['gradient_free']} "
                           f"({r['gradient_free_accuracy']:.4f}) beats "
                           f"gradient-based {r['gradient_based']} ({r['gradient_based_accuracy']:.4f}) at eps="
                           f"{r['eps']:.6g}: possible gradient masking", details)
    if not compared:
        return CheckResult(name, "warn", "no gradient-free and gradient-based attacks share an eps; nothing compared",
                           details)
    return CheckResult(name, "pass", f"gradient-based attacks are at least as strong at {len(compared)} budgets",
                       details)


def _float64_model(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    try:
        m = copy.deepcopy(model).to(torch.float64)
        with torch.no_grad():
            out = m(x.to(torch.float64))
        return m if isinstance(out, torch.Tensor) and out.dtype == torch.float64 else None
    except Exception:  # a layer that only runs in float32: fall back to float32 with a coarser step
        return None


def _probe_points(images: torch.Tensor, n_samples: int, seed: int, device) -> torch.Tensor:
    """The first images, moved off exact ties: flat image regions (black digit backgrounds, saturated
    skies) make max-pool windows and ReLU inputs tie exactly, where a normal network has a genuine kink and
    finite differences disagree with autograd. A jitter of ~1e-3 breaks the ties; a quantizing or
    detaching layer still has zero gradient at the jittered points, so it is still caught."""
    x = images[:n_samples].detach().to(device)
    gen_x = torch.Generator(device="cpu").manual_seed(seed + 1)
    jitter = (torch.rand(x.shape, generator=gen_x, dtype=torch.float64) * 2 - 1).to(device=device, dtype=x.dtype)
    return 1e-3 + (1 - 2e-3) * x + 1e-3 * jitter


def _derivatives(m: nn.Module, xd: torch.Tensor, y: torch.Tensor, h: float, n_directions: int, seed: int):
    """(margin values, input gradient, autograd directional derivatives, central finite differences) along
    ``n_directions`` random unit directions per sample."""
    def loss(inp: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        out = m(inp)
        check_logits(out, inp.shape[0])
        return _margin(out.to(inp.dtype), yy)

    xg = xd.clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss(xg, y)
        grad = torch.autograd.grad(value.sum(), xg, allow_unused=True)[0] if value.requires_grad else None
    grad = torch.zeros_like(xd) if grad is None else grad.detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, k = xd.shape[0], n_directions
    v = torch.randn((k, *xd.shape), generator=gen, dtype=torch.float64).to(device=xd.device, dtype=xd.dtype)
    v = v / lp_norms(v.flatten(0, 1), "L2").reshape(k, b, *([1] * (xd.dim() - 1)))
    ad = (grad.unsqueeze(0) * v).flatten(2).sum(-1)  # (k, b)
    with torch.no_grad():
        yy = y.repeat(k)
        plus = loss((xd.unsqueeze(0) + h * v).flatten(0, 1), yy).reshape(k, b)
        minus = loss((xd.unsqueeze(0) - h * v).flatten(0, 1), yy).reshape(k, b)
    return value.detach(), grad, ad, (plus - minus) / (2 * h)


def check_differentiability(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, n_samples: int = 8,
                            n_directions: int = 4, rtol: float | None = None, step: float | None = None,
                            dtype: str = "auto", seed: int = 0, name: str = "differentiability") -> CheckResult:
    """Compare autograd directional derivatives of the margin loss (best other logit - true logit,
    which does not saturate like cross-entropy) with central finite differences along random unit
    directions, in float64 when the model allows it.

    Fails if the gradient is zero for at least half of the samples, or if the per-sample median
    relative error exceeds ``rtol`` for at least half of them; warns for a quarter. Stochastic models
    give a warning (wrap them in ``EOTModel``)."""
    if dtype not in ("auto", "float64", "float32"):
        raise ValueError(f"dtype must be 'auto', 'float64' or 'float32', got {dtype!r}")
    device = model_device(model, images.device)
    x = _probe_points(images, n_samples, seed, device)
    y = torch.as_tensor(labels)[:n_samples].to(device).long()
    with eval_mode(model):
        if detect_stochastic(model, x):
            return CheckResult(name, "warn", "the model is stochastic in eval mode; finite differences are "
                               "meaningless: evaluate it through EOTModel", {"stochastic": True})
        m = _float64_model(model, x) if dtype != "float32" else None
        if m is None and dtype == "float64":
            raise ValueError("the model does not run in float64; use dtype='auto' or 'float32'")
        if m is not None:
            m.eval()
            xd, used, h, rtol = x.double(), "float64", 1e-4 if step is None else step, 0.05 if rtol is None else rtol
        else:
            m, xd, used = model, x.float(), "float32"
            h, rtol = 1e-2 if step is None else step, 0.2 if rtol is None else rtol
        value, grad, ad, fd = _derivatives(m, xd, y, h, n_directions, seed)
    gnorm = lp_norms(grad, "L2")
    zero = gnorm <= 1e-12 * (1 + value.abs())
    floor = 1e-3 * gnorm / math.sqrt(max(xd[0].numel(), 1)) + 1e-12
    rel = (ad - fd).abs() / torch.maximum(torch.maximum(ad.abs(), fd.abs()), floor.unsqueeze(0))
    per_sample = rel.median(dim=0).values
    mismatch = (per_sample > rtol) & ~zero
    zero_frac, mis_frac = float(zero.double().mean()), float(mismatch.double().mean())
    details = {"dtype": used, "step": h, "rtol": rtol, "n_samples": xd.shape[0], "n_directions": n_directions,
               "zero_gradient_fraction": zero_frac, "mismatch_fraction": mis_frac,
               "median_relative_error": float(per_sample.median()),
               "grad_norms": [float(t) for t in gnorm]}
    return _differentiability_verdict(name, zero_frac, mis_frac, used, details)


def _differentiability_verdict(name: str, zero_frac: float, mis_frac: float, used: str, details: dict) -> CheckResult:
    if zero_frac >= 0.5:
        return CheckResult(name, "fail", f"input gradients are zero for {zero_frac:.0%} of samples: a "
                           "non-differentiable layer (quantization, .detach(), argmax) masks gradients, so gradient "
                           f"attacks overstate robustness: {ADAPTIVE_HINT}", details)
    if mis_frac >= 0.5:
        return CheckResult(name, "fail", f"autograd and finite-difference derivatives disagree for {mis_frac:.0%} of "
                           f"samples (median relative error {details['median_relative_error']:.3g}): gradients are "
                           f"masked or wrong (.detach(), straight-through missing, custom backward): {ADAPTIVE_HINT}",
                           details)
    if mis_frac >= 0.25 or zero_frac > 0:
        return CheckResult(name, "warn", f"derivatives disagree for {mis_frac:.0%} and vanish for {zero_frac:.0%} "
                           "of samples", details)
    return CheckResult(name, "pass", f"autograd matches finite differences (median relative error "
                       f"{details['median_relative_error']:.2g}, {used})", details)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margin loss in the logits' own dtype (per_sample_loss casts to float32)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true
