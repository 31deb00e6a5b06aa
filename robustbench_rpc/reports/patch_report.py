"""The report's patch section: accuracy against the number of corrupted patches, per threat and model, with each
model's paired difference from the reference model on the same images.

A patch evaluation is a Patch-Fool or adversarial-patch attack (k = ``n_patches``, or the number of pasted
copies) or a random-patch corruption (``patch_noise``, ``patch_shuffle``; k = the severity). k = 0 is the run's
clean evaluation. The table answers the question RPC-Attention's robust-PCA design raises directly: does a
sparse corruption of a few tokens hurt it less than the baseline? (``docs/patches.md``.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .. import metrics
from .compute import _corruption_of, acc_stats
from .data import RunData, paired
from .plots import _colors, _save, plt
from .protocol import patch_threat
from .render import Table, fmt_ci, fmt_delta, fmt_p

TABLE = "patches"
PLOT = "patches_acc_vs_k"


def _items(data: RunData) -> list[tuple[str, int, str]]:
    """(threat, k, eval_key) of every patch evaluation, and ("clean", 0, key) for the run's clean evaluation
    on the same dataset; sorted by threat, then k."""
    found, datasets = [], set()
    for key in data.evals["eval_key"] if not data.evals.empty else []:
        info = data.info(key)
        if info.get("kind") not in ("attack", "corruption"):
            continue
        name = _corruption_of(info) if info["kind"] == "corruption" else str(info.get("name"))
        threat = patch_threat(name, info["params"])
        if threat is not None:
            found.append((*threat, key))
            datasets.add(info.get("dataset"))
    if not found:
        return []
    clean = [k for k in data.evals_of("clean")["eval_key"] if data.info(k).get("dataset") in datasets][:1]
    return [("clean", 0, k) for k in clean] + sorted(found, key=lambda t: (t[0], t[1]))


def patch_section(data: RunData, out: Path) -> tuple[list[Table], list]:
    """The ``patches`` table and its plot; nothing for a run without patch evaluations."""
    items = _items(data)
    if not items:
        return [], []
    models, ref = data.model_keys, data.reference_key
    others = [m for m in models if m != ref] if ref in models else []
    columns = ["threat", "patches (k)", *[data.name(m) for m in models]]
    for m in others:
        columns += [f"{data.name(m)} - {data.name(ref)} (95% CI)", "McNemar p"]
    columns.append("n")
    rows, tidy, curves = [], [], {}
    for threat, k, key in items:
        row, n, start = [threat, str(k)], 0, len(tidy)
        outcomes = {m: data.outcomes(m, key) for m in models}
        for m in models:
            frame = outcomes[m]
            acc, lo, hi = acc_stats(frame["correct1"]) if len(frame) else (np.nan, np.nan, np.nan)
            row.append(fmt_ci(acc, lo, hi))
            n = max(n, len(frame))
            tidy.append({"threat": threat, "k": k, "model": data.name(m), "accuracy": acc, "lo": lo, "hi": hi,
                         "n": len(frame), "eval_key": key})
            curves.setdefault(threat, {}).setdefault(m, []).append((k, acc, lo, hi))
        for m in others:
            a, b, common, _ = paired(outcomes[m], outcomes[ref])
            if common:
                delta, lo, hi = metrics.paired_delta_ci(a, b)
                p = metrics.mcnemar(a, b)["p_value"]
                row += [fmt_delta(delta, lo, hi), fmt_p(p)]
                tidy[start + models.index(m)].update(delta=delta, delta_lo=lo, delta_hi=hi, p_value=p)
            else:
                row += [None, None]
        rows.append(row + [str(n)])
    protocol = ["Accuracy in % (top-1; under attack: correct on the clean image and on the attacked one) with the "
                "95% Wilson interval; k = 0 is the clean evaluation",
                "k: the number of patches an attack may change (Patch-Fool's n_patches, an adversarial patch's pasted "
                "copies) or a corruption replaces (its severity)"]
    if others:
        protocol.append(f"Paired difference from the reference model {data.name(ref)} on the same images, in "
                        "percentage points, with Newcombe's 95% interval, and McNemar's exact p")
    table = Table(TABLE, "Accuracy against the number of corrupted patches", columns, rows, pd.DataFrame(tidy),
                  protocol=protocol)
    plot = _plot(data, curves, out)
    return [table], [plot] if plot is not None else []


def _plot(data: RunData, curves: dict, out: Path):
    clean = curves.pop("clean", {})
    if not curves:
        return None
    threats = sorted(curves)
    ncols = min(3, len(threats))
    nrows = -(-len(threats) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False, sharey=True)
    colors = _colors(data)
    for ax, threat in zip(axes.ravel(), threats):
        for m, points in curves[threat].items():
            pts = sorted(clean.get(m, []) + points)
            ks = [p[0] for p in pts]
            acc = np.array([p[1] for p in pts]) * 100
            err = np.array([[p[1] - p[2], p[3] - p[1]] for p in pts]).T * 100
            ax.errorbar(ks, acc, yerr=err, marker="o", ms=4, capsize=3, color=colors[m], label=data.name(m))
        ax.set_title(threat, fontsize=9)
        ax.set_xlabel("corrupted patches (k)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-2, 102)
    for ax in axes.ravel()[len(threats):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1 / nrows, 1, 1))
    return _save(fig, Path(out) / "plots", PLOT, "Accuracy against the number of corrupted patches",
                 "Top-1 accuracy with 95% Wilson bars, per threat; k = 0 is the clean accuracy.")
