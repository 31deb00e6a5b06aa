"""Plots (PNG + SVG, matplotlib Agg): accuracy vs eps, per-corruption CE, accuracy vs severity, and a
forest plot of deltas against the reference model. Only complete results are drawn; a plot whose data
is absent is skipped (no file)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import metrics  # noqa: E402
from ..atomic import replacing  # noqa: E402
from ..evalspec import eps_label as format_eps, threat_of  # noqa: E402
from .compute import (
    CE_MIN_REF_ERROR, CE_MIN_REF_ERRORS, acc_stats, corruption_results, pairwise, severity_curve, worst_case,
    worst_groups,
)
from .data import RunData, eps_key, slug  # noqa: E402

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
                     "svg.hashsalt": "robustbench-rpc", "svg.fonttype": "none"})


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    png: Path
    svg: Path
    fig: object = None  # the matplotlib figure, kept only when asked (tests inspect its artists)


def _save(fig, folder: Path, name: str, title: str, caption: str, keep: bool = False) -> Plot:
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    declutter_ticks(fig)
    with replacing(png, durable=False) as tmp:  # a full disk never leaves half a figure behind
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    with replacing(svg, durable=False) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    if not keep:
        plt.close(fig)
    return Plot(name, title, caption, png, svg, fig if keep else None)


# ------------------------------------------------------------------------------------ tick labels
def _text_polygon(t, renderer) -> np.ndarray:
    """The 4 corners (display units) of a tick label's own, possibly rotated, rectangle - not its
    axis-aligned bounding box, which makes rotated neighbours look overlapping when they are not."""
    box = t.get_window_extent(renderer)
    angle = t.get_rotation()
    rot = t.get_rotation()
    t.set_rotation(0)
    flat = t.get_window_extent(renderer)
    t.set_rotation(rot)
    w, h = flat.width / 2, flat.height / 2
    a = np.deg2rad(angle)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ r.T
    return corners + np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])


def _polygons_overlap(p: np.ndarray, q: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons (touching counts as apart)."""
    for poly in (p, q):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            a, b = p @ axis, q @ axis
            if a.max() <= b.min() + 1e-6 or b.max() <= a.min() + 1e-6:
                return False
    return True


def _label_overlaps(labels, renderer) -> list[int]:
    vis = [t for t in labels if t.get_visible() and t.get_text()]
    polys = [_text_polygon(t, renderer) for t in vis]
    return [i for i in range(len(vis)) if any(_polygons_overlap(polys[i], polys[j]) for j in range(len(vis)) if j != i)]


def _overlapping(labels, renderer) -> bool:
    return bool(_label_overlaps(labels, renderer))


def tick_label_overlaps(fig) -> list[tuple[str, str, str]]:
    """(axes title, 'x'|'y', label text) of every visible tick label whose (rotated) rectangle
    overlaps another label of the same axis."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        for which, labels in (("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())):
            vis = [t for t in labels if t.get_visible() and t.get_text()]
            out += [(ax.get_title(), which, vis[i].get_text()) for i in _label_overlaps(vis, renderer)]
    return out


def declutter_ticks(fig) -> None:
    """Make x tick labels readable: rotate them where they collide, then hide every other one until
    none overlaps (the first and the last stay)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        if not labels or not _overlapping(labels, renderer):
            continue
        if not any(t.get_rotation() for t in labels):
            for t in labels:
                t.set_rotation(45)
                t.set_ha("right")
                t.set_rotation_mode("anchor")
            fig.canvas.draw()
        step = 1
        while _overlapping(labels, renderer) and step < len(labels):
            step += 1
            for i, t in enumerate(labels):
                t.set_visible(i % step == 0)
            fig.canvas.draw()


def _colors(data: RunData) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(data.model_keys)}


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.tight_layout()
        fig.legend(handles, labels, loc="center left", frameon=False, bbox_to_anchor=(1.0, 0.5))


# --------------------------------------------------------------------------------------- acc vs eps
_THREAT_TAGS = ("norm.", "no clip", "pred. labels", "plain acc.")


def _threat_tag(threat: tuple) -> str:
    space, clip, labels, accuracy = threat
    tags = [t for t, on in zip(_THREAT_TAGS, (space == "normalized", not clip, labels == "predicted",
                                              accuracy == "plain")) if on]
    return f" ({', '.join(tags)})" if tags else ""


