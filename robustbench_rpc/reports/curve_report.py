"""The report's curve section: robust accuracy vs eps from a ``kind = "curve"`` evaluation's stored rows.

Per curve and model: the minimum-norm attacks of the curve (those without ``eps``) give per-sample minimal
norms (``curves.minimal_norms_from_rows``: a never-broken sample is inf); their per-sample best gives the
curve (Wilson 95 % intervals), the median minimal norm (bootstrap interval) and each attack's AttackBench
optimality. Each fixed-budget attack of the curve (with ``eps``) is set beside the curve at its eps: its robust
accuracy, the curve's there, and the samples it broke that the curve says survive beyond eps ("not tight").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evalspec import eps_label
from .curves import curve, median_norm, minimal_norms_from_rows, not_tight, optimality, per_sample_best
from .data import RunData, slug
from .plots import Plot, _save, plt
from .render import Table

COLUMNS = ("sample_id", "correct1", "clean_correct1", "linf", "l2", "l1", "l0")  # the norm columns: store.rows


def _curve_evals(data: RunData) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for _, row in data.evals_of("attack").iterrows():
        info = data.info(row["eval_key"])
        name = info["params"].get("curve")
        if name:
            groups.setdefault(str(name), []).append(info)
    return groups


def _rows(data: RunData, model_key: str, eval_key: str) -> pd.DataFrame:
    return data.store.samples(model_key, eval_key, columns=list(COLUMNS)).set_index("sample_id").sort_index()


def _label(info: dict) -> str:
    params = {k: v for k, v in info["params"].items() if k not in ("curve", "norm")}
    inner = ", ".join(f"{k}={eps_label(v, info['params'].get('norm')) if k == 'eps' else v}" for k, v in params.items())
    return f"{info['name']}({inner})" if inner else str(info["name"])


def _axis_label(norm: str, params: dict) -> str:
    """L0 counts changed input values (every channel value separately), not a distance in pixel units."""
    if norm == "L0":
        return "eps (L0: changed input elements, each channel value counted)"
    return f"eps ({norm}, {'normalized' if params.get('space') == 'normalized' else 'pixel'} units)"


def curves_section(data: RunData, out: Path | None) -> tuple[list[Table], list[Plot]]:
    """Tables and plots (under ``out/plots``; none when ``out`` is None: ``benchmark()`` wants the numbers only)
    of every curve of the run; ([], []) when it has none."""
    tables: list[Table] = []
    plots: list[Plot] = []
    for name, infos in _curve_evals(data).items():
        norm = infos[0]["params"]["norm"]
        column = norm.lower()
        minimal = [i for i in infos if i["params"].get("eps") is None]
        fixed = [i for i in infos if i["params"].get("eps") is not None]
        rows, tidy = [], []
        fig, ax = plt.subplots(figsize=(6, 4))
        for model_key in data.model_keys:
            frames = {i["eval_key"]: _rows(data, model_key, i["eval_key"]) for i in infos}
            if not minimal or any(f.empty for f in frames.values()):
                continue
            ids = frames[minimal[0]["eval_key"]].index
            norms = {_label(i): minimal_norms_from_rows(
                frames[i["eval_key"]].reindex(ids)[column].fillna(0).to_numpy(),
                frames[i["eval_key"]].reindex(ids)["clean_correct1"].fillna(0).astype(bool).to_numpy(),
                frames[i["eval_key"]].reindex(ids)["correct1"].astype(bool).to_numpy()) for i in minimal}
            best = per_sample_best(norms)
            finite = best[np.isfinite(best)]
            top = float(finite.max()) if finite.size else 1.0
            grid = sorted({*np.linspace(0, top * 1.05, 41).tolist(), *(float(i["params"]["eps"]) for i in fixed)})
            pts = curve(best, grid)
            med, lo, hi = median_norm(best)
            model = data.name(model_key)
            line = ax.plot([p.eps for p in pts], [100 * p.robust_accuracy for p in pts], label=model)[0]
            ax.fill_between([p.eps for p in pts], [100 * p.lo for p in pts], [100 * p.hi for p in pts],
                            color=line.get_color(), alpha=0.15)
            for attack, values in norms.items():
                opt = optimality(values, best)
                rows.append([model, attack, "minimum-norm", f"{med:.4g} [{lo:.4g}, {hi:.4g}]", f"{opt:.3f}", "", "",
                             ""])
                tidy.append({"curve": name, "model": model, "attack": attack, "kind": "minimum-norm",
                             "median_norm": med, "median_lo": lo, "median_hi": hi, "optimality": opt})
            for i in fixed:
                eps = float(i["params"]["eps"])
                f = frames[i["eval_key"]].reindex(ids)
                broken = (f["clean_correct1"].fillna(0).astype(bool) & ~f["correct1"].astype(bool)).to_numpy()
                at = curve(best, [eps])[0]
                flagged = not_tight(best, broken, eps)
                acc = float(f["correct1"].mean())
                ax.scatter([eps], [100 * acc], color=line.get_color(), marker="x")
                at_text = f"{100 * at.robust_accuracy:.1f} [{100 * at.lo:.1f}, {100 * at.hi:.1f}]"
                rows.append([model, _label(i), f"fixed eps {eps:.4g}", "", "", f"{100 * acc:.1f}", at_text,
                             f"{len(flagged)}" + (" (not tight)" if len(flagged) else "")])
                tidy.append({"curve": name, "model": model, "attack": _label(i), "kind": "fixed-budget", "eps": eps,
                             "robust_accuracy": acc, "curve_at_eps": at.robust_accuracy, "curve_lo": at.lo,
                             "curve_hi": at.hi, "not_tight": len(flagged)})
        if not rows:
            plt.close(fig)
            continue
        ax.set_xlabel(_axis_label(norm, infos[0]["params"]))
        ax.set_ylabel("robust accuracy (%)")
        ax.legend(fontsize=8)
        table_name = f"curve_{slug(name)}"
        tables.append(Table(
            table_name, f"Robust accuracy vs eps: {name}",
            ["model", "attack", "kind", "median minimal norm [95% CI]", "optimality", "robust acc. at eps (%)",
             "curve at eps (%) [95% CI]", "broken beyond the curve"],
            rows, pd.DataFrame(tidy),
            protocol=[f"Per-sample minimal {norm} norm: the smallest over the curve's minimum-norm attacks (0 if "
                      "misclassified clean; never broken: infinitely far). Curve: share of samples whose minimal norm "
                      "exceeds eps, Wilson 95 % intervals. Optimality: AttackBench's (1 = the per-sample best).",
                      "Fixed-budget rows: robust accuracy at their eps beside the curve's; 'broken beyond the curve' "
                      "counts samples they broke at eps that the minimum-norm attacks say survive beyond it (those "
                      "attacks were not tight there)."]
            + (["L0: the number of changed input values of the perturbation, each channel value counted separately "
                "(foolbox's L0 and FMN-L0's count)."] if norm == "L0" else [])))
        if out is None:
            plt.close(fig)
            continue
        plots.append(_save(fig, Path(out) / "plots", table_name, f"Robust accuracy vs eps: {name}",
                           "From the per-sample minimal norms (band: Wilson 95 %); x: fixed-budget attacks."))
    return tables, plots
