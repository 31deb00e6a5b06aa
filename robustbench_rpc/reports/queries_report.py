"""The report's cost table: forwards and backwards per sample of every attack evaluation, as the run stored
them (``queries/<model_key>/<eval_key>/<unit>`` in the run's meta, counted by ``attacks.accounting`` through one
model wrapper, the attacks unchanged): mean per sample and total, per model and attack."""
from __future__ import annotations

import pandas as pd

from ..attacks.indicators import verdicts
from ..evalspec import attack_label
from .data import RunData
from .render import Table

PREFIX = "queries/"


def queries_table(data: RunData) -> Table | None:
    """None when the run stored no counts (no attack evaluation, or a store written before they were kept)."""
    per: dict[tuple[str, str], dict[str, list]] = {}
    for key, value in data.meta.items():
        if not key.startswith(PREFIX) or not isinstance(value, dict):
            continue
        _, model_key, eval_key, _unit = key.split("/", 3)
        acc = per.setdefault((model_key, eval_key), {"forwards": [], "backwards": [], "ambiguous": 0})
        acc["forwards"] += list(value.get("forwards", []))
        acc["backwards"] += list(value.get("backwards", []))
        acc["ambiguous"] += int(value.get("ambiguous", 0))
    if not per:
        return None
    rows, tidy = [], []
    for (model_key, eval_key), acc in sorted(per.items(), key=lambda kv: (data.name(kv[0][0]), kv[0][1])):
        info = data.info(eval_key)
        attack = attack_label(str(info.get("name")), info["params"])
        f, b = pd.Series(acc["forwards"], dtype=float), pd.Series(acc["backwards"], dtype=float)
        rows.append([data.name(model_key), attack, f"{f.mean():.1f}", f"{int(f.sum())}", f"{b.mean():.1f}",
                     f"{int(b.sum())}", f"{(f + b).mean():.1f}", str(len(f)), str(acc["ambiguous"])])
        tidy.append({"model": data.name(model_key), "attack": attack, "eval_key": eval_key,
                     "forwards_mean": f.mean(), "forwards_total": int(f.sum()), "backwards_mean": b.mean(),
                     "backwards_total": int(b.sum()), "queries_mean": (f + b).mean(), "n": len(f),
                     "ambiguous_rows": acc["ambiguous"]})
    return Table("queries", "What each attack cost: forward and backward passes per sample",
                 ["model", "attack", "forwards / sample", "forwards", "backwards / sample", "backwards",
                  "queries / sample", "n", "ambiguous rows"], rows, pd.DataFrame(tidy),
                 protocol=["Counted through one wrapper around the model (AttackBench's protocol), the attacks "
                           "unchanged; each row of a model call is given to the nearest clean image of its unit "
                           "(a row about equally close to two is counted as ambiguous). The two classifications "
                           "that score the attack (clean and adversarial) are not counted."])


def indicators_table(data: RunData) -> Table | None:
    """Pintor et al.'s indicators of attack failure per model and attack evaluation, from the per-sample values
    each unit stored (``attacks.indicators``): the verdicts that tell "the attack stalled" from "the model is
    robust". None when the run stored none."""
    per: dict[tuple[str, str], dict[str, list]] = {}
    for key, value in data.meta.items():
        if not key.startswith(PREFIX) or not isinstance(value, dict) or not isinstance(value.get("indicators"), dict):
            continue
        _, model_key, eval_key, _unit = key.split("/", 3)
        acc = per.setdefault((model_key, eval_key), {})
        for name, values in value["indicators"].items():
            acc.setdefault(name, []).extend(values)
    if not per:
        return None
    rows, tidy = [], []
    for (model_key, eval_key), values in sorted(per.items(), key=lambda kv: (data.name(kv[0][0]), kv[0][1])):
        info = data.info(eval_key)
        attack = attack_label(str(info.get("name")), info["params"])
        for r in verdicts(values, f"{attack} on {data.name(model_key)}"):
            rows.append([data.name(model_key), attack, r.name, r.status.upper(), r.message])
            tidy.append({"model": data.name(model_key), "attack": attack, "indicator": r.name, "status": r.status,
                         "message": r.message, **{k: v for k, v in r.details.items()}})
    return Table("indicators", "Indicators of attack failure", ["model", "attack", "indicator", "verdict", "what"],
                 rows, pd.DataFrame(tidy),
                 protocol=["Pintor et al., NeurIPS 2022, on the samples each attack did not break: silent success "
                           "(an adversarial point on the path not returned), zero gradients (the attack stalled: "
                           "FAIL above half the steps), incomplete optimization (break-point alignment above 0.95), "
                           "noisy gradients (increasing loss, WARN above 0.2). Paths are the model's margins at "
                           "every call of the attack, recorded through the counting wrapper."])