def _grid(n: int, ncols: int = 3, w: float = 4.3, h: float = 3.3):
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def _eps_axis(ax, ticks: list[float], norm: str) -> None:
    """eps on a symlog axis (0 = clean, linear up to the smallest budget, then logarithmic) with one
    labelled tick per budget, as k/255 where possible."""
    positive = [t for t in ticks if t > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.6)
        ax.set_xlim(-0.15 * min(positive), max(positive) * 1.35)
    ax.set_xticks(ticks)
    ax.set_xticklabels([format_eps(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(f"eps ({norm})")


def _worst_title(data: RunData, groups: list) -> str:
    """Which attacks a worst-case panel combines: those common to every budget, then the extras per budget."""
    sets = {g.eps: [data.info(k)["name"] for k in g.eval_keys] for g in groups}
    common = [a for a in dict.fromkeys(a for names in sets.values() for a in names)
              if all(a in names for names in sets.values())]
    extra = {eps: [a for a in names if a not in common] for eps, names in sets.items()}
    lines = ["worst case of " + " + ".join(common)] if common else ["worst case"]
    if len(groups) == 1:
        lines[0] += f" at {format_eps(groups[0].eps)}"
    for eps, names in extra.items():
        if names:
            lines.append(f"+ {' + '.join(names)} at {format_eps(eps)}")
    return "\n".join(lines)


def _panel_points(data: RunData, m: str, ks, wgroups) -> list[tuple]:
    """(eps, top1, lo, hi) of one model in one panel: its attack's budgets, or the worst-case groups."""
    pts = []
    if wgroups is not None:
        for g in wgroups:
            wc, _ = worst_case(data, m, g)
            if wc is not None:
                pts.append((g.eps, *acc_stats(wc["correct1"])))
        return sorted(pts)
    for k in ks:
        if data.complete(m, k):
            r = data.agg_row(m, k)
            pts.append((eps_key(data.info(k)["params"].get("eps")), r["top1"], r["top1_lo"], r["top1_hi"]))
    return sorted(pts)


def _draw_model(ax, pts: list[tuple], c0: tuple | None, color, label: str, shift: float, min_eps: float) -> None:
    """One budget: a point with its interval and the clean point apart; several: a line and band from clean."""
    if len(pts) == 1:
        e, y, lo, hi = (float(v) for v in pts[0])
        ax.errorbar([e * (1 + shift)], [100 * y], yerr=[[max(0.0, 100 * (y - lo))], [max(0.0, 100 * (hi - y))]],
                    fmt="o", color=color, capsize=3, label=label)
        if c0 is not None:
            ax.errorbar([shift * min_eps], [100 * c0[1]],
                        yerr=[[max(0.0, 100 * (c0[1] - c0[2]))], [max(0.0, 100 * (c0[3] - c0[1]))]],
                        fmt="o", mfc="white", color=color, capsize=3)
        return
    pts = ([c0] if c0 is not None else []) + pts
    x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
    ax.plot(x, 100 * y, marker="o", color=color, label=label)
    ax.fill_between(x, 100 * lo, 100 * hi, color=color, alpha=0.2, linewidth=0)


def _shared_legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)),
               frameon=False)


