"""Diagnostics to files: ``diagnostics.csv`` (one row per model, input, layer, head, iteration),
``diagnostics_axes.csv`` (eq11 per principal axis), ``kpca_claims.csv`` (when the reproduction study's
checks ran) and plots (PNG + SVG)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

CSV_COLUMNS = ("model", "input", "input_detail", "layer", "head", "iteration", "s_fraction", "s_to_k_l1",
               "residual", "l_change", "dual_rel", "mu", "threshold", "mean_abs_k", "threshold_to_mean_abs_k",
               "lam", "n_iter", "proj_loss", "proj_error", "eq11_absdiff_mean", "eq11_absdiff_std",
               "eq11_gamma_abs_mean", "gram_eig_max", "accuracy", "n")
AXIS_COLUMNS = ("model", "input", "input_detail", "layer", "head", "iteration", "axis", "eq11_absdiff_mean",
                "eq11_absdiff_std", "eq11_gamma_abs_mean", "accuracy", "n")
PAP_METRICS = (("s_fraction", "fraction of K entries in S"), ("s_to_k_l1", "||S||_1 / ||K||_1"),
               ("residual", "||K-L-S||_F / ||K||_F"), ("threshold_to_mean_abs_k", "lambda*mu / mean|K|"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "x"


def frame(rows: list[dict[str, Any]], columns: tuple[str, ...] = CSV_COLUMNS) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = float("nan")
    return df[list(columns) + [c for c in df.columns if c not in columns]]


def pap_plot(df: pd.DataFrame, model: str, folder: Path, name: str | None = None):
    """PAP statistics vs iteration for one model: one panel per metric, a line per (input, layer),
    averaged over heads. Returns (png, svg) or None when the model has no PAP rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    d = df[(df["model"] == model) & (df["iteration"] >= 1)].dropna(subset=["s_fraction"])
    if d.empty:
        return None
    g = d.groupby(["input", "layer", "iteration"], sort=True)[[m for m, _ in PAP_METRICS]].mean().reset_index()
    fig, axes = plt.subplots(1, len(PAP_METRICS), figsize=(3.6 * len(PAP_METRICS), 3.2), squeeze=False)
    styles = {"clean": "-", "attack": "--", "corruption": ":"}
    for ax, (metric, title) in zip(axes[0], PAP_METRICS):
        for (inp, layer), part in g.groupby(["input", "layer"], sort=False):
            ax.plot(part["iteration"], part[metric], styles.get(inp, "-."), marker="o", ms=3,
                    label=f"{inp}, layer {layer}")
        ax.set_title(title)
        ax.set_xlabel("PAP iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"PAP iterates: {model} (mean over heads and images)", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder, name or f"diagnostics_pap_{_slug(model)}")


def kpca_plot(df: pd.DataFrame, axes_df: pd.DataFrame, model: str, folder: Path, name: str | None = None):
    """Projection loss per layer and the eq. 11 pairwise |gamma differences| per principal axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[(df["model"] == model) & (df["iteration"] == 0)]
    a = axes_df[axes_df["model"] == model] if not axes_df.empty else axes_df
    if d.empty or (d["proj_loss"].isna().all() and d["eq11_absdiff_mean"].isna().all()):
        return None
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
    ax = axs[0][0]
    g = d.groupby(["input", "layer"])["proj_loss"].mean().reset_index()
    for inp, part in g.groupby("input", sort=False):
        ax.plot(part["layer"], part["proj_loss"], marker="o", label=inp)
    ax.set_title("projection loss (Sec. 2.2.1), mean over heads")
    ax.set_xlabel("layer")
    ax.legend(fontsize=7, frameon=False)
    ax = axs[0][1]
    if not a.empty:
        ga = a[a["input"] == "clean"].groupby(["layer", "axis"])[["eq11_absdiff_mean", "eq11_absdiff_std"]]
        ga = ga.mean().reset_index()
        for layer, part in ga.groupby("layer"):
            ax.errorbar(part["axis"], part["eq11_absdiff_mean"], yerr=part["eq11_absdiff_std"], marker="o", ms=3,
                        capsize=2, label=f"layer {layer}")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=7, frameon=False)
    ax.set_title("eq. 11: |gamma_i - gamma_j| per axis (clean)")
    ax.set_xlabel("principal axis (value dim)")
    fig.suptitle(f"KPCA diagnostics: {model}", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder, name or f"diagnostics_kpca_{_slug(model)}")


def _save(fig, folder: Path, name: str):
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png, svg


def write_outputs(rows: list[dict[str, Any]], axis_rows: list[dict[str, Any]], out: str | Path,
                  plots: bool = True) -> dict[str, Path]:
    """Write the CSVs and (optionally) one PAP and one KPCA plot per model into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df, adf = frame(rows), frame(axis_rows, AXIS_COLUMNS)
    paths = {"csv": out / "diagnostics.csv", "axes_csv": out / "diagnostics_axes.csv"}
    df.to_csv(paths["csv"], index=False)
    adf.to_csv(paths["axes_csv"], index=False)
    if plots:
        for model in dict.fromkeys(df["model"]):
            for kind, res in (("pap", pap_plot(df, model, out / "plots")),
                              ("kpca", kpca_plot(df, adf, model, out / "plots"))):
                if res is not None:
                    paths[f"{kind}:{model}:png"], paths[f"{kind}:{model}:svg"] = res
    return paths
