"""Indicators of attack failure from each sample's optimization path, recorded through one model wrapper.

Source: Pintor, Demetrio, Sotgiu, Manca, Demontis, Carlini, Biggio & Roli, "Indicators of Attack Failure:
Debugging and Improving Optimization of Adversarial Examples", NeurIPS 2022 (arXiv:2106.09947), with the
formulas of its code as last revised (pralab/IndicatorsOfAttackFailure ``src/indicators/indicators.py``, the
"updated version of the indicators" of May 2022, which replaced the first release's break-point angle and
increasing-loss measures by the last-steps test below). The attack runs unchanged; ``PathRecorder`` (the
accounting wrapper, ``accounting.py``) keeps, per sample and per forward call that carried it, the margin (true
logit - best other logit; < 0 means adversarial; the attacker drives it down) and, when the call was
differentiated, the L2 norm of the input gradient of the attack's own loss. Those are the sample's path.

The paper's six indicators and the trust check that decides each here (never two checks for one question):

==============================  ================================================================================
silent success                  ``silent_success`` per attack evaluation: an unbroken sample's path held an
                                adversarial point within the attack's budget that the attack did not return
                                (FAIL if any; a minimum-norm attack given an eps walks beyond it, and those
                                points do not count)
incomplete optimization         ``incomplete_optimization`` per attack evaluation: the reference's test on the
                                min-max rescaled margin path made non-increasing (its running minimum): still
                                falling by more than 0.05 over the last 10 calls; WARN above 10 % of the unbroken
                                samples (our threshold: the code flags samples; a WARN, as the accuracy is then
                                an upper bound that more steps may lower, not a wrong number)
unavailable gradients           a cut graph or a zero margin gradient at clean points: ``differentiability``;
                                the attack's own loss with a zero input gradient along its path (a saturated
                                cross-entropy the margin check cannot see): ``zero_gradients`` per attack
                                evaluation, FAIL when over half the unbroken samples' steps had one
unstable predictions            ``unstable_predictions`` per model (``unstable_predictions`` below); randomness
                                itself (identical inputs, different outputs) is ``stochastic_model``'s
transfer failure                ``transfer_failure`` per ``transfer`` attack evaluation: samples that fooled the
                                surrogate but not the model (WARN if any)
unconstrained attack failure    ``large_eps``: an unbounded attack must break every sample
==============================  ================================================================================

Each per-evaluation indicator looks only at the samples that were correct clean and that the attack did not
break: there "the attack stalled" and "the model is robust" give the same accuracy, and the indicators tell
them apart (``stalled_or_robust``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .accounting import QueryCounter
from .base import eval_mode, model_device, normalization_of
from .budget import measure_budget
from .checks import CheckResult

ZERO_GRADIENTS_FAIL = 0.5
INCOMPLETE_STEPS, INCOMPLETE_DROP = 10, 0.05  # the reference code's last-steps window and drop
INCOMPLETE_WARN, INCOMPLETE_MOST = 0.1, 0.5
UNSTABLE_WARN = 0.1
#: the per-evaluation checks this module writes, in the order a report shows them
EVAL_CHECKS = ("silent_success", "zero_gradients", "incomplete_optimization", "transfer_failure")


@dataclass(frozen=True)
class Threat:
    """The budget a path point must keep to count as an adversarial example the attack could have returned
    (``budget.measure_budget``'s test, the one that scores the returned images): a minimum-norm attack given
    an eps walks beyond it on its way to the boundary, and those points are not silent successes."""

    eps: float
    norm: str
    clip: bool = True
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @classmethod
    def of(cls, attack, model) -> "Threat | None":
        """The attack's threat model (None without an eps: every point of the path is within it)."""
        eps, norm = getattr(attack, "eps", None), getattr(attack, "norm", None)
        if eps is None or norm is None:
            return None
        mean = std = None
        if getattr(attack, "space", "pixel") == "normalized":
            mean, std = normalization_of(model)
        return cls(float(eps), str(norm), bool(getattr(attack, "clip", True)), mean, std)

    def within(self, clean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        report = measure_budget(clean.to(x.device, x.dtype), x, self.eps, self.norm, clip=self.clip,
                                mean=self.mean, std=self.std)
        return ~(report.nonfinite_mask | report.outside_mask | report.over.to(report.outside_mask.device)).cpu()


class PathRecorder(QueryCounter):
    """The accounting wrapper, also keeping each sample's margins, input-gradient norms and whether each point
    kept the attack's budget (``threat``; None: every point does), in call order (a row refused by the query
    budget is not part of the path)."""

    def __init__(self, model, clean: torch.Tensor, labels: torch.Tensor, query_budget: int | None = None,
                 threat: Threat | None = None):
        super().__init__(model, clean, query_budget)
        self.labels = labels.detach().cpu().long()
        self.threat = threat
        self.clean_images = clean.detach()
        self.margins: list[list[float]] = [[] for _ in range(clean.shape[0])]
        self.grads: list[list[float | None]] = [[] for _ in range(clean.shape[0])]
        self.inside: list[list[bool]] = [[] for _ in range(clean.shape[0])]

    def _observe(self, x: torch.Tensor, out: torch.Tensor, owners: torch.Tensor, allowed: torch.Tensor):
        logits = out.detach().float().cpu()
        y = self.labels[owners.clamp_min(0)]
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        inside = [True] * len(owners)
        if self.threat is not None and len(owners):
            clean = self.clean_images.to(x.device)[owners.clamp_min(0).to(x.device)]
            inside = self.threat.within(clean, x.detach()).tolist()
        slots = []
        for row, (owner, ok, margin) in enumerate(zip(owners.tolist(), allowed.tolist(), (true - other).tolist())):
            if owner >= 0 and ok:
                self.margins[owner].append(margin)
                self.grads[owner].append(None)
                self.inside[owner].append(bool(inside[row]))
                slots.append((row, owner, len(self.grads[owner]) - 1))
        return slots

    def _observe_grad(self, grad: torch.Tensor, seen) -> None:
        norms = grad.detach().flatten(1).float().norm(dim=1).cpu().tolist()
        for row, owner, slot in seen:
            self.grads[owner][slot] = norms[row]


def still_falling(margins: np.ndarray, steps: int = INCOMPLETE_STEPS, drop: float = INCOMPLETE_DROP) -> bool:
    """The reference's incomplete-optimization test on one path: rescaled to [0, 1] (min-max), made
    non-increasing (the best value so far), it still fell by more than ``drop`` over its last ``steps`` points."""
    path = np.asarray(margins, dtype=np.float64).copy()
    if path.size < 2:
        return False
    path -= path.min()
    if path.max() > 0:
        path /= path.max()
    best = np.minimum.accumulate(path)[-steps:]
    return bool(best.max() - best.min() > drop)


def indicator_values(recorder: PathRecorder, clean_ok, still, surrogate_fooled=None,
                     universal: bool = False) -> dict[str, list]:
    """Per sample of the recorded batch: the indicators' values where the attack did not break a clean-correct
    sample with a path of at least two points (None elsewhere): ``silent_success`` (bool), ``zero_gradients``
    (share of zero input gradients before the first adversarial point; None without gradients),
    ``incomplete_optimization`` (bool), and with ``surrogate_fooled`` (a transfer attack's surrogate verdict on
    the returned images) ``transfer_failure`` (bool). Compact: what a run stores per unit. A ``universal``
    attack (one perturbation for every image, as a universal adversarial patch) gets no ``silent_success``: an
    image fooled by an earlier perturbation is not a point the attack could have returned for it alone."""
    names = ["silent_success", "zero_gradients", "incomplete_optimization"]
    if surrogate_fooled is not None:
        names.append("transfer_failure")
    out: dict[str, list] = {name: [] for name in names}
    for i in range(len(recorder.margins)):
        margins = np.array(recorder.margins[i])
        unbroken = bool(clean_ok[i]) and bool(still[i])
        if surrogate_fooled is not None:  # a transfer attack's path is the surrogate's: the target sees 1 call
            out["transfer_failure"].append(bool(surrogate_fooled[i]) if unbroken else None)
        if not (unbroken and margins.size > 1):
            for name in names[:3]:
                out[name].append(None)
            continue
        adversarial = margins < 0
        out["silent_success"].append(bool((adversarial & np.array(recorder.inside[i], dtype=bool)).any()))
        first = int(np.argmax(adversarial)) if adversarial.any() else margins.size
        grads = [g for g in recorder.grads[i][:first] if g is not None]
        out["zero_gradients"].append(float(np.mean(np.array(grads) <= 0)) if grads else None)
        out["incomplete_optimization"].append(still_falling(margins))
    if universal:
        del out["silent_success"]
    return out


TRACE_POINTS = 32


def compact_traces(recorder: PathRecorder, keep, points: int = TRACE_POINTS) -> list:
    """Each kept sample's margin path, as a run stores it per unit: at most ``points`` values (the first, the
    last and evenly spaced calls between; a path's shape, not every call) with 4 significant digits; None for
    a sample not kept (``keep``: the unbroken clean-correct samples the indicators look at)."""
    out = []
    for i, path in enumerate(recorder.margins):
        if not bool(keep[i]) or len(path) < 2:
            out.append(None)
            continue
        at = np.unique(np.linspace(0, len(path) - 1, min(points, len(path))).round().astype(int))
        out.append([float(f"{path[k]:.4g}") for k in at])
    return out


def _known(values: dict[str, list], name: str) -> list:
    return [v for v in values.get(name) or [] if v is not None]


def verdicts(values: dict[str, list], where: str) -> list[CheckResult]:
    """The indicators' verdicts over the samples ``values`` covers (``indicator_values``, possibly the
    concatenation of many units); ``where`` names the attack and the model. An indicator the values do not hold
    (a store written before it was recorded, a non-transfer attack's transfer failure) gets no verdict, and an
    evaluation none of whose samples could be judged (every sample broken, or one model call per sample, as
    FGSM makes) gets none at all: there is nothing to tell apart."""
    if not any(_known(values, name) for name in EVAL_CHECKS):
        return []
    results = []
    if "silent_success" in values:
        silent = _known(values, "silent_success")
        n = len(silent)
        results.append(CheckResult(
            "silent_success", "fail" if any(silent) else "pass",
            f"{where}: {sum(silent)} of {n} unbroken samples had an adversarial point on the attack's path that the "
            "attack did not return (its robust accuracy is too high)" if any(silent) else
            f"{where}: no unbroken sample passed through an adversarial point ({n} checked)",
            {"count": int(sum(silent)), "n": n}))
    if "zero_gradients" in values:
        zero = _known(values, "zero_gradients")
        share = float(np.mean(zero)) if zero else 0.0
        bad = share > ZERO_GRADIENTS_FAIL
        results.append(CheckResult(
            "zero_gradients", "fail" if bad else "pass",
            f"{where}: the attack stalled, not the model robust: {share:.0%} of the unbroken samples' steps had a "
            "zero input gradient of the attack's loss (try a margin or DLR loss, or the adaptive attacks)" if bad
            else f"{where}: {share:.0%} of the unbroken samples' steps had a zero input gradient",
            {"share": share, "n": len(zero)}))
    if "incomplete_optimization" in values:
        inc = _known(values, "incomplete_optimization")
        share = float(np.mean(inc)) if inc else 0.0
        status = "warn" if share > INCOMPLETE_WARN else "pass"
        results.append(CheckResult(
            "incomplete_optimization", status,
            f"{where}: the attack stopped while its loss was still falling on {sum(inc)} of {len(inc)} unbroken "
            f"samples ({share:.0%}: more than {INCOMPLETE_DROP} of the rescaled margin in the last "
            f"{INCOMPLETE_STEPS} calls): more steps or a larger step size" if status != "pass" else
            f"{where}: the loss had levelled off on {len(inc) - sum(inc)} of {len(inc)} unbroken samples",
            {"share": share, "count": int(sum(inc)), "n": len(inc)}))
    if "transfer_failure" in values:
        tf = _known(values, "transfer_failure")
        results.append(CheckResult(
            "transfer_failure", "warn" if any(tf) else "pass",
            f"{where}: {sum(tf)} of {len(tf)} unbroken samples fooled the surrogate but not the model: for them the "
            "accuracy measures the transfer, not robustness (attack the model itself: bpda, eot)" if any(tf) else
            f"{where}: no unbroken sample fooled the surrogate ({len(tf)} checked)",
            {"count": int(sum(tf)), "n": len(tf)}))
    return results


def stalled_or_robust(statuses: dict[str, str], incomplete_share: float = 0.0) -> str:
    """One phrase for a report from an evaluation's indicator statuses (check name -> status) and the share of
    its unbroken samples whose loss was still falling."""
    if statuses.get("zero_gradients") == "fail":
        return "attack stalled (zero gradients)"
    if statuses.get("silent_success") == "fail":
        return "attack found adversarial points it did not return (silent success)"
    if statuses.get("transfer_failure") == "warn":
        return "transfer failed on some samples"
    if statuses.get("incomplete_optimization") == "warn":
        return ("attack still improving when it stopped (incomplete optimization)" if incomplete_share > INCOMPLETE_MOST
                else "model robust on most unbroken samples; some still improving")
    return "model robust on the unbroken samples"


def unstable_predictions(model, images: torch.Tensor, labels: torch.Tensor, *, gamma: int = 100,
                         radius: float = 8 / 255, seed: int = 0, name: str = "unstable_predictions") -> CheckResult:
    """The reference's unstable-predictions indicator: the mean over ``gamma`` uniform perturbations in
    [-radius/2, radius/2] per pixel (its ``(rand - 0.5) * radius``) of |L(x + r) - L(x)| / |L(x)| (a zero
    reference counts as 1), capped at 1, with L the margin loss the ``differentiability`` check uses (defined for
    every attack; the reference takes the attack's own objective). Perturbed images are clamped to [0, 1] as
    every attack here clamps them. WARN above 0.1 (our threshold: the code returns the value): the loss moves
    by more than a tenth of itself within the noise, so a gradient step sees a different model than the next."""
    device = model_device(model, images.device)
    x = images.to(device).float()
    y = torch.as_tensor(labels).to(device).long()
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def margin_loss(inputs: torch.Tensor) -> torch.Tensor:
        logits = model(inputs).float()
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return other - true

    with eval_mode(model), torch.no_grad():
        ref = margin_loss(x)
        scale = torch.where(ref == 0, torch.ones_like(ref), ref.abs())
        rel = torch.stack([((margin_loss((x + ((torch.rand(x.shape, generator=gen) - 0.5) * radius).to(device))
                                          .clamp(0, 1)) - ref).abs() / scale) for _ in range(gamma)])
    value = min(float(rel.mean()), 1.0)
    bad = value > UNSTABLE_WARN
    per_sample = rel.mean(dim=0).clamp(max=1).tolist()
    return CheckResult(
        name, "warn" if bad else "pass",
        f"the margin loss moves by {value:.0%} of itself under uniform noise of width {radius:.4g} "
        f"(above {UNSTABLE_WARN:.0%}): gradients taken at one point say little about the next" if bad else
        f"the margin loss moves by {value:.1%} of itself under uniform noise of width {radius:.4g}",
        {"value": value, "gamma": gamma, "radius": radius, "n": len(x), "per_sample": per_sample})


def attack_indicators(model, attack, x: torch.Tensor, y: torch.Tensor, model_name: str = "the model"
                      ) -> tuple[torch.Tensor, list[CheckResult]]:
    """Run ``attack(model, x, y)`` through a ``PathRecorder``; (adversarial images, the indicators)."""
    recorder = PathRecorder(model, x, y, threat=Threat.of(attack, model))
    x_adv = attack(recorder, x, y)
    with torch.no_grad():
        clean_ok = model(x).argmax(1).cpu() == y.cpu()
        still = model(x_adv).argmax(1).cpu() == y.cpu()
    fooled = getattr(attack, "surrogate_fooled", None)
    name = getattr(attack, "name", type(attack).__name__)
    return x_adv, verdicts(indicator_values(recorder, clean_ok, still, fooled), f"{name} on {model_name}")
