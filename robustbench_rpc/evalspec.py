"""What one evaluation is: its spec, its labels, its threat model and how its parameters reach the attack.

A leaf every room that plans, runs or describes an evaluation imports (suite parsing, the plan, units, OOD
protocols, diagnostics, reports), so none of them needs another: the definitions live here once.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .keys import stable_key

#: classifications of each adversarial image of a stochastic model, per-sample worst case kept
#: (``attacks.attack_outcomes(repeats=...)``; auto-attack PR #105 uses 20 evaluations for random defenses)
STOCHASTIC_EVAL_REPEATS = 20
#: accuracy definitions of an attack evaluation: "robust" (clean-correct AND correct under attack) or
#: "plain" (correct under attack, the RPC paper's definition)
ACCURACIES = ("robust", "plain")
#: evaluation-level parameters of an attack evaluation (not passed to the attack); ``adaptive = true``
#: counts the evaluation among the adaptive ones (the ``adaptive`` preset sets it on each of its attacks)
#: evaluation-level parameters, never passed to the attack (curve: the curve evaluation it belongs to;
#: query_budget: forwards + backwards allowed per sample, attacks/accounting.py)
EVAL_PARAMS = ("accuracy", "attack_amp", "adaptive", "curve", "query_budget")
#: attacks adapted to the defense by construction: adaptive whatever the evaluation says
ADAPTIVE_ATTACKS = ("bpda", "transfer")
#: attacks whose returned image is chosen by top-1 success (they stop at the first iterate that flips
#: top-1, or keep the smallest perturbation that does): their top-5 under attack is not top-5 robustness
TOP1_DECIDED = ("apgd", "autoattack", "square", "cw", "cw-cleverhans")
#: what an attack evaluation without these parameters means (the standard pixel threat model)
THREAT_DEFAULTS = {"space": "pixel", "clip": True, "labels": "true", "accuracy": "robust"}


class SuiteError(ValueError):
    """A suite file or override that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class EvalSpec:
    """One concrete evaluation: its kind, display name, dataset and parameters (all JSON-able)."""

    kind: str
    name: str
    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    #: an attack's every parameter as it will run (planning fills it; not part of the key or equality)
    resolved: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    #: keep the adversarial images of an attack evaluation (store/adversarial.py); not part of the key
    save_adversarial: bool = field(default=False, compare=False, repr=False)

    @property
    def key(self) -> str:
        return stable_key({"kind": self.kind, "name": self.name, "dataset": self.dataset, "params": self.params})


