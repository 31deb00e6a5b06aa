"""Indicators of attack failure from each sample's optimization path, recorded through one model wrapper.

Source: Pintor, Demetrio, Sotgiu, Manca, Demontis, Carlini, Biggio & Roli, "Indicators of Attack Failure:
Debugging and Improving Optimization of Adversarial Examples", NeurIPS 2022 (arXiv:2106.09947); the indicator
formulas are those of its code (``compute_indicators``: silent success, break-point angle, increasing loss,
zero gradients). The attack runs unchanged; ``PathRecorder`` (the accounting wrapper, ``accounting.py``) keeps,
per sample and per forward call that carried it, the margin (true logit - best other logit; < 0 means
adversarial) and, when the call was differentiated, the input gradient's L2 norm. Those are the sample's path.

Per indicator, over the samples the attack did not break (where "attack stalled" and "model robust" look the
same) and that were correct clean; a FAIL names the model and the attack:

* ``silent_success``: the path held an adversarial point, the returned image is not adversarial (FAIL if any);
* ``zero_gradients`` (unavailable gradients): share of the path, before its first adversarial point, with a
  zero input gradient; FAIL if the mean share is above 0.5;
* ``incomplete_optimization`` (the break-point angle on the min-max rescaled margin path: |cos| of the angle
  at the path's knee; near 1 the path is a straight line, the loss was still moving when the attack stopped);
  FAIL if the mean over samples is above 0.95 (our threshold: the paper reports the value);
* ``noisy_gradients`` (increasing loss: how much the margin rose between consecutive steps of the rescaled
  path, the area under those rises as the code computes it); WARN above 0.2 (our threshold).

Not here: the ``differentiability``, ``gradient_masking``, ``large_eps`` and ``stochastic_model`` trust checks
already decide a cut graph, gradient masking (unconstrained attack failure) and randomness; transfer failure
and bad initialization need a surrogate / restarts and are the ``transfer`` attack's and ``restarts``' business.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .accounting import QueryCounter
from .checks import CheckResult

ZERO_GRADIENTS_FAIL = 0.5
INCOMPLETE_FAIL = 0.95
NOISY_WARN = 0.2


class PathRecorder(QueryCounter):
    """The accounting wrapper, also keeping each sample's margins and input-gradient norms in call order (a row
    refused by the query budget is not part of the path)."""

    def __init__(self, model, clean: torch.Tensor, labels: torch.Tensor, query_budget: int | None = None):
        super().__init__(model, clean, query_budget)
        self.labels = labels.detach().cpu().long()
        self.margins: list[list[float]] = [[] for _ in range(clean.shape[0])]
        self.grads: list[list[float | None]] = [[] for _ in range(clean.shape[0])]

    def _observe(self, out: torch.Tensor, owners: torch.Tensor, allowed: torch.Tensor):
        logits = out.detach().float().cpu()
        y = self.labels[owners.clamp_min(0)]
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        slots = []
        for row, (owner, ok, margin) in enumerate(zip(owners.tolist(), allowed.tolist(), (true - other).tolist())):
            if owner >= 0 and ok:
                self.margins[owner].append(margin)
                self.grads[owner].append(None)
                slots.append((row, owner, len(self.grads[owner]) - 1))
        return slots

    def _observe_grad(self, grad: torch.Tensor, seen) -> None:
        norms = grad.detach().flatten(1).float().norm(dim=1).cpu().tolist()
        for row, owner, slot in seen:
            self.grads[owner][slot] = norms[row]


def break_point_alignment(loss: np.ndarray) -> float:
    """|cos| of the angle at the knee of a (rescaled) loss path, as Pintor et al.'s break-point angle: the knee is
    the point farthest from the chord first -> last; 1 for a straight path (no knee), small for a sharp one."""
    if loss.size < 3:
        return float("nan")
    a, c = np.array([0.0, loss[0]]), np.array([1.0, loss[-1]])
    v1 = (c - a) / np.linalg.norm(c - a)
    step = 1.0 / (loss.size - 1)  # the code's 1 / n puts the last point off the chord's end; 1 / (n - 1) does not
    inner = np.arange(1, loss.size - 1)
    p = np.stack([inner * step, loss[inner]], axis=1) - a
    dists = np.linalg.norm(p - (p @ v1)[:, None] * v1, axis=1)
    k = int(np.argmax(dists)) + 1
    b = np.array([k * step, loss[k]])
    v2, v3 = b - a, b - c
    n2, n3 = np.linalg.norm(v2), np.linalg.norm(v3)
    if n2 == 0 or n3 == 0:
        return 1.0
    return float(abs((v2 / n2).dot(v3 / n3)))


def increasing_loss(loss: np.ndarray) -> float:
    """Area under the path's rising segments (as the reference code's ``increasing_loss_indicator``)."""
    up = np.flatnonzero(np.diff(loss) > 0) + 1
    if up.size == 0:
        return 0.0
    rises = np.stack([loss[up], loss[up - 1]], axis=1).reshape(-1)  # (after, before) of each rise, in order
    return float(np.trapezoid(rises, np.linspace(0, 1, rises.size)))


def _rescaled(path: np.ndarray) -> np.ndarray:
    path = path - path.min()
    top = path.max()
    return path / top if top > 0 else path


def indicator_values(recorder: PathRecorder, clean_ok, still) -> dict[str, list]:
    """Per sample of the recorded batch: the indicators' values where the attack did not break a clean-correct
    sample with a path of at least two points (None elsewhere): ``silent_success`` (bool), ``zero_gradients``
    (share of zero input gradients before the first adversarial point; None without gradients),
    ``alignment`` (break-point), ``increasing_loss``. Compact: what a run stores per unit."""
    out: dict[str, list] = {"silent_success": [], "zero_gradients": [], "alignment": [], "increasing_loss": []}
    for i in range(len(recorder.margins)):
        margins = np.array(recorder.margins[i])
        if not (bool(clean_ok[i]) and bool(still[i]) and margins.size > 1):
            for values in out.values():
                values.append(None)
            continue
        adversarial = margins < 0
        out["silent_success"].append(bool(adversarial.any()))
        first = int(np.argmax(adversarial)) if adversarial.any() else margins.size
        grads = [g for g in recorder.grads[i][:first] if g is not None]
        out["zero_gradients"].append(float(np.mean(np.array(grads) <= 0)) if grads else None)
        path = _rescaled(margins)
        align = break_point_alignment(path)
        out["alignment"].append(align if np.isfinite(align) else None)
        out["increasing_loss"].append(increasing_loss(path))
    return out


def verdicts(values: dict[str, list], where: str) -> list[CheckResult]:
    """The four indicators' verdicts over the samples ``values`` covers (``indicator_values``, possibly the
    concatenation of many units); ``where`` names the attack and the model."""
    silent = [v for v in values.get("silent_success", []) if v is not None]
    zero = [v for v in values.get("zero_gradients", []) if v is not None]
    align = [v for v in values.get("alignment", []) if v is not None]
    noisy = [v for v in values.get("increasing_loss", []) if v is not None]
    n = len(silent)
    results = [
        CheckResult("silent_success", "fail" if any(silent) else "pass",
                    f"{where}: {sum(silent)} of {n} unbroken samples had an adversarial point on the attack's path "
                    "that the attack did not return" if any(silent) else
                    f"{where}: no unbroken sample passed through an adversarial point ({n} checked)",
                    {"count": int(sum(silent)), "n": n}),
    ]
    share = float(np.mean(zero)) if zero else 0.0
    results.append(CheckResult(
        "zero_gradients", "fail" if share > ZERO_GRADIENTS_FAIL else "pass",
        f"{where}: the attack stalled, not the model robust: {share:.0%} of the unbroken samples' steps had a zero "
        "input gradient" if share > ZERO_GRADIENTS_FAIL else
        f"{where}: {share:.0%} of the unbroken samples' steps had a zero input gradient", {"share": share, "n": n}))
    mean_align = float(np.mean(align)) if align else float("nan")
    bad = bool(align) and mean_align > INCOMPLETE_FAIL
    results.append(CheckResult(
        "incomplete_optimization", "fail" if bad else "pass",
        f"{where}: the margin was still moving in a straight line when the attack stopped (break-point alignment "
        f"{mean_align:.2f} > {INCOMPLETE_FAIL}): more steps or a larger step size" if bad else
        f"{where}: break-point alignment {mean_align:.2f} (the loss path bends: the attack converged)",
        {"alignment": mean_align, "n": n}))
    mean_noisy = float(np.mean(noisy)) if noisy else 0.0
    results.append(CheckResult(
        "noisy_gradients", "warn" if mean_noisy > NOISY_WARN else "pass",
        f"{where}: the margin rose along the path (increasing-loss area {mean_noisy:.2f} > {NOISY_WARN})"
        if mean_noisy > NOISY_WARN else f"{where}: increasing-loss area {mean_noisy:.2f}",
        {"increasing_loss": mean_noisy, "n": n}))
    return results


def attack_indicators(model, attack, x: torch.Tensor, y: torch.Tensor, model_name: str = "the model"
                      ) -> tuple[torch.Tensor, list[CheckResult]]:
    """Run ``attack(model, x, y)`` through a ``PathRecorder``; (adversarial images, the indicators)."""
    recorder = PathRecorder(model, x, y)
    x_adv = attack(recorder, x, y)
    with torch.no_grad():
        clean_ok = model(x).argmax(1).cpu() == y.cpu()
        still = model(x_adv).argmax(1).cpu() == y.cpu()
    name = getattr(attack, "name", type(attack).__name__)
    return x_adv, verdicts(indicator_values(recorder, clean_ok, still), f"{name} on {model_name}")