def _attack_figure(data: RunData, dataset: str, norm: str, keys: list[str], clean_key: str | None):
    """The accuracy-vs-eps figure of one dataset and norm (None when no model has a complete result)."""
    colors = _colors(data)
    panels: dict[tuple, list[str]] = {}
    for k in keys:
        info = data.info(k)
        panels.setdefault((info["name"], threat_of(info["params"])), []).append(k)
    groups = [g for g in worst_groups(data) if g.dataset == dataset and g.norm == norm]
    threats = list(dict.fromkeys(g.threat for g in groups))
    specs = [(f"{name}{_threat_tag(t)}", ks, None) for (name, t), ks in panels.items()]
    specs += [(None, None, [g for g in groups if g.threat == t]) for t in threats]
    fig, axes = _grid(len(specs))
    all_eps = sorted({eps_key(data.info(k)["params"].get("eps")) for k in keys})
    min_eps = min([e for e in all_eps if e > 0], default=1.0)
    n_models, drawn = len(data.model_keys), False
    for ax, (title, ks, wgroups) in zip(axes, specs):
        for mi, m in enumerate(data.model_keys):
            pts = _panel_points(data, m, ks, wgroups)
            if not pts:
                continue
            c0 = None
            if clean_key and data.complete(m, clean_key):
                r = data.agg_row(m, clean_key)
                c0 = (0.0, r["top1"], r["top1_lo"], r["top1_hi"])
            shift = (mi - (n_models - 1) / 2) * 0.07  # side by side, so equal values stay visible
            _draw_model(ax, pts, c0, colors[m], data.name(m), shift, min_eps)
            drawn = True
        _eps_axis(ax, ([0.0] if clean_key else []) + all_eps, norm)
        ax.set_ylim(-3, 103)
        if wgroups is not None:
            ax.set_title(_worst_title(data, wgroups) + _threat_tag(wgroups[0].threat), fontsize=9.5)
        else:
            ax.set_title(title)
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("top-1 accuracy (%)")
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(f"Accuracy vs attack strength on {dataset} ({norm})")
    fig.tight_layout()
    _shared_legend(fig, axes)
    return fig


def attack_plots(data: RunData, folder: Path, keep: bool = False) -> list[Plot]:
    """Accuracy vs eps per dataset and norm: one panel per attack (and threat model), and a worst-case
    panel, wrapped in a grid of at most 3 columns. An attack run at several budgets is a line with a 95%
    band starting at the clean accuracy (eps = 0); an attack run at one budget is a point with a 95%
    error bar (the clean accuracy a hollow point), never a line."""
    ev = data.evals_of("attack")
    if ev.empty:
        return []
    plots = []
    clean = data.evals_of("clean")
    for dataset in dict.fromkeys(ev["dataset"]):
        dev = ev[ev["dataset"] == dataset]
        clean_key = next((k for k in clean["eval_key"] if data.info(k)["dataset"] == dataset), None)
        for norm in dict.fromkeys(str(data.info(k)["params"].get("norm", "?")) for k in dev["eval_key"]):
            keys = [k for k in dev["eval_key"] if str(data.info(k)["params"].get("norm", "?")) == norm]
            fig = _attack_figure(data, dataset, norm, keys, clean_key)
            if fig is None:
                continue
            plots.append(_save(fig, folder, f"attack_acc_vs_eps_{slug(dataset)}_{slug(norm)}",
                               f"Accuracy vs eps ({dataset}, {norm})",
                               "Top-1 accuracy with 95% Wilson bands (several budgets: line and band from the clean "
                               "accuracy at eps = 0) or 95% error bars (one budget: a point; hollow point = clean "
                               "accuracy); eps axis linear up to the smallest budget, logarithmic above; worst case "
                               "= per-sample AND over the attacks named in the panel title; incomplete results are "
                               "omitted.", keep))
    return plots


# ---------------------------------------------------------------------------------------- corruptions
def _pooled_error_ci(data: RunData, res, m: str, c: str) -> tuple[float, float]:
    """95% Wilson interval of a corruption's error pooled over its severities (images as independent)."""
    k = n = 0
    for _, e in res.eval_keys.get(c, []):
        r = data.agg_row(m, e)
        k += int(round((1.0 - float(r["top1"])) * int(r["n"])))
        n += int(r["n"])
    return metrics.wilson_interval(k, n) if n else (np.nan, np.nan)


