"""Report section: the paper's kernel-PCA evidence and the reproduction study's checks, claim by claim.

The paper (Teo & Nguyen, NeurIPS 2024) reads self-attention as kernel PCA; the reproduction study (Saritas &
Yildiz, ACL 2025 SRW, arXiv 2505.07908) contests three pieces of its evidence. For every model and input
whose run stored both sides' diagnostics, ``claims_table`` prints each claim with the paper's number(s), the
study's number(s) and a one-line reading with the threshold it applies; ``claims_plots`` draws, per model,
the alignment per layer, the two reconstruction terms per layer on one log axis, and the eigenvalue
statistics per adjustment.

Intervals: the study's quantities are stored with their mean square over images (``diagnostics/moments``),
so they are given as mean +- sd over (image, head) pairs with a normal 95 % interval of the mean. The
paper's quantities are per head only (the projection loss is the log of a mean over images), so their
spread is over (layer, head) rows.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..diagnostics.kpca_alignment import ALIGNMENT_METRICS
from ..diagnostics.kpca_eigen import EIG_STATS, VARIANTS
from ..diagnostics.moments import SQ, pooled
from .data import slug
from .plots import Plot, _save
from .render import Table

#: the study's reported maxima over 10 ImageNet ViTs/DeiTs (optimal cosine, linear CKA, kernel CKA)
STUDY_MAXIMA = {"align_cos_optimal": 0.32, "align_linear_cka": 0.11, "align_kernel_cka": 0.32}
ALIGNED, UNALIGNED = 0.8, 0.5          # alignment reading: all >= ALIGNED / all <= UNALIGNED
CONSTANT_GAMMA = 0.1                   # Eq. 11 reading: mean |gamma_i - gamma_j| / mean |gamma| below this
ORDERS_APART = 2.0                     # reconstruction reading: |log10(phi / h)| at or above this
ADJUSTMENT_MATTERS = 0.10              # eigenvalue reading: relative change of a statistic above this
LABELS = {"align_cos_direct": "direct cosine", "align_cos_optimal": "optimal-matching cosine",
          "align_linear_cka": "linear CKA", "align_kernel_cka": "kernel CKA (RBF)",
          "align_rel_frob": "relative Frobenius diff."}
ADJUSTMENTS = {"no_std": "key standardisation", "no_eps": "eps in g g^T + eps", "abs_sort": "sorting by |eig|"}
VARIANT_LABELS = {"study": "study's setting", "no_std": "no key standardisation", "no_eps": "eps = 0",
                  "abs_sort": "sorted by |eig|", "plain": "none (the equation)"}


def has_claims(df: pd.DataFrame) -> bool:
    return not df.empty and "align_cos_optimal" in df and df["align_cos_optimal"].notna().any()


def _pool(part: pd.DataFrame, metric: str) -> dict[str, float]:
    n = int(part["n"].max()) if "n" in part and part["n"].notna().any() else 1
    return pooled(part[metric].tolist(), part[metric + SQ].tolist(), n)


def _over_rows(values: pd.Series) -> dict[str, float]:
    v = values.dropna().astype(float)
    if v.empty:
        return {"mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = 1.96 * sd / math.sqrt(len(v))
    return {"mean": float(v.mean()), "sd": sd, "lo": float(v.mean()) - half, "hi": float(v.mean()) + half,
            "n": len(v)}


def _g(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


def _fmt(s: dict[str, float]) -> str:
    return f"{_g(s['mean'])} ± {_g(s['sd'])} [{_g(s['lo'])}, {_g(s['hi'])}]"


def _alignment_claim(part: pd.DataFrame) -> tuple[list[tuple[str, str, dict]], str]:
    quantities = [("study", LABELS[m], _pool(part, m)) for m in ALIGNMENT_METRICS]
    spread = part["eq11_absdiff_mean"] / part["eq11_gamma_abs_mean"] if "eq11_absdiff_mean" in part else None
    if spread is not None and spread.notna().any():
        quantities.insert(0, ("paper", "Eq. 11 |γi-γj| / |γ| (heads)", _over_rows(spread)))
    core = {m: _pool(part, m)["mean"] for m in STUDY_MAXIMA}
    if all(v >= ALIGNED for v in core.values()):
        reading = f"aligned (cos, CKAs >= {ALIGNED}): supports the paper"
    elif all(v <= UNALIGNED for v in core.values()):
        reading = f"no alignment (cos, CKAs <= {UNALIGNED}): supports the study"
    else:
        reading = "partial alignment: settles neither side"
    if spread is not None and spread.notna().any():
        rel = float(spread.mean())
        reading += f"; Eq. 11 gamma {'constant' if rel < CONSTANT_GAMMA else 'not constant'} (spread {_g(rel)})"
    return quantities, reading


def _reconstruction_claim(part: pd.DataFrame) -> tuple[list[tuple[str, str, dict]], str]:
    phi, h = _pool(part, "recon_phi_norm"), _pool(part, "recon_h_norm")
    quantities = []
    if "proj_loss" in part and part["proj_loss"].notna().any():
        quantities.append(("paper", "projection loss log(mean err) (heads)", _over_rows(part["proj_loss"])))
    quantities += [("study", "||φ(q)||²", phi), ("study", "||h||²", h),
                   ("study", "rel. error w.r.t. ||h||²", _pool(part, "recon_rel_error_wrt_h")),
                   ("study", "rel. error w.r.t. ||φ(q)||²", _pool(part, "recon_rel_error_wrt_phi"))]
    if phi["mean"] > 0 and h["mean"] > 0:
        orders = math.log10(phi["mean"] / h["mean"])
        bigger = "||φ(q)||²" if orders > 0 else "||h||²"
        if abs(orders) >= ORDERS_APART:
            reading = f"terms 10^{abs(orders):.1f} apart, the loss is {bigger} alone: supports the study"
        else:
            reading = f"terms within 10^{abs(orders):.1f}: a reconstruction, as the paper reads it"
    else:
        reading = "a term is zero or missing: no reading"
    return quantities, reading


def _eigen_claim(part: pd.DataFrame) -> tuple[list[tuple[str, str, dict]], str]:
    quantities = []
    if "eq11_gamma_abs_mean" in part and part["eq11_gamma_abs_mean"].notna().any():
        quantities.append(("paper", "mean |γ| (Eq. 11 eigenvalue, heads)", _over_rows(part["eq11_gamma_abs_mean"])))
        quantities.append(("paper", "max eigenvalue of K_φ (heads)", _over_rows(part["gram_eig_max"])))
    base = {s: _pool(part, f"eig_study_{s}")["mean"] for s in EIG_STATS}
    changes = {}
    for v in VARIANTS:
        for s in ("max", "mean", "median"):
            quantities.append(("study", f"{s} |eig|, {VARIANT_LABELS[v]}", _pool(part, f"eig_{v}_{s}")))
        if v in ADJUSTMENTS:  # one adjustment switched against the study's setting
            changes[v] = max(abs(_pool(part, f"eig_{v}_{s}")["mean"] / base[s] - 1) if base[s] else math.inf
                             for s in ("max", "mean", "median"))
    matter = {v: c for v, c in changes.items() if c > ADJUSTMENT_MATTERS}
    if matter:
        reading = ("depends on " + ", ".join(f"{ADJUSTMENTS[v]} ({100 * c:.0f} %)" for v, c in matter.items())
                   + ": supports the study")
    else:
        reading = f"adjustments move it <= {100 * max(changes.values()):.1f} %: does not hinge on them"
    return quantities, reading


CLAIMS = (("values are the Gram eigenvectors (Eq. 6, 11)", _alignment_claim),
          ("attention minimises the projection loss (Sec. 2.2.1, Fig. 1)", _reconstruction_claim),
          ("Gram eigenvalue statistics (Eq. 11 figure)", _eigen_claim))


def claims_table(df: pd.DataFrame) -> Table | None:
    """One block of rows per (model, input, claim): each side's numbers and the reading."""
    d = df[df["iteration"] == 0]
    if not has_claims(d):
        return None
    rows, tidy = [], []
    for (mk, inp), part in d.groupby(["model_key", "input"], sort=False):
        part = part.dropna(subset=["align_cos_optimal"])
        if part.empty:
            continue
        model = part["model"].iloc[0]
        for claim, fn in CLAIMS:
            quantities, reading = fn(part)
            for i, (side, label, s) in enumerate(quantities):
                rows.append([model if i == 0 else "", str(inp) if i == 0 else "", claim if i == 0 else "",
                             side, label, _fmt(s), reading if i == 0 else ""])
                tidy.append({"model": model, "model_key": mk, "input": inp, "claim": claim, "side": side,
                             "quantity": label, **{k: s[k] for k in ("mean", "sd", "lo", "hi", "n")},
                             "reading": reading})
    if not rows:
        return None
    columns = ["Model", "Input", "Claim", "Side", "Quantity", "mean ± sd [95% CI]", "Reading"]
    protocol = ["Paper: Teo & Nguyen (NeurIPS 2024), its Reconstruction code and Eq. 11. Study: Saritas & Yildiz "
                "(arXiv 2505.07908), scripts/value_vectors.py, Reconstruction/softmax.py, scripts/eigenvalues.py, "
                "re-implemented and checked against them to 1e-6 (float64).",
                "Study's quantities: mean ± sd over (image, head) pairs of every softmax/symmetric layer, with a "
                "normal 95 % interval of the mean; paper's quantities (per head only): over (layer, head) rows.",
                f"Readings: alignment if optimal cosine, linear and kernel CKA are all >= {ALIGNED}, none if all <= "
                f"{UNALIGNED} (the study's ImageNet models: <= 0.32 / 0.11 / 0.32); Eq. 11 gamma constant if the "
                f"relative spread mean|gamma_i - gamma_j| / mean|gamma| < {CONSTANT_GAMMA}; the reconstruction terms "
                f"apart if |log10(phi/h)| >= {ORDERS_APART} (a decrease over training: train with "
                "validation.diagnostics); an adjustment matters if it moves the max, mean or median eigenvalue by > "
                f"{100 * ADJUSTMENT_MATTERS:.0f} %. Every layer and head: tables/diagnostics_full.csv."]
    return Table("kpca_claims", "Kernel-PCA claims: the paper's evidence and the reproduction study's checks",
                 columns, rows, pd.DataFrame(tidy), protocol)