def parse_eps(value: Any, where: str) -> float:
    """Pixel-space budget: a number or a string like '4/255'."""
    if isinstance(value, bool):
        raise SuiteError(f"{where}: eps {value!r} is not a number or fraction like '4/255'")
    try:
        if isinstance(value, str):
            return float(Fraction(value.replace(" ", "")))
        return float(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise SuiteError(f"{where}: eps {value!r} is not a number or fraction like '4/255'") from None


def eps_label(eps: Any, norm: str | None = None) -> str:
    """The one way a budget is written: 8/255 for multiples of 1/255 (to a relative 1e-6), else a short
    decimal; '0' for zero, '?' when unknown. With ``norm`` L2, L1 or L0 always the decimal: such a budget is no
    number of pixel levels (L1 2.0 is '2', not '510/255')."""
    if eps is None or isinstance(eps, bool) or (isinstance(eps, float) and math.isnan(eps)):
        return "?"
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    if eps == 0:
        return "0"
    if norm in ("L2", "L1", "L0"):  # any other (None, '?', Linf): the Linf default
        return f"{eps:.4g}"
    k = eps * 255
    if round(k) >= 1 and abs(k - round(k)) < 1e-6 * max(1.0, abs(k)):
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


def attack_label(name: str, params: dict[str, Any], skip: tuple[str, ...] = ("seed",)) -> str:
    """'pgd eps=4/255 steps=10': an attack and its parameters (Linf, the default norm, left out; the budget
    written as ``eps_label`` writes it in the attack's norm)."""
    parts = [name]
    for k, v in params.items():
        if k in skip or (k == "norm" and v == "Linf"):
            continue
        budget = k == "eps" and isinstance(v, (int, float)) and not isinstance(v, bool)
        parts.append(f"{k}={eps_label(v, str(params.get('norm', 'Linf'))) if budget else v}")
    return " ".join(str(p) for p in parts)


def describe_eval(e: EvalSpec) -> str:
    """Short human label, e.g. 'attack pgd eps=4/255 steps=10' or 'corruption fog s3'."""
    if e.kind == "corruption":
        return f"corruption {e.name} s{e.params['severity']}"
    if e.kind == "attack":
        return "attack " + attack_label(e.name, e.params, skip=())
    if e.kind in ("external", "transfer"):  # the name says the set, its budget and (external) its sha256
        return e.name
    head = e.kind if e.kind == e.name else f"{e.kind} {e.name}"
    return " ".join([head] + [f"{k}={v}" for k, v in e.params.items()])


def threat_of(params: dict) -> tuple:
    """(space, clip, labels, accuracy) of an attack evaluation: attacks are comparable only within one."""
    return tuple(params.get(k, v) for k, v in THREAT_DEFAULTS.items())


def threat_text(params: dict) -> str:
    """The one sentence on an attack's threat model (protocol card, headline notes)."""
    space, clip, labels, accuracy = threat_of(params)
    return "; ".join([
        "eps in normalized input units (x - mean) / std of the model" if space == "normalized"
        else "eps in pixel units (images in [0, 1])",
        "clipped to [0, 1]" if clip else "no clipping (adversarial images may leave [0, 1])",
        "attacking the model's clean predictions" if labels == "predicted" else "attacking the true labels",
        "plain accuracy (top-1/top-5 of model(x_adv) against the true label)" if accuracy == "plain"
        else "robust accuracy (correct on the clean image AND under attack)"])


def is_adaptive(name: str, params: dict) -> bool:
    """Whether an attack evaluation is adaptive: ``bpda``/``transfer``, or ``adaptive = true``."""
    return name in ADAPTIVE_ATTACKS or params.get("adaptive") is True


def top5_reason(name: str, resolved: dict) -> str | None:
    """Why top-5 under this attack means nothing (None when it does): the attack decides on top-1 success,
    so its images say nothing about top-5 robustness (``resolved``: the attack's parameters as it ran)."""
    if resolved.get("early_stop"):
        if name == "transfer":
            return "it leaves the images the model misclassifies (top-1) unattacked (early_stop)"
        return "it stops on a sample at the first iterate that flips top-1 (early_stop)"
    if name in TOP1_DECIDED:
        return "it keeps, per sample, the first (or smallest) perturbation that flips top-1"
    base = str(resolved.get("base", ""))
    if name in ADAPTIVE_ATTACKS and base:
        inner = "apgd" if base.startswith("apgd") else base
        return top5_reason(inner, dict(resolved.get("base_args") or {}))
    return None


def unit_seed(seed: int, eval_key: str, unit: int) -> int:
    """Seed of one unit: a function of (run seed, evaluation, unit index) only — not of rank or order."""
    digest = hashlib.sha256(f"{seed}:{eval_key}:{unit}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def attack_params(spec: EvalSpec, amp: str | None) -> dict[str, Any]:
    """Suite parameters -> get_attack kwargs (``alpha_rel`` is a step size relative to eps).

    The run's ``amp`` reaches PGD/FGSM's own forward/backward unless the evaluation says
    ``attack_amp = false`` (the paper runs its attacks in fp32 and only classifies under autocast).
    Robust accuracy needs no work on lost samples: attacks that can stop early (``early_stop``: skip the
    clean-misclassified, keep the first misclassified iterate) do so unless the evaluation says
    otherwise; plain accuracy (the paper's) keeps every sample's last iterate."""
    from .attacks import attack_class  # lazy: attacks/ imports this leaf, a top-level import would be a circle

    params = {k: v for k, v in spec.params.items() if k not in EVAL_PARAMS}
    if "early_stop" not in params and "early_stop" in inspect.signature(attack_class(spec.name)).parameters:
        params["early_stop"] = spec.params.get("accuracy", "robust") == "robust"
    rel = params.pop("alpha_rel", None)
    if rel is not None:
        params["alpha"] = float(rel) * float(params["eps"])
    if amp and amp != "fp32" and spec.name in ("pgd", "fgsm") and spec.params.get("attack_amp", True):
        params["amp_dtype"] = amp  # the attacks accept 'bf16' / 'fp16' (attacks.base.amp_dtype_of)
    return params


def _plain(v: Any) -> Any:
    """A parameter value as JSON keeps it (non-finite floats and objects as text)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _kind_of(default: Any) -> type | None:
    return bool if isinstance(default, bool) else int if isinstance(default, int) else \
        float if isinstance(default, float) else str if isinstance(default, str) else None


def check_param_types(e: EvalSpec, where: str) -> None:
    """Each attack parameter of the type its default has (TOML's ``"false"`` is a string, not False;
    ``12.7`` is not a step count): one line naming the file, the evaluation and the key."""
    from .attacks import attack_class  # lazy: attacks/ imports this leaf, a top-level import would be a circle

    try:
        params = inspect.signature(attack_class(e.name)).parameters
    except (TypeError, ValueError):
        return
    for key, value in e.params.items():
        p = params.get(key)
        kind = _kind_of(p.default) if p is not None and p.default is not inspect.Parameter.empty else None
        if kind is None or value is None:
            continue
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, str))
        if not ok:
            want = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
            raise SuiteError(f"{where}: attack {e.name}: {key} must be {want}, got {value!r}")


def linf_range_problem(eps: float) -> str | None:
    """Why a pixel-space Linf budget cannot be what was meant (above 1 it exceeds the whole [0, 1] range:
    usually '8' for '8/255'), with the fraction it likely stands for; None when within range. ``run`` and
    ``train`` refuse the same budgets with the same words."""
    if not eps > 1:
        return None
    hint = f" (did you mean '{eps:g}/255'?)" if float(eps).is_integer() and eps <= 255 else ""
    return f"is beyond the Linf range of pixel-space images (values in [0, 1], so eps <= 1){hint}"


def resolve_attack(e: EvalSpec, amp: str | None, where: str) -> dict[str, Any]:
    """Build the attack once (no model, no data) and return every parameter as it will run (defaults
    included, the run's ``amp`` applied). A misspelt parameter or a bad value fails here, before any
    compute, naming ``where`` and the evaluation."""
    from . import attacks  # lazy: attacks/ imports this leaf, a top-level import would be a circle

    accuracy = e.params.get("accuracy", "robust")
    if accuracy not in ACCURACIES:
        raise SuiteError(f"{where}: accuracy must be one of {', '.join(ACCURACIES)}, got {accuracy!r}")
    for flag in ("attack_amp", "adaptive"):
        if not isinstance(e.params.get(flag, True), bool):
            raise SuiteError(f"{where}: {flag} must be true or false, got {e.params[flag]!r}")
    check_param_types(e, where)
    try:
        attack = attacks.get_attack(e.name, **attack_params(e, amp))
    except (ValueError, TypeError) as err:
        run = f" with --amp {amp}" if amp else ""
        raise SuiteError(f"{where}: attack {describe_eval(e)}{run}: {err}") from None
    eps = getattr(attack, "eps", None)
    beyond = linf_range_problem(eps) if eps is not None and attack.norm == "Linf" and attack.space == "pixel" else None
    if beyond:
        raise SuiteError(f"{where}: attack {e.name}: eps={eps:g} {beyond}")
    params = dict(getattr(attack, "params", None) or {})
    params.pop("seed", None)  # per unit: info["seed"] and the unit index determine it
    return {k: _plain(v) for k, v in params.items()}
