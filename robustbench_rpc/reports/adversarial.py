"""Report section for adversarial sets: external evaluations, the transfer matrix (tables and heat maps)
and the gallery of images (``reports/gallery.py``).

``adversarial_section(data, out) -> (tables, plots)`` is all the report builder calls; it reads the run's
store (and, for the gallery, the saved images under ``adversarial/``) and returns nothing for a run
without external or transfer evaluations or attacks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics
from ..evalspec import eps_label
from .data import RunData, slug
from .plots import Plot, _save
from .render import Table, fmt_ci
from ..evaluation.transfer import transfer_cells
from .gallery import gallery_plots


def external_table(data: RunData) -> Table | None:
    """One row per (model, external evaluation): the set, its threat model, clean and robust accuracy."""
    evals = data.evals_of("external")
    if evals.empty:
        return None
    rows, tidy = [], []
    for ek in evals["eval_key"]:
        info = data.info(ek)
        p = info["params"]
        for mk in data.model_keys:
            s = data.store.samples(mk, ek)
            if s.empty:
                continue
            complete = len(s) == info.get("n_samples")
            acc, lo, hi = metrics.accuracy_ci(s["correct1"].to_numpy().astype(bool))
            clean = s["clean_correct1"].astype(float).to_numpy()
            c, clo, chi = metrics.accuracy_ci(clean.astype(bool))
            rows.append([data.name(mk), f"{p.get('adversarial_format')} sha256 {str(p.get('adversarial_sha256'))[:12]}",
                         f"{p.get('norm')} {eps_label(p.get('eps'), p.get('norm'))}", fmt_ci(c, clo, chi), fmt_ci(acc, lo, hi),
                         str(len(s)), "yes" if complete else "no"])
            tidy.append({"model": data.name(mk), "eval_key": ek, "external": True,
                         "adversarial_sha256": p.get("adversarial_sha256"), "format": p.get("adversarial_format"),
                         "norm": p.get("norm"), "eps": p.get("eps"), "clean": c, "clean_lo": clo, "clean_hi": chi,
                         "robust": acc, "robust_lo": lo, "robust_hi": hi, "n": len(s), "complete": complete})
    if not rows:
        return None
    return Table("external", "External evaluations (given adversarial sets)",
                 ["Model", "Set", "Threat", "Clean (%)", "Robust (%)", "n", "Complete"], rows, pd.DataFrame(tidy),
                 protocol=["Robust accuracy as RobustBench counts it: correct on the clean image AND on the given "
                           "adversarial image, top-1, 95% Wilson interval",
                           "Every given image was checked against its clean image before compute: sample ids, shape, "
                           "[0, 1] and the budget with float rounding (PNG sets: half an 8-bit step allowed)",
                           "The set is identified by its sha256 (of the file, or of a PNG folder's files)"])


def transfer_frame(data: RunData) -> pd.DataFrame:
    return pd.DataFrame(transfer_cells(data.store))


def _axes(part: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Sources in the run's model order, targets in the same order (the diagonal on the diagonal)."""
    sources = list(dict.fromkeys(part["source"]))
    found = set(part["target"])
    return sources, [s for s in sources if s in found] + [t for t in dict.fromkeys(part["target"]) if t not in sources]


def transfer_tables(df: pd.DataFrame) -> list[Table]:
    """A source x target table per (attack evaluation, float / 8-bit)."""
    if df.empty:
        return []
    out = []
    for (ek, quantized), part in df.groupby(["source_eval", "quantized"], sort=False):
        first = part.iloc[0]
        sources, targets = _axes(part)
        cell = {(r.source, r.target): r for r in part.itertuples()}
        rows = []
        for s in sources:
            row = [s]
            for t in targets:
                r = cell.get((s, t))
                text = fmt_ci(r.accuracy, r.lo, r.hi) if r is not None else None
                row.append(f"{text} (white-box)" if text and s == t else text)
            rows.append(row)
        what = f"{first['attack']} {first['norm']} eps={eps_label(first['eps'], first['norm'])}"
        out.append(Table(f"transfer_{slug(what)}{'_8bit' if quantized else ''}",
                         f"Transfer matrix: {what}{', rounded to 8 bits' if quantized else ''}",
                         ["Source \\ target"] + targets, rows, part.reset_index(drop=True),
                         protocol=["Robust accuracy (%) of each target model (columns) on the adversarial images "
                                   "saved from each source model (rows), 95% Wilson interval; the diagonal is the "
                                   "white-box attack itself (equal to its own row in the attack table)",
                                   "No attack is run again: every target reads the source's saved float32 images"
                                   + ("; here rounded to 8 bits as a PNG file stores them" if quantized else "")]))
    return out


def transfer_plots(df: pd.DataFrame, folder: Path) -> list[Plot]:
    import matplotlib.pyplot as plt

    plots = []
    for (ek, quantized), part in df.groupby(["source_eval", "quantized"], sort=False) if not df.empty else ():
        first = part.iloc[0]
        sources, targets = _axes(part)
        grid = np.full((len(sources), len(targets)), np.nan)
        for r in part.itertuples():
            grid[sources.index(r.source), targets.index(r.target)] = 100 * r.accuracy
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(targets), 0.9 + 0.6 * len(sources)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i in range(len(sources)):
            for j in range(len(targets)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < 50 else "black",
                            fontweight="bold" if sources[i] == targets[j] else "normal")
                if sources[i] == targets[j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_xlabel("target model")
        ax.set_ylabel("source model")
        fig.colorbar(im, ax=ax, label="robust accuracy (%)")
        what = f"{first['attack']} {first['norm']} eps={eps_label(first['eps'], first['norm'])}"
        fig.tight_layout()
        plots.append(_save(fig, folder, f"transfer_{slug(what)}{'_8bit' if quantized else ''}_heatmap",
                           f"Transfer heat map: {what}{', 8-bit' if quantized else ''}",
                           "Robust accuracy (%) of each target on each source's saved images; red squares: "
                           "white-box (source = target)."))
    return plots


def adversarial_section(data: RunData, out: Path) -> tuple[list[Table], list[Plot]]:
    tables: list[Table] = [t for t in (external_table(data),) if t is not None]
    df = transfer_frame(data)
    tables += transfer_tables(df)
    plots = transfer_plots(df, Path(out) / "plots")

    plots += gallery_plots(data, Path(out) / "plots")
    return tables, plots