def _per_layer(part: pd.DataFrame, metric: str) -> pd.DataFrame:
    recs = []
    for layer, lp in part.groupby("layer"):
        recs.append({"layer": layer, **_pool(lp, metric)})
    return pd.DataFrame(recs)


def claims_plots(df: pd.DataFrame, folder: Path, max_models: int = 8) -> list[Plot]:
    """Per model (clean input): alignment per layer; ||phi(q)||^2 and ||h||^2 per layer on one log axis;
    eigenvalue statistics per adjustment. Bands and bars: +- sd over (image, head) pairs."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not has_claims(df):
        return []
    d = df[(df["iteration"] == 0) & (df["input"] == "clean")].dropna(subset=["align_cos_optimal"])
    plots = []
    for mk in list(dict.fromkeys(d["model_key"]))[:max_models]:
        part = d[d["model_key"] == mk]
        model = part["model"].iloc[0]
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6))
        ax = axes[0]
        for m in ALIGNMENT_METRICS:
            pl = _per_layer(part, m)
            ax.plot(pl["layer"], pl["mean"], marker="o", ms=3, label=LABELS[m])
            ax.fill_between(pl["layer"], pl["mean"] - pl["sd"], pl["mean"] + pl["sd"], alpha=0.15)
        for m, v in STUDY_MAXIMA.items():
            ax.axhline(v, color="grey", ls=":", lw=0.8)
        ax.set_title("value vectors vs KPCA prediction (study)", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.1)
        ax.legend(fontsize=6.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 0.92), ncol=2)
        ax = axes[1]
        for m, label, style in (("recon_phi_norm", "||φ(q)||²", {"marker": "o", "ms": 3}),
                                ("recon_h_norm", "||h||²", {"lw": 5, "alpha": 0.4}),  # wide: the difference hides it
                                ("recon_abs_error", "| ||φ(q)||² - ||h||² |", {"ls": "--", "marker": "o", "ms": 2})):
            pl = _per_layer(part, m)
            ax.plot(pl["layer"], pl["mean"], label=label, **style)
            ax.fill_between(pl["layer"], (pl["mean"] - pl["sd"]).clip(lower=pl["mean"] * 1e-3),
                            pl["mean"] + pl["sd"], alpha=0.15)
        ax.set_yscale("log")
        ax.set_title("reconstruction terms per layer (log axis)", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6.5, frameon=False)
        ax = axes[2]
        width = 0.8 / len(VARIANTS)
        x = np.arange(len(EIG_STATS))
        for i, v in enumerate(VARIANTS):
            stats = [_pool(part, f"eig_{v}_{s}") for s in EIG_STATS]
            ax.bar(x + (i - (len(VARIANTS) - 1) / 2) * width, [s["mean"] for s in stats], width,
                   yerr=[s["sd"] for s in stats], capsize=2, label=VARIANT_LABELS[v], error_kw={"lw": 0.6})
        ax.set_xticks(x, [f"{s} |eig|" for s in EIG_STATS])
        ax.set_yscale("log")
        ax.set_title("centered Gram eigenvalues (top d) per adjustment", fontsize=9)
        ax.legend(fontsize=6.5, frameon=False)
        fig.suptitle(f"Kernel-PCA claims: {model} (clean; ± sd over images and heads)", fontsize=10)
        fig.tight_layout()
        plots.append(_save(fig, folder, f"kpca_claims_{slug(model)}", f"Kernel-PCA claims: {model}",
                           "Left: the study's alignment metrics per layer (dotted: the study's maxima on ImageNet "
                           "ViTs). Middle: the two terms of the projection loss per layer on one log axis (the "
                           "paper's own loss, with unscaled dot products, is in the table). Right: eigenvalue "
                           "statistics with and without each adjustment. Bands and bars: ± sd over (image, "
                           "head) pairs."))
    return plots


def training_figure(metrics_csv: str | Path, png: str | Path, title: str = "") -> Path:
    """The paper's Figure 1 over a training (``validation.diagnostics`` with ``projection_loss`` and
    ``kpca_reconstruction_terms`` in the recipe): the paper's projection loss per validated epoch, beside the
    two terms it subtracts on one log axis and the study's relative errors. Reads ``train``'s metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = pd.read_csv(metrics_csv)
    need = [c for c in ("diag_proj_loss", "diag_recon_phi_norm", "diag_recon_h_norm") if c not in m]
    if need:
        raise ValueError(f"{metrics_csv}: no {', '.join(need)}: train with validation.diagnostics = "
                         "[\"projection_loss\", \"kpca_reconstruction_terms\"]")
    m = m.dropna(subset=["diag_recon_h_norm"])
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.4))
    ax = axes[0]
    ax.plot(m["epoch"], m["diag_proj_loss"], marker="o", ms=2.5, color="k", label="paper: log(mean error)")
    ax.set_title("projection loss as the paper's code computes it", fontsize=9)
    ax.set_ylabel("log mean error (unscaled dot products)")
    ax = axes[1]
    ax.plot(m["epoch"], m["diag_recon_phi_norm"], marker="o", ms=2.5, label="||φ(q)||²")
    ax.plot(m["epoch"], m["diag_recon_h_norm"], lw=5, alpha=0.4, label="||h||²")  # wide: the difference hides it
    ax.plot(m["epoch"], m["diag_recon_abs_error"], "--", marker="o", ms=2, lw=1, label="| ||φ(q)||² - ||h||² |")
    ax.set_yscale("log")
    ax.set_title("the two terms (study's scaled form), one log axis", fontsize=9)
    ax = axes[2]
    for col, label in (("diag_recon_rel_error_wrt_h", "|·| / ||h||²"),
                       ("diag_recon_rel_error_wrt_phi", "|·| / ||φ(q)||²")):
        ax.plot(m["epoch"], m[col], marker="o", ms=2.5, label=label)
    ax.set_yscale("log")
    ax.set_title("relative errors (study)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "Projection loss over training (mean over layers and heads, validation images)",
                 fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return png


def write_claims(df: pd.DataFrame, out: Path, plots: bool = True) -> dict[str, Path]:
    """``diagnose``'s ``kpca_claims.csv`` (the report's claims table, tidy) and ``plots/kpca_claims_<model>.png``
    from its diagnostics rows, when both sides of the kernel-PCA claims were computed (else nothing)."""
    d = df.assign(model_key=df["model"]) if "model" in df else df
    table = claims_table(d) if "iteration" in d else None
    if table is None:
        return {}
    paths = {"claims_csv": out / "kpca_claims.csv"}
    table.tidy.to_csv(paths["claims_csv"], index=False)
    if plots:
        for p in claims_plots(d, out / "plots"):
            paths[f"claims:{p.name}:png"], paths[f"claims:{p.name}:svg"] = p.png, p.svg
    return paths
