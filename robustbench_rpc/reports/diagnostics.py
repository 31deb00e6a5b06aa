"""Report section for ``kind = "diagnostics"`` evaluations and [sweep] model grids, self-contained.

``diagnostics_section(data, out) -> (tables, plots, files)`` is all the report builder calls; it reads
only the run's store (diagnostics live in the meta table under ``diagnostics/<model>/<evaluation>``, the
grid's accuracies in the samples table) and returns nothing for a run without either.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import replacing
from .data import RunData, slug
from .plots import Plot, _save
from .render import Table, fmt_ci
from ..diagnostics.output import AXIS_COLUMNS, CSV_COLUMNS, frame, kpca_plot, pap_plot
from .kpca_claims import claims_plots, claims_table

_PREFIX = "diagnostics/"


def diagnostics_frames(data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All stored diagnostics rows (one per model, input, layer, head, iteration) and per-axis rows."""
    rows, axes = [], []
    for key, value in data.meta.items():
        if not key.startswith(_PREFIX) or not isinstance(value, dict):
            continue
        extra = {"model": data.name(value["model_key"]) if value.get("model_key") in data.model_keys
                 else value.get("model"), "model_key": value.get("model_key"), "eval_key": value.get("eval_key")}
        rows += [{**r, **extra} for r in value.get("rows", [])]
        axes += [{**r, **extra} for r in value.get("axis_rows", [])]
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    order = {k: i for i, k in enumerate(data.model_keys)}
    df = frame(rows, CSV_COLUMNS).astype({"layer": int, "head": int, "iteration": int})
    df = df.sort_values(["model_key", "input", "layer", "head", "iteration"],
                        key=lambda s: s.map(order) if s.name == "model_key" else s, kind="stable")
    adf = frame(axes, AXIS_COLUMNS) if axes else pd.DataFrame(columns=list(AXIS_COLUMNS))
    return df.reset_index(drop=True), adf


def _f(v, digits=3):
    return None if v is None or pd.isna(v) else f"{v:.{digits}f}"


def pap_table(df: pd.DataFrame) -> Table | None:
    pap = df.dropna(subset=["s_fraction"])
    if pap.empty:
        return None
    g = pap.groupby(["model_key", "input", "layer", "iteration"], sort=False).agg(
        model=("model", "first"), input_detail=("input_detail", "first"), s_fraction=("s_fraction", "mean"),
        s_to_k_l1=("s_to_k_l1", "mean"), residual=("residual", "mean"), threshold=("threshold", "mean"),
        mean_abs_k=("mean_abs_k", "mean"), accuracy=("accuracy", "first")).reset_index()
    rows, tidy = [], []
    for (mk, inp, layer), part in g.groupby(["model_key", "input", "layer"], sort=False):
        first, last = part.iloc[0], part.iloc[-1]
        rows.append([first["model"], first["input_detail"], str(layer), str(int(last["iteration"])),
                     _f(first["s_fraction"]), _f(last["s_fraction"]), _f(last["s_to_k_l1"]), _f(last["residual"]),
                     _f(last["threshold"]), _f(last["mean_abs_k"]), _f(100 * last["accuracy"], 1)])
        tidy.append({"model": first["model"], "model_key": mk, "input": inp, "input_detail": first["input_detail"],
                     "layer": layer, "iterations": int(last["iteration"]),
                     "s_fraction_first": first["s_fraction"], "s_fraction_last": last["s_fraction"],
                     "s_to_k_l1_last": last["s_to_k_l1"], "residual_last": last["residual"],
                     "threshold": last["threshold"], "mean_abs_k": last["mean_abs_k"],
                     "accuracy_pct": 100 * last["accuracy"]})
    columns = ["Model", "Input", "Layer", "Iters", "S frac. (it 1)", "S frac. (last)", "|S|1/|K|1 (last)",
               "Residual (last)", "lambda*mu", "mean |K|", "Top-1 (%)"]
    protocol = ["PAP statistics from the model's own forward (the path it runs), mean over heads and images: "
                "S frac. = fraction of key entries with S != 0; |S|1/|K|1; residual = ||K-L-S||_F/||K||_F; "
                "the soft threshold lambda*mu next to mean |K|. Every head and iteration: "
                "tables/diagnostics_full.csv."]
    return Table("diagnostics_pap", "Diagnostics: PAP sparsity per layer", columns, rows, pd.DataFrame(tidy), protocol)