def _error_bars(data: RunData, res, models: list[str], axes, x, w, normalized: bool) -> list[tuple]:
    """Per model: unnormalized error bars (pooled Wilson) on axes[0] and, with a baseline, CE bars on
    axes[1] (hatched where the ratio is unstable); returns the CE bars (pos, ce, lo, hi) for their CIs."""
    colors, ce_bars = _colors(data), []
    for i, m in enumerate(models):
        row = res.rows[data.model_keys.index(m)]
        pos = x + (i - (len(models) - 1) / 2) * w
        err = np.array([100 * float(np.mean(res.errors[m][c])) if res.errors[m][c] is not None else np.nan
                        for c in res.corruptions])
        ci = np.array([_pooled_error_ci(data, res, m, c) if res.errors[m][c] is not None else (np.nan, np.nan)
                       for c in res.corruptions]) * 100
        axes[0].bar(pos, err, w, color=colors[m], label=data.name(m),
                    yerr=np.clip(np.vstack([err - ci[:, 0], ci[:, 1] - err]), 0, None), capsize=2, ecolor="#333")
        if not normalized:
            continue
        ce = np.array([100 * row["ce"].get(c, np.nan) for c in res.corruptions])
        lo = np.array([100 * row["ce_ci"].get(c, (np.nan, np.nan))[0] for c in res.corruptions])
        hi = np.array([100 * row["ce_ci"].get(c, (np.nan, np.nan))[1] for c in res.corruptions])
        unstable = np.array([c in res.unstable and m != data.reference_key for c in res.corruptions])
        axes[1].bar(pos, ce, w, color=colors[m], hatch=None, edgecolor="none")
        if unstable.any():
            axes[1].bar(pos[unstable], ce[unstable], w, color=colors[m], hatch="///", edgecolor="#b00000",
                        linewidth=0.8)
        ce_bars.append((pos, ce, lo, hi))
    return ce_bars


def _ce_axis(ax, res, ce_bars: list[tuple]) -> None:
    """CE intervals (arrows where one runs off the axis), the 100% line, and the unstable-ratio note."""
    bars = [c[np.isfinite(c)] for _, c, _, _ in ce_bars]
    cap = max(150.0, 1.5 * max((b.max() for b in bars if b.size), default=100.0))
    for pos, ce, lo, hi in ce_bars:
        ok = np.isfinite(ce) & np.isfinite(lo)
        yerr = np.clip(np.vstack([ce - lo, np.minimum(hi, cap) - ce]), 0, None)
        ax.errorbar(pos[ok], ce[ok], yerr=yerr[:, ok], fmt="none", ecolor="#333", capsize=2, linewidth=0.9)
        for p_, h_ in zip(pos[ok], hi[ok]):
            if not np.isfinite(h_) or h_ > cap:  # interval runs off the axis (reference error ~ 0)
                ax.annotate("", xy=(p_, cap * 0.995), xytext=(p_, cap * 0.93),
                            arrowprops={"arrowstyle": "->", "color": "#333", "lw": 0.9})
    ax.set_ylim(0, cap)
    ax.set_ylabel("CE (%), normalized")
    ax.axhline(100, color="black", linewidth=0.8, linestyle="--")
    ax.set_title(f"normalized by {res.baseline_label}; bars: 95% bootstrap CI (arrow: CI runs off the axis)",
                 fontsize=9)
    if res.unstable:
        ax.set_xlabel("(!) unstable CE (hatched bars): the reference's error is below "
                      f"{100 * CE_MIN_REF_ERROR:.0f}% or under {CE_MIN_REF_ERRORS} errors for "
                      + ", ".join(list(res.unstable)) + ",\nso CE = err / err_ref is unreliable there",
                      color="#a00000", fontsize=9,
                      bbox={"boxstyle": "round", "fc": "#fff4d6", "ec": "#a00000", "lw": 0.8})


def _corruption_error_plot(data: RunData, res, folder: Path, keep: bool) -> Plot | None:
    models = [m for m in data.model_keys if any(res.errors[m][c] is not None for c in res.corruptions)]
    if not models:
        return None
    normalized = res.baseline is not None
    npanel = 2 if normalized else 1
    width = max(7.0, 0.55 * len(res.corruptions) * max(1, len(models)) / 1.5)
    fig, axes = plt.subplots(npanel, 1, figsize=(width, 3.4 * npanel), squeeze=False, sharex=True)
    axes = axes[:, 0]
    x = np.arange(len(res.corruptions))
    ce_bars = _error_bars(data, res, models, axes, x, 0.8 / len(models), normalized)
    axes[0].set_ylabel("error (%), unnormalized")
    if normalized:
        _ce_axis(axes[1], res, ce_bars)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels([c + (" (!)" if c in res.unstable else "") for c in res.corruptions],
                             rotation=45, ha="right", rotation_mode="anchor")
    for t, c in zip(axes[-1].get_xticklabels(), res.corruptions):
        if c in res.unstable:
            t.set_color("#a00000")
    axes[0].legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Corruption error per corruption on {res.dataset} (mean over severities "
                 f"{', '.join(map(str, res.severities))})")
    return _save(fig, folder, f"corruption_ce_{slug(res.dataset)}", f"Per-corruption error ({res.dataset})",
                 "Top-1 error averaged over severities (unnormalized, pooled 95% Wilson bars) and, "
                 f"where a baseline exists, normalized CE (baseline: {res.baseline_label}) with 95% "
                 "bootstrap bars; lower is better; hatched bars and (!) mark CE ratios that are "
                 "unstable because the reference's error is too small; incomplete corruptions are "
                 "omitted.", keep)


