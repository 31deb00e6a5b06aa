"""The report of a segmentation run, every number recomputed from the per-image counts in the store.

Shape of the RPC paper's ADE20K table: one row per model; columns clean aAcc / mAcc / mIoU, corrupted aAcc /
mAcc / mIoU (the mean over every corruption x severity evaluated, each a dataset-level metric of its own), then
each attack's mIoU and aAcc per budget and the per-image worst case over the attacks of that budget
(``metrics_seg.worst_case_areas``: per image, the attack leaving the fewest pixels correct). Each number has a
95 % image-level bootstrap interval (1000 resamples, seed 0): images are resampled with replacement and the
metric recomputed from their summed counts; for the corrupted mean the same resample is used for every
corruption, then averaged.

Files (in the run folder or ``--out``): ``seg_table.csv`` (long form: model, column, metric, value, lo, hi),
``seg_table.md``, ``seg_curves.png`` (mIoU per corruption against severity, clean at 0), ``seg_examples.png``
(image, ground truth, and the clean / corrupted / attacked predictions of each model, from the images the run
kept) and ``index.html``.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.seg_plan import SEG_ATTACKS
from ..metrics_seg import (INTERSECT, METRICS, _draws, _interval, _resampled, paired_seg_bootstrap, seg_metrics,
                           worst_case_areas)
from ..store.results import ResultsStore
from ..store.seg_areas import read_areas
from ..evaluation.seg_run import EXAMPLES_DIR
from ..atomic import write_text

N_BOOT, CONFIDENCE, BOOT_SEED = 1000, 0.95, 0
STORE = "results.sqlite"


def is_segmentation_run(run_dir: Path) -> bool:
    path = Path(run_dir) / STORE
    if not path.is_file():
        return False
    with ResultsStore(path, readonly=True, check_rows=False) as store:
        return store.get_meta("task") == "segmentation"


def mean_with_interval(sets: list[np.ndarray], metric: str) -> tuple[float, float, float]:
    """The mean of ``metric`` over several evaluations of the same images (same order) and its bootstrap
    interval, each resample taking the same images in every evaluation."""
    point = float(np.mean([seg_metrics(a)[metric] for a in sets]))
    n = len(sets[0])
    values = np.concatenate([np.mean([_resampled(a, metric, idx) for a in sets], axis=0)
                             for idx in _draws(n, N_BOOT, BOOT_SEED, CONFIDENCE)])
    return (point, *_interval(values, CONFIDENCE))


def collect(store) -> dict:
    """Everything the report shows, from the store: {model_key: {column: {metric: (value, lo, hi)}}} and
    the per-corruption curves."""
    areas = read_areas(store)
    evals = {k: store.evaluation_info(k) for k in store.evaluations().get("eval_key", [])}
    models = {k: store.model_info(k) for k in store.models().get("model_key", [])}
    table: dict[str, dict[str, dict[str, tuple]]] = {}
    curves: dict[str, dict[str, dict[int, float]]] = {}
    pairs: list[tuple] = []
    for m in models:
        mine = {e: areas[(m, e)] for (mm, e) in areas if mm == m}
        cols: dict[str, dict[str, tuple]] = {}
        by_kind: dict[str, list[str]] = {}
        for e in mine:
            by_kind.setdefault(evals[e]["kind"], []).append(e)
        ids_of = {e: mine[e][0] for e in mine}
        for e in by_kind.get("clean", []):
            cols["clean"] = {k: mean_with_interval([mine[e][1]], k) for k in METRICS}
        corr = sorted(by_kind.get("corruption", []), key=lambda e: evals[e]["name"])
        if corr:
            base = ids_of[corr[0]]
            if all(ids_of[e] == base for e in corr):
                cols["corrupted"] = {k: mean_with_interval([mine[e][1] for e in corr], k) for k in METRICS}
            clean_miou = cols.get("clean", {}).get("mIoU", (None,))[0]
            for e in corr:
                p = evals[e]["params"]
                c = curves.setdefault(p["corruption"], {}).setdefault(m, {})
                if clean_miou is not None:
                    c[0] = clean_miou
                c[int(p["severity"])] = seg_metrics(mine[e][1])["mIoU"]
        budgets: dict[str, list[str]] = {}
        order = {a: i for i, a in enumerate(SEG_ATTACKS)}  # PGD-CE first: the baseline the others are read against
        for e in sorted(by_kind.get("attack", []), key=lambda e: (evals[e]["params"]["eps"],
                                                                   order.get(evals[e]["params"]["attack"], 99))):
            p = evals[e]["params"]
            budgets.setdefault(f"{p['norm']} {p['eps_label']}", []).append(e)
        for budget, es in budgets.items():
            for e in es:
                cols[f"{evals[e]['params']['attack']} {budget}"] = {
                    k: mean_with_interval([mine[e][1]], k) for k in ("mIoU", "aAcc")}
            base = [e for e in es if evals[e]["params"]["attack"] == "pixel-pgd"]
            for e in es:  # paired: each other attack against PGD-CE on the same images and resamples
                if base and e != base[0] and ids_of[e] == ids_of[base[0]]:
                    pairs.append((m, evals[e]["params"]["attack"], budget, *paired_seg_bootstrap(
                        mine[e][1], mine[base[0]][1], "mIoU", n_boot=N_BOOT, confidence=CONFIDENCE, seed=BOOT_SEED)))
            if len(es) > 1 and all(ids_of[e] == ids_of[es[0]] for e in es):
                worst, _ = worst_case_areas({evals[e]["params"]["attack"]: mine[e][1] for e in es})
                cols[f"worst case {budget}"] = {k: mean_with_interval([worst], k) for k in ("mIoU", "aAcc")}
        table[m] = cols
    return {"models": models, "table": table, "curves": curves, "evals": evals, "pairs": pairs}


def table_frame(data: dict) -> pd.DataFrame:
    recs = []
    for m, cols in data["table"].items():
        for col, metrics in cols.items():
            for metric, (v, lo, hi) in metrics.items():
                recs.append((data["models"][m]["name"], m, col, metric, v, lo, hi))
    return pd.DataFrame.from_records(recs, columns=["model", "model_key", "column", "metric", "value", "lo", "hi"])


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no segmentation results stored)\n"
    cols = list(dict.fromkeys(zip(df["column"], df["metric"])))
    head = "| model | " + " | ".join(f"{c} {m}" for c, m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for model, g in df.groupby("model", sort=False):
        cell = {(r.column, r.metric): f"{100 * r.value:.1f} [{100 * r.lo:.1f}, {100 * r.hi:.1f}]"
                for r in g.itertuples()}
        lines.append(f"| {model} | " + " | ".join(cell.get(c, "") for c in cols) + " |")
    return "\n".join(lines) + "\n\n%, 95 % image-level bootstrap intervals (1000 resamples, seed 0); corrupted = " \
        "mean over every corruption x severity evaluated; worst case = per image, the attack of that budget " \
        "leaving the fewest pixels correct.\n"


def _pairs_markdown(pairs: pd.DataFrame) -> str:
    if pairs.empty:
        return ""
    lines = ["", "| model | attack | budget | mIoU minus PGD-CE's (points) | 95 % interval |", "|---|---|---|---|---|"]
    for r in pairs.itertuples():
        lines.append(f"| {r.model} | {r.attack} | {r.budget} | {100 * r.mIoU_minus_pgd_ce:+.2f} | "
                     f"[{100 * r.lo:+.2f}, {100 * r.hi:+.2f}] |")
    return "\n".join(lines) + "\n\nPaired image bootstrap (same resamples for both attacks); below 0: the attack " \
        "lowers mIoU more than PGD with per-pixel CE at the same budget, steps and step size.\n"


def _curves_png(data: dict, path: Path) -> bool:
    if not data["curves"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(data["curves"])
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, names):
        for m, pts in data["curves"][c].items():
            xs = sorted(pts)
            ax.plot(xs, [100 * pts[s] for s in xs], marker="o", label=data["models"][m]["name"])
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.set_ylabel("mIoU (%)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _palette(k: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    pal = rng.integers(40, 256, size=(max(k, 1), 3)).astype(np.uint8)
    pal[0] = (20, 20, 20)
    return np.concatenate([pal, np.zeros((256 - len(pal), 3), np.uint8) + 255])  # 255 (ignored): white


def _examples_png(run_dir: Path, data: dict, path: Path, num_classes: int) -> bool:
    """One row per model: image, ground truth, clean prediction, then the corrupted image and its prediction
    (the most severe of the first corruption), then the attacked image and its prediction (the largest budget's
    first attack); the first image each evaluation kept."""
    rows = []
    for m in data["models"]:
        kept = {e: run_dir / EXAMPLES_DIR / m / f"{e}.npz" for e in data["evals"]}
        kept = {e: p for e, p in kept.items() if p.is_file()}
        pick = {}
        for kind, order in (("clean", lambda e: 0), ("corruption", lambda e: (-data["evals"][e]["params"]["severity"],
                                                                              data["evals"][e]["name"])),
                            ("attack", lambda e: (-data["evals"][e]["params"]["eps"], data["evals"][e]["name"]))):
            es = sorted((e for e in kept if data["evals"][e]["kind"] == kind), key=order)
            if es:
                pick[kind] = (data["evals"][es[0]]["name"], np.load(kept[es[0]]))
        if "clean" in pick:
            rows.append((data["models"][m]["name"], pick))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pal = _palette(num_classes)
    ncols = 7
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 2.0 * len(rows)), squeeze=False)
    for r, (name, pick) in enumerate(rows):
        clean = pick["clean"][1]
        panels = [("image", clean["image0"]), ("ground truth", pal[clean["mask0"]]),
                  ("clean pred.", pal[clean["pred0"]])]
        for kind in ("corruption", "attack"):
            if kind in pick:
                label, d = pick[kind]
                panels += [(label, d["image0"]), ("pred.", pal[d["pred0"]])]
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(panels):
                ax.imshow(panels[c][1], interpolation="nearest")
                ax.set_title(panels[c][0], fontsize=7)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def build_seg_report(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    with ResultsStore(run_dir / STORE, readonly=True) as store:
        data = collect(store)
        suite = store.get_meta("seg_suite") or {}
    df = table_frame(data)
    paths = {"table_csv": out / "seg_table.csv", "table_md": out / "seg_table.md", "html": out / "index.html"}
    write_text(paths["table_csv"], df.to_csv(index=False))
    pairs = pd.DataFrame.from_records(
        [(data["models"][m]["name"], a, b, d, lo, hi) for m, a, b, d, lo, hi in data["pairs"]],
        columns=["model", "attack", "budget", "mIoU_minus_pgd_ce", "lo", "hi"])
    paths["pairs_csv"] = out / "seg_attack_pairs.csv"
    write_text(paths["pairs_csv"], pairs.to_csv(index=False))
    md = _markdown(df) + _pairs_markdown(pairs)
    write_text(paths["table_md"], md)
    parts = [f"<h1>Segmentation: {html.escape(str(suite.get('name', run_dir.name)))}</h1>",
             f"<p>dataset {html.escape(str(suite.get('dataset', '?')))}; every number recomputed from the "
             "per-image counts in results.sqlite.</p>", _html_table(df),
             "<h2>Attacks against PGD-CE (paired)</h2><pre>" + html.escape(_pairs_markdown(pairs)) + "</pre>"]
    if _curves_png(data, out / "seg_curves.png"):
        paths["curves"] = out / "seg_curves.png"
        parts.append("<h2>mIoU under corruption</h2><img src='seg_curves.png'>")
    try:  # display copies the run kept; an unreadable one leaves the examples out, never the numbers
        shown = _examples_png(run_dir, data, out / "seg_examples.png", len(suite.get("classes", ())) or 256)
    except (OSError, KeyError, ValueError) as e:
        shown = False
        parts.append(f"<p>examples not shown: a kept example file is unreadable ({html.escape(str(e))})</p>")
    if shown:
        paths["examples"] = out / "seg_examples.png"
        parts.append("<h2>Examples</h2><img src='seg_examples.png'>")
    write_text(paths["html"], "<!doctype html><html><head><meta charset='utf-8'><title>segmentation</title>"
               "<style>body{font-family:sans-serif}td,th{padding:2px 6px;border:1px solid #ccc}</style></head><body>"
               + "\n".join(parts) + "</body></html>\n")
    return paths


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p>no segmentation results stored</p>"
    cols = list(dict.fromkeys(zip(df["column"], df["metric"])))
    head = "".join(f"<th>{html.escape(c)}<br>{m}</th>" for c, m in cols)
    body = []
    for model, g in df.groupby("model", sort=False):
        cell = {(r.column, r.metric): f"{100 * r.value:.1f}<br><small>[{100 * r.lo:.1f}, {100 * r.hi:.1f}]</small>"
                for r in g.itertuples()}
        body.append(f"<tr><td>{html.escape(model)}</td>" + "".join(f"<td>{cell.get(c, '')}</td>" for c in cols)
                    + "</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table><p><small>%, 95 % image-level bootstrap " \
        "intervals; corrupted = mean over corruption x severity; worst case = per image over the budget's " \
        "attacks</small></p>"


__all__ = ["build_seg_report", "collect", "is_segmentation_run", "INTERSECT"]