def kpca_table(df: pd.DataFrame) -> Table | None:
    k = df[df["iteration"] == 0].dropna(subset=["proj_error", "eq11_absdiff_mean"], how="all")
    if k.empty:
        return None
    g = k.groupby(["model_key", "input", "layer"], sort=False).agg(
        model=("model", "first"), input_detail=("input_detail", "first"), proj_loss=("proj_loss", "mean"),
        eq11=("eq11_absdiff_mean", "mean"), eq11_std=("eq11_absdiff_std", "mean"),
        gamma=("eq11_gamma_abs_mean", "mean"), eig=("gram_eig_max", "mean")).reset_index()
    rows = [[r.model, r.input_detail, str(r.layer), _f(r.proj_loss, 2), _f(r.eq11, 4), _f(r.eq11_std, 4),
             _f(r.gamma, 4), _f(r.eig, 4)] for r in g.itertuples()]
    columns = ["Model", "Input", "Layer", "Projection loss", "Eq.11 |dgamma| mean", "Eq.11 |dgamma| std",
               "mean |gamma|", "max eig K_phi"]
    protocol = ["Softmax / symmetric layers. Projection loss: Sec. 2.2.1 as the paper's Reconstruction code "
                "computes it, log of the mean error, mean over heads. Eq. 11: pairwise |gamma_i - gamma_j| of "
                "gamma = K_phi a / a (constant when the values are Gram eigenvectors), mean over axes and heads; "
                "per axis in tables/diagnostics_axes.csv."]
    return Table("diagnostics_kpca", "Diagnostics: kernel-PCA checks", columns, rows, g, protocol)


def sweep_frame(data: RunData) -> pd.DataFrame:
    """Accuracy (with Wilson CIs) per grid point and evaluation, for models carrying ``sweep`` info."""
    if "sweep" not in data.models:
        return pd.DataFrame()
    recs = []
    for _, mrow in data.models.iterrows():
        sw = mrow.get("sweep")
        base = isinstance(sw, dict)
        mk = mrow["model_key"]
        for e in data.evals["eval_key"]:
            info = data.info(e)
            if info["kind"] not in ("clean", "attack", "corruption"):
                continue
            r = data.agg_row(mk, e)
            if not r["complete"]:
                continue
            recs.append({"model": data.name(mk), "model_key": mk, "base": sw["base"] if base else mrow.get("spec"),
                         "patched": base, "layers": sw.get("layers") if base else None,
                         "lam": sw.get("lam") if base else None, "n_iter": sw.get("n_iter") if base else None,
                         "kind": info["kind"], "evaluation": e, "name": info["name"],
                         "top1": r["top1"], "lo": r["top1_lo"], "hi": r["top1_hi"], "n": int(r["n"])})
    return pd.DataFrame(recs)


def sweep_table(sf: pd.DataFrame) -> Table | None:
    if sf.empty or not sf["patched"].any():
        return None
    rows, tidy = [], []
    for (mk,), part in sf.groupby(["model_key"], sort=False):
        first = part.iloc[0]
        cells = {}
        for kind in ("clean", "attack", "corruption"):
            p = part[part["kind"] == kind]
            if p.empty:
                cells[kind] = None
                continue
            # corruptions: mean accuracy over the corruptions; its interval is the mean of the intervals
            cells[kind] = fmt_ci(p["top1"].mean(), p["lo"].mean(), p["hi"].mean())
            tidy.append({"model": first["model"], "base": first["base"], "layers": first["layers"],
                         "lam": first["lam"], "n_iter": first["n_iter"], "kind": kind,
                         "top1_pct": 100 * p["top1"].mean(), "lo_pct": 100 * p["lo"].mean(),
                         "hi_pct": 100 * p["hi"].mean(), "n": int(p["n"].iloc[0]), "evaluations": len(p)})
        rows.append([str(first["base"]), str(first["layers"]) if first["patched"] else "unpatched",
                     _f(first["lam"], 2) if first["patched"]
                     else None, str(int(first["n_iter"])) if first["patched"] else None,
                     cells["clean"], cells["attack"], cells["corruption"]])
    columns = ["Base model", "PAP layers", "lambda", "n_iter", "Clean top-1 (%)", "Attack top-1 (%)",
               "Corruption top-1 (%, mean)"]
    protocol = ["Attention patched in at evaluation time on the base model's weights ([sweep] in the suite). "
                "Attack column: mean over the suite's attack evaluations; corruption column: mean over its "
                "corruption evaluations (intervals averaged, for orientation only)."]
    return Table("ablation", "Ablation grid: accuracy per setting", columns, rows, pd.DataFrame(tidy), protocol)