def _severity_plot(data: RunData, res, folder: Path, keep: bool) -> Plot | None:
    colors = _colors(data)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    drawn = False
    for m in data.model_keys:
        curve = severity_curve(data, res, m)
        if curve.empty:
            continue
        ax.plot(curve["severity"], 100 * curve["acc"], marker="o", color=colors[m], label=data.name(m))
        ax.fill_between(curve["severity"], 100 * curve["lo"], 100 * curve["hi"], color=colors[m], alpha=0.2,
                        linewidth=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks(res.severities)
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs severity on {res.dataset}")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, folder, f"corruption_acc_vs_severity_{slug(res.dataset)}", f"Accuracy vs severity ({res.dataset})",
                 "Top-1 accuracy averaged over the corruptions a model completed, with a pooled 95% "
                 "Wilson band (images treated as independent).", keep)


def corruption_plots(data: RunData, folder: Path, keep: bool = False) -> list[Plot]:
    """Per corrupted dataset: per-corruption error (and normalized CE) bars, and accuracy vs severity."""
    plots = []
    for res in corruption_results(data):
        for build in (_corruption_error_plot, _severity_plot):
            plot = build(data, res, folder, keep)
            if plot is not None:
                plots.append(plot)
    return plots


# --------------------------------------------------------------------------------------------- forest
def forest_plot(data: RunData, folder: Path, keep: bool = False) -> list[Plot]:
    ref = data.reference_key
    others = [m for m in data.model_keys if m != ref]
    if ref is None or not others:
        return []
    colors = _colors(data)
    frames = {m: pairwise(data, m, ref) for m in others}
    labels = [lab for lab in frames[others[0]]["evaluation"]]
    keep = [i for i, _ in enumerate(labels) if any(bool(frames[m].iloc[i]["complete"]) for m in others)]
    if not keep:
        return []
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.32 * len(keep) * max(1, len(others) / 1.5)))
    off = np.linspace(-0.25, 0.25, len(others)) if len(others) > 1 else [0.0]
    for j, m in enumerate(others):
        df = frames[m].iloc[keep]
        y = np.arange(len(keep))[::-1] + off[j]
        ok = df["complete"].to_numpy(bool)
        d = 100 * df["delta"].to_numpy(float)
        err = np.vstack([d - 100 * df["delta_lo"].to_numpy(float), 100 * df["delta_hi"].to_numpy(float) - d])
        ax.errorbar(d[ok], y[ok], xerr=err[:, ok], fmt="o", color=colors[m], capsize=3, markersize=4,
                    label=f"{data.name(m)} - {data.name(ref)}")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(len(keep))[::-1])
    ax.set_yticklabels([labels[i] for i in keep], fontsize=8)
    ax.set_xlabel("delta top-1 accuracy (percentage points), 95% paired CI")
    ax.set_title(f"Difference to the reference model {data.name(ref)}")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [_save(fig, folder, "deltas_vs_reference", f"Deltas vs {data.name(ref)}",
                  "Per evaluation: accuracy difference to the reference on the same samples, with Newcombe's "
                  "paired 95% interval; incomplete pairs are omitted.", keep)]


def all_plots(data: RunData, folder: Path, keep: bool = False) -> list[Plot]:
    """Every plot, saved as PNG and SVG; ``keep=True`` leaves each figure open in ``Plot.fig``."""
    return (attack_plots(data, folder, keep) + corruption_plots(data, folder, keep)
            + forest_plot(data, folder, keep))
