"""Trust checks for adaptive evaluation: AutoAttack's other flags (fra31/auto-attack ``autoattack/checks.py``,
``flags_doc.md``) and the standard-vs-adaptive gap. Each returns ``CheckResult`` as ``attacks.checks``.

* ``check_softmax_output``: the model returns probabilities instead of logits (AutoAttack's
  ``check_range_output``: rows sum to 1, values in [0, 1]); attacks on them are numerically unstable.
* ``check_eps_zero_identity``: each attack family, run at eps 0, must give per-sample outcomes identical to
  the clean ones (the threat model, projection and final classification are what they say).
* ``check_adaptive_gap``: FAIL when the adaptive attacks lower accuracy significantly below the standard
  ones on the same samples (McNemar's test, Holm-corrected over budgets; Tramer et al. 2020: a defense is
  judged by the strongest attack adapted to it). Zero gradients stay the ``differentiability`` check.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..base import ATTACKS, eval_mode, get_attack, model_device
from ..checks import CheckResult
from ..evaluate import BudgetError, attack_outcomes
from ..stochastic import detect_stochastic
from .inner import ALIASES
from ...metrics import mcnemar, paired_delta_ci


@torch.no_grad()
def check_softmax_output(model: nn.Module, images: torch.Tensor, *, atol: float = 1e-5,
                         name: str = "softmax_output") -> CheckResult:
    """FAIL if every output row lies in [0, 1] and sums to 1 (within ``atol``): probabilities, not logits."""
    x = images.to(model_device(model, images.device))
    with eval_mode(model):
        out = model(x).double()
    sums = out.sum(dim=1)
    lo, hi = float(out.min()), float(out.max())
    dev = float((sums - 1).abs().max())
    details = {"min": lo, "max": hi, "max_row_sum_deviation": dev, "n": int(out.shape[0]), "atol": atol}
    if lo > -atol and hi < 1 + atol and dev < atol:
        return CheckResult(name, "fail", f"the model returns probabilities (values in [{lo:.3g}, {hi:.3g}], rows sum "
                           f"to 1 within {dev:.1e}), not logits: cross-entropy and margin losses saturate and "
                           "gradient attacks underperform; return the pre-softmax logits", details)
    return CheckResult(name, "pass", f"the model returns logits (values in [{lo:.3g}, {hi:.3g}], largest row-sum "
                       f"deviation from 1: {dev:.3g})", details)


#: iteration budgets capped for the eps-0 run: at eps 0 every iterate is projected back onto the clean image,
#: so the identity cannot depend on how many there are (the paper's CW-L2 would otherwise cost 5000 steps)
CHEAP = {"steps": 2, "n_iter": 2, "max_iterations": 2, "binary_search_steps": 1, "n_queries": 10,
         "n_restarts": 1, "restarts": 1, "n_samples": 4, "eot_iter": 1}


def _cheap(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` of attack ``name`` with the iteration counts of :data:`CHEAP` capped, defaulted ones
    included (also inside an adaptive attack's ``base_args``, for its base)."""
    import inspect

    try:
        sig = inspect.signature(ATTACKS.get(name)).parameters
    except (KeyError, TypeError, ValueError):
        sig = {}
    defaults = {k: p.default for k, p in sig.items() if k in CHEAP and isinstance(p.default, int)}
    out = {**defaults, **params}
    out = {k: (min(v, CHEAP[k]) if k in CHEAP and isinstance(v, int) and not isinstance(v, bool) else v)
           for k, v in out.items()}
    if "base" in out and isinstance(out.get("base_args", {}), Mapping):
        base = ALIASES.get(str(out["base"]), (str(out["base"]), {}))[0]
        out["base_args"] = _cheap(base, out.get("base_args") or {})
    return out


