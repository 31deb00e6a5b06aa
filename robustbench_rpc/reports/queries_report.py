"""The report's cost table: forwards and backwards per sample of every attack evaluation, as the run stored
them (``queries/<model_key>/<eval_key>/<unit>`` in the run's meta, counted by ``attacks.accounting`` through one
model wrapper, the attacks unchanged): mean per sample and total, per model and attack."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..attacks.indicators import EVAL_CHECKS, stalled_or_robust
from ..evalspec import attack_label
from .data import RunData, slug
from .plots import Plot, _save, plt
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
    """Pintor et al.'s indicators of attack failure per model and attack evaluation, as the run's trust checks
    recorded them (``attacks.indicators``, written by the harness per attack evaluation): one verdict per row
    that tells "the attack stalled" from "the model is robust". None when the run recorded none."""
    ck = data.checks
    if ck.empty:
        return None
    ck = ck[ck["check"].isin(EVAL_CHECKS) & ck["eval_key"].map(lambda e: isinstance(e, str) and bool(e))]
    if ck.empty:
        return None
    judged_n = ck["details"].map(lambda d: d.get("n", 0) if isinstance(d, dict) else 0)
    ck = ck[judged_n.groupby([ck["model_key"], ck["eval_key"]]).transform("max") > 0]  # an older store's empty rows
    if ck.empty:
        return None
    judged = set(zip(ck["model_key"], ck["eval_key"]))
    stored = {tuple(k.split("/", 3)[1:3]) for k, v in data.meta.items()
              if k.startswith(PREFIX) and isinstance(v, dict) and isinstance(v.get("indicators"), dict)}
    unjudged = len(stored - judged)
    rows, tidy = [], []
    for (model_key, eval_key), group in sorted(ck.groupby(["model_key", "eval_key"]),
                                               key=lambda kv: (data.name(kv[0][0]), kv[0][1])):
        info = data.info(eval_key)
        attack = attack_label(str(info.get("name")), info["params"])
        statuses = dict(zip(group["check"], group["status"]))
        details = dict(zip(group["check"], group["details"]))
        n = next((d.get("n") for d in details.values() if isinstance(d, dict) and "n" in d), None)
        incomplete = details.get("incomplete_optimization")
        verdict = stalled_or_robust(statuses, incomplete.get("share", 0.0) if isinstance(incomplete, dict) else 0.0)
        cells = [statuses.get(c, "").upper() or "-" for c in EVAL_CHECKS]
        rows.append([data.name(model_key), attack, "" if n is None else str(n), verdict, *cells])
        tidy.append({"model": data.name(model_key), "attack": attack, "eval_key": eval_key, "unbroken": n,
                     "verdict": verdict, **{c: statuses.get(c) for c in EVAL_CHECKS},
                     "messages": " | ".join(m for m, st in zip(group["message"], group["status"]) if st != "pass")})
    return Table("indicators", "Indicators of attack failure: attack stalled or model robust?",
                 ["model", "attack", "unbroken samples", "verdict", *EVAL_CHECKS], rows, pd.DataFrame(tidy),
                 protocol=["Pintor et al., NeurIPS 2022 (formulas of pralab/IndicatorsOfAttackFailure as last "
                           "revised), on the samples each attack did not break, from the path the counting wrapper "
                           "recorded (the model's margin at every call of the attack). silent_success: an "
                           "adversarial point on the path was not returned (FAIL if any). zero_gradients: the "
                           "attack's loss had a zero input gradient (FAIL above half the steps: the attack "
                           "stalled). incomplete_optimization: the best margin so far still fell by more than "
                           "0.05 (rescaled) over the last 10 calls (WARN above 10 % of the samples: the accuracy "
                           "is an upper bound more steps may lower). transfer_failure (transfer attacks): fooled "
                           "the surrogate, not the model. The model-wide indicators are the checks table's "
                           "differentiability, unstable_predictions, stochastic_model and large_eps."],
                 notes=[f"Not listed: {unjudged} model and attack pairs with nothing to judge (every sample broken, "
                        "or one model call per sample, as FGSM makes)."] if unjudged else [])


def _median_path(paths: list[list[float]], grid: np.ndarray) -> np.ndarray:
    """The per-position median of paths of any length, each read at the same fractions of its calls."""
    return np.median(np.stack([np.interp(grid, np.linspace(0, 1, len(p)), p) for p in paths]), axis=0)


def trace_plots(data: RunData, folder: Path) -> list[Plot]:
    """Per model, the median margin (true - best other logit) of the samples each attack did not break, along
    the attack's calls (the paths each unit stored, ``attacks.indicators.compact_traces``): a line that never
    moves is an attack that stalled, one still falling at the end an attack stopped early, one that levels off
    above 0 a model that resisted. [] when the run stored no paths."""
    per: dict[str, dict[str, list]] = {}
    for key, value in data.meta.items():
        if not key.startswith(PREFIX) or not isinstance(value, dict) or not isinstance(value.get("traces"), list):
            continue
        _, model_key, eval_key, _unit = key.split("/", 3)
        per.setdefault(model_key, {}).setdefault(eval_key, []).extend(p for p in value["traces"] if p)
    plots = []
    grid = np.linspace(0, 1, 41)
    for model_key, evals in sorted(per.items(), key=lambda kv: data.name(kv[0])):
        evals = {e: paths for e, paths in evals.items() if paths}
        if not evals:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.6 + 0.17 * len(evals)))
        for eval_key, paths in sorted(evals.items(), key=lambda kv: str(data.info(kv[0]).get("name"))):
            info = data.info(eval_key)
            ax.plot(grid, _median_path(paths, grid), label=f"{attack_label(str(info.get('name')), info['params'])} "
                    f"(n={len(paths)})")
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("fraction of the attack's calls")
        ax.set_ylabel("median margin of the unbroken samples")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), frameon=False)  # below: paths stay seen
        name = data.name(model_key)
        plots.append(_save(fig, Path(folder), f"attack_paths_{slug(name)}", f"Attack paths: {name}",
                           "Median margin (true logit - best other; below 0 is adversarial) of the samples each "
                           "attack did not break, at the same fractions of each sample's calls. Flat from the "
                           "start: the attack stalled; still falling at the end: it stopped early; levelled off "
                           "above 0: the model resisted it (see the indicators table)."))
    return plots
