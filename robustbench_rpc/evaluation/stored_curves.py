"""What the trust checks read back from the store after a model's evaluations: its robust accuracy per attack
and eps (the monotonicity and gradient-masking checks), and its per-sample standard and adaptive worst cases
per threat (the ``adaptive_gap`` check). Stored numbers only, so a resumed run checks what a fresh one would."""
from __future__ import annotations

import numpy as np

from .. import attacks
from ..evalspec import eps_label, is_adaptive, threat_of
from ..store.results import ResultsStore


def adaptive_pairs(store: ResultsStore, model_key: str) -> tuple[dict, dict]:
    """Per budget (dataset, norm, eps, threat model) holding standard and adaptive attacks (``evalspec.is_adaptive``):
    the per-sample worst case over the standard attacks and over all of them, on the samples every one of
    them has, as ``({label: correct}, {label: correct})`` for ``check_adaptive_gap``."""
    evals = store.evaluations()
    budgets: dict[tuple, dict[str, list[str]]] = {}
    for _, info in evals.iterrows():
        params = info["params"]
        if info["kind"] != "attack" or params.get("eps") is None:
            continue
        key = (info["dataset"], str(params.get("norm", "Linf")), float(params["eps"]), threat_of(params))
        role = "adaptive" if is_adaptive(info["name"], params) else "standard"
        budgets.setdefault(key, {"standard": [], "adaptive": []})[role].append(info["eval_key"])
    several = len({k[0] for k in budgets}) > 1
    standard, adaptive = {}, {}
    for (dataset, norm, eps, _), roles in sorted(budgets.items(), key=lambda kv: str(kv[0])):
        if not roles["standard"] or not roles["adaptive"]:
            continue
        frames = [store.samples(model_key, e).set_index("sample_id")["correct1"].astype(bool)
                  for e in roles["standard"] + roles["adaptive"]]
        if any(f.empty for f in frames):
            continue
        ids = sorted(set.intersection(*(set(f.index) for f in frames)))
        cols = [f.loc[ids].to_numpy() for f in frames]
        label = (f"{dataset} " if several else "") + f"{norm} {eps_label(eps, norm)}"
        standard[label] = np.logical_and.reduce(cols[:len(roles["standard"])])
        adaptive[label] = np.logical_and.reduce(cols)
    return standard, adaptive


def attack_curves(store: ResultsStore, model_key: str) -> tuple[dict, dict, set, int | None]:
    """One model's stored robust accuracy per attack group (attack + its non-eps parameters) and eps:
    (curves {group: {eps: top1}}, norms {group: norm}, gradient-free groups, smallest n)."""
    agg = store.aggregates()
    evals = store.evaluations().set_index("eval_key")
    curves: dict[str, dict[float, float]] = {}
    norms: dict[str, str] = {}
    free: set[str] = set()
    n_min = None
    for _, r in agg[agg["model_key"] == model_key].iterrows():
        info = evals.loc[r["eval_key"]]
        params = info["params"]
        if info["kind"] != "attack" or params.get("eps") is None:
            continue
        extra = {k: v for k, v in params.items() if k not in ("eps", "alpha", "seed")}
        group = info["name"] + (" " + " ".join(f"{k}={v}" for k, v in sorted(extra.items())) if extra else "")
        curves.setdefault(group, {})[float(params["eps"])] = float(r["top1"])
        norms[group] = str(params.get("norm", "Linf"))
        n_min = int(r["n"]) if n_min is None else min(n_min, int(r["n"]))
        if not attacks.is_gradient_based(info["name"]):
            free.add(group)
    return curves, norms, free, n_min


def stored_indicators(store: ResultsStore, model_key: str) -> dict[str, dict[str, list]]:
    """One model's per-sample indicator values of attack failure per attack evaluation, concatenated over the
    units the run stored (``queries/<model_key>/<eval_key>/<unit>`` in the meta, ``attacks.indicators``)."""
    prefix = f"queries/{model_key}/"
    per: dict[str, dict[str, list]] = {}
    for key, value in sorted(store.meta().items()):
        if not key.startswith(prefix) or not isinstance(value, dict) or not isinstance(value.get("indicators"), dict):
            continue
        eval_key = key[len(prefix):].rsplit("/", 1)[0]
        acc = per.setdefault(eval_key, {})
        for name, values in value["indicators"].items():
            acc.setdefault(name, []).extend(values)
    return per