def _family_specs(attacks: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One spec per attack name (the first seen), as ``{"name": ..., **params}``."""
    out: dict[str, dict[str, Any]] = {}
    for spec in attacks:
        spec = dict(spec)
        name = spec.pop("name")
        out.setdefault(name, spec)
    return out


def check_eps_zero_identity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            attacks: Iterable[Mapping[str, Any]], *, seed: int = 0,
                            name: str = "eps_zero_identity") -> CheckResult:
    """Run each attack family of ``attacks`` (specs ``{"name": ..., **params}``, one per name is used) at eps
    0, its iteration counts capped (:data:`CHEAP`): the adversarial images must stay on the clean ones (the
    budget check of ``attack_outcomes``, float rounding allowed) and every sample's prediction, top-1 and
    top-5 outcomes must equal the clean ones. FAIL names the families that differ; WARN for a stochastic model
    (outcomes differ between identical passes) or families that cannot run at eps 0."""
    families = _family_specs(attacks)
    if not families:
        return CheckResult(name, "warn", "no attacks to check", {"families": {}})
    x, y = images.detach(), torch.as_tensor(labels).long()
    if detect_stochastic(model, x):
        return CheckResult(name, "warn", "the model is stochastic in eval mode: outcomes at eps 0 cannot be "
                           "compared with clean ones sample by sample", {"stochastic": True})
    rows: dict[str, dict[str, Any]] = {}
    for fam, params in families.items():
        params = _cheap(fam, {k: v for k, v in params.items() if k not in ("eps", "seed", "accuracy", "attack_amp",
                                                                           "adaptive")})
        t0 = time.perf_counter()
        try:
            attack = get_attack(fam, eps=0.0, seed=seed, **params)
            out = attack_outcomes(model, attack, x, y)
        except BudgetError as err:  # it left the eps-0 ball (beyond float rounding): the budget is not honoured
            rows[fam] = {"status": "differs", "samples_changed": int(getattr(err, "count", 0) or len(x)),
                         "max_linf": float(getattr(err, "worst", None) or float("nan")), "n": int(len(x)),
                         "error": str(err).splitlines()[0]}
            continue
        except (ValueError, TypeError, RuntimeError) as err:
            rows[fam] = {"status": "not run", "error": str(err).splitlines()[0]}
            continue
        changed = (out.adv_pred != out.clean_pred) | (out.plain_correct1 != out.clean_correct1) \
            | (out.plain_correct5 != out.clean_correct5)
        rows[fam] = {"status": "differs" if bool(changed.any()) else "identical",
                     "samples_changed": int(changed.sum()), "max_linf": float(out.linf.max()) if len(out) else 0.0,
                     "n": len(out), "seconds": round(time.perf_counter() - t0, 2)}
    details = {"families": rows, "n": int(x.shape[0])}
    bad = {f: r for f, r in rows.items() if r["status"] == "differs"}
    if bad:
        shown = "; ".join(f"{f}: {r['samples_changed']}/{r['n']} samples change, max |x_adv - x| = "
                          f"{r['max_linf']:.3g}" + (f" ({r['error']})" if r.get("error") else "")
                          for f, r in bad.items())
        return CheckResult(name, "fail", f"at eps 0 the attacks must leave every outcome as clean, but {shown}: "
                           "the budget projection, threat model or final classification is broken", details)
    skipped = [f for f, r in rows.items() if r["status"] == "not run"]
    if skipped:
        return CheckResult(name, "warn", f"{', '.join(skipped)} could not run at eps 0 "
                           f"({rows[skipped[0]]['error']}); the others leave every outcome as clean", details)
    return CheckResult(name, "pass", f"at eps 0, {', '.join(rows)} leave all {details['n']} outcomes as clean",
                       details)


def _holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    order = np.argsort(p_values)
    m, running, out = len(p_values), 0.0, [0.0] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def check_adaptive_gap(standard, adaptive, *, alpha: float = 0.05, confidence: float = 0.95,
                       name: str = "adaptive_gap") -> CheckResult:
    """``standard`` / ``adaptive``: per-sample correctness (bool arrays on the same samples, e.g. the worst
    case over the standard attacks and over standard + adaptive ones), or mappings budget label -> such an
    array with the same keys. FAIL when, at some budget, the adaptive accuracy is significantly lower
    (McNemar, exact below 25 discordant pairs, Holm-corrected over budgets at ``alpha``); the message gives
    both accuracies, the paired difference with its CI (Newcombe) and the p-value."""
    if isinstance(standard, Mapping) and (not isinstance(adaptive, Mapping) or set(standard) != set(adaptive)):
        raise ValueError(f"check_adaptive_gap: budgets differ ({sorted(standard)} vs "
                         f"{sorted(adaptive) if isinstance(adaptive, Mapping) else 'one array'})")
    pairs = ({k: (standard[k], adaptive[k]) for k in standard} if isinstance(standard, Mapping)
             else {"": (standard, adaptive)})
    if not pairs:
        return CheckResult(name, "warn", "no budget with both standard and adaptive attacks", {"budgets": {}})
    rows = {}
    for label, (s, a) in pairs.items():
        s, a = np.asarray(s, dtype=bool), np.asarray(a, dtype=bool)
        test = mcnemar(s, a)
        delta, lo, hi = paired_delta_ci(a, s, confidence)
        rows[label] = {"n": int(s.size), "standard_accuracy": float(s.mean()), "adaptive_accuracy": float(a.mean()),
                       "difference": delta, "ci": [lo, hi], "p_value": test["p_value"], "method": test["method"],
                       "correct_only_standard": test["n10"], "correct_only_adaptive": test["n01"]}
    for row, adj in zip(rows.values(), _holm([r["p_value"] for r in rows.values()])):
        row["p_holm"] = adj
    details = {"budgets": rows, "alpha": alpha, "confidence": confidence}
    flagged = {k: r for k, r in rows.items() if r["p_holm"] < alpha and r["difference"] < 0}
    worst = min(rows.items(), key=lambda kv: kv[1]["difference"])

    def text(label: str, r: dict) -> str:
        return (f"{label + ': ' if label else ''}standard {r['standard_accuracy']:.1%} -> adaptive "
                f"{r['adaptive_accuracy']:.1%} (difference {100 * r['difference']:+.1f} pp, {confidence:.0%} CI "
                f"[{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}], McNemar p = {r['p_value']:.2g}"
                f"{', Holm ' + format(r['p_holm'], '.2g') if len(rows) > 1 else ''}, n = {r['n']})")

    if flagged:
        shown = "; ".join(text(k, r) for k, r in flagged.items())
        return CheckResult(name, "fail", f"adaptive attacks lower accuracy significantly below the standard ones: "
                           f"{shown}; the standard attacks overstate this model's robustness (report the adaptive "
                           "worst case)", details)
    return CheckResult(name, "pass", f"no significant drop under adaptive attacks (largest: {text(*worst)})", details)