def sweep_plots(sf: pd.DataFrame, df: pd.DataFrame, folder: Path) -> list[Plot]:
    """Accuracy vs lambda (a line per n_iter) and vs n_iter (a line per lambda): a row per evaluation kind,
    a column per (base model, layers); PAP sparsity (last iteration, clean, mean over PAP layers) beside."""
    import matplotlib.pyplot as plt

    s = sf[sf["patched"]]
    if s.empty:
        return []
    acc = s.groupby(["base", "layers", "lam", "n_iter", "kind"]).agg(
        top1=("top1", "mean"), lo=("lo", "mean"), hi=("hi", "mean")).reset_index()
    unpatched = sf[~sf["patched"]].groupby(["base", "kind"])["top1"].mean()
    panels = list(dict.fromkeys(zip(acc["base"], acc["layers"])))
    kinds = [k for k in ("clean", "attack", "corruption") if k in set(acc["kind"])]
    spars = pd.DataFrame()
    if not df.empty and "model_key" in df:
        key_to = s.drop_duplicates("model_key").set_index("model_key")[["base", "layers", "lam", "n_iter"]]
        d = df[(df["input"] == "clean") & df["model_key"].isin(key_to.index)].dropna(subset=["s_fraction"])
        if not d.empty:
            d = d[d["iteration"] == d.groupby("model_key")["iteration"].transform("max")]
            spars = d.groupby("model_key")["s_fraction"].mean().to_frame().join(key_to).reset_index()
    plots = []
    for x, line in (("lam", "n_iter"), ("n_iter", "lam")):
        nrows = len(kinds) + (0 if spars.empty else 1)
        fig, axes = plt.subplots(nrows, len(panels), figsize=(3.8 * len(panels), 2.8 * nrows), squeeze=False,
                                 sharex=True)
        for j, (base, layers) in enumerate(panels):
            for i, kind in enumerate(kinds):
                ax = axes[i][j]
                part = acc[(acc["base"] == base) & (acc["layers"] == layers) & (acc["kind"] == kind)]
                for val, p in part.groupby(line):
                    p = p.sort_values(x)
                    yerr = [100 * (p["top1"] - p["lo"]).clip(lower=0), 100 * (p["hi"] - p["top1"]).clip(lower=0)]
                    ax.errorbar(p[x], 100 * p["top1"], yerr=yerr,
                                marker="o", ms=3, capsize=2, label=f"{line}={val:g}")
                if (base, kind) in unpatched.index:
                    ax.axhline(100 * unpatched[(base, kind)], color="grey", ls=":", lw=1, label="unpatched")
                ax.set_title(f"{base.split(':')[0]} | PAP@{layers} | {kind}", fontsize=8)
                ax.set_ylabel("top-1 (%)")
                if x == "lam":
                    ax.set_xscale("log", base=2)
            if not spars.empty:
                ax = axes[-1][j]
                part = spars[(spars["base"] == base) & (spars["layers"] == layers)]
                for val, p in part.groupby(line):
                    p = p.sort_values(x)
                    ax.plot(p[x], p["s_fraction"], marker="o", ms=3, label=f"{line}={val:g}")
                ax.set_title("S fraction (clean, last iteration)", fontsize=8)
                ax.set_xlabel("lambda" if x == "lam" else "PAP iterations")
            else:
                axes[-1][j].set_xlabel("lambda" if x == "lam" else "PAP iterations")
        axes[0][0].legend(fontsize=6, frameon=False)
        fig.tight_layout()
        name = f"ablation_acc_vs_{'lambda' if x == 'lam' else 'n_iter'}"
        title = f"Ablation: accuracy vs {'lambda' if x == 'lam' else 'n_iter'}"
        plots.append(_save(fig, folder, name, title,
                           "Top-1 with 95% Wilson intervals per grid point (attack: mean over the suite's attack "
                           "evaluations; corruption: mean over its corruptions); dotted: the unpatched model."))
    return plots


def diagnostics_section(data: RunData, out: Path) -> tuple[list[Table], list[Plot], dict[str, Path]]:
    """Tables, plots (under ``out/plots``) and extra CSVs (under ``out/tables``: every row, and eq. 11 per
    axis) for the run's diagnostics and sweep; ([], [], {}) when it has neither."""
    df, adf = diagnostics_frames(data)
    folder = Path(out) / "plots"
    tables: list[Table] = []
    plots: list[Plot] = []
    files: dict[str, Path] = {}
    if not df.empty:
        tables += [t for t in (pap_table(df), kpca_table(df), claims_table(df)) if t is not None]
        plots += claims_plots(df, folder)  # both sides of the kernel-PCA claims, where the run has them
        (Path(out) / "tables").mkdir(parents=True, exist_ok=True)
        for name, frame_ in (("diagnostics_full", df), ("diagnostics_axes", adf)):
            if not frame_.empty:
                files[f"tables/{name}.csv"] = Path(out) / "tables" / f"{name}.csv"
                with replacing(files[f"tables/{name}.csv"], durable=False) as tmp:
                    frame_.to_csv(tmp, index=False, na_rep="")
        models = list(dict.fromkeys(df["model"]))
        for model in models[:8]:  # a grid of dozens of models: its sweep plots summarize the rest
            for kind, res in (("pap", pap_plot(df, model, folder, f"diagnostics_pap_{slug(model)}")),
                              ("kpca", kpca_plot(df, adf, model, folder, f"diagnostics_kpca_{slug(model)}"))):
                if res is not None:
                    plots.append(Plot(res[0].stem, f"Diagnostics ({kind}): {model}",
                                      "PAP statistics per iteration (mean over heads and images)" if kind == "pap"
                                      else "Projection loss per layer and eq. 11 differences per axis.", *res))
    sf = sweep_frame(data)
    t = sweep_table(sf)
    if t is not None:
        tables.append(t)
        plots += sweep_plots(sf, df, folder)
    return tables, plots, files
