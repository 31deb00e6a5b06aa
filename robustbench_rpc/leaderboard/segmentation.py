"""Segmentation boards: segmentation runs (``quick-seg``, ``paper-seg``) merged into boards of their own.

A segmentation run's numbers are aAcc / mAcc / mIoU recomputed from its per-image counts
(``reports/seg_report.collect``), never the classification boards' top-1. Runs that scored the same images of the
same dataset (the manifest's sample-id digest) share a board: one row per model (name and checkpoint sha256), one
column per (evaluation column, metric), each cell ``value [lo, hi]`` in %, with the 95 % image-bootstrap interval.
A model evaluated in two runs on the same board keeps the first run's cell and is flagged when the second differs
(the runs should agree exactly: counts are deterministic). Boards are ranked by clean mIoU. Written as
``segmentation.md`` and ``segmentation.csv`` in the board folder; rebuilt from the segmentation runs of each call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from ..atomic import write_text
from ..reports.seg_report import collect, is_segmentation_run as check
from ..store.errors import StoreError
from ..store.results import ResultsStore


def is_segmentation_run(run_dir: str | Path) -> bool:
    try:
        return check(Path(run_dir))
    except (StoreError, OSError):  # a damaged or unreadable store: the run reader says so in its own words
        return False


def _records(run_dir: Path) -> tuple[str, list[dict]]:
    with ResultsStore(run_dir / "results.sqlite", readonly=True) as store:
        data = collect(store)
        manifest = store.get_meta("manifest") or {}
        suite = store.get_meta("seg_suite") or {}
    ids = manifest.get("sample_ids", {})
    digest = next((v.get("sha256") for v in ids.values() if isinstance(v, dict)), None) or "?"
    board = f"{suite.get('dataset', '?')} (sample ids {str(digest)[:8]})"
    recs = []
    for m, cols in data["table"].items():
        info = data["models"][m]
        for col, metrics in cols.items():
            for metric, (v, lo, hi) in metrics.items():
                recs.append({"board": board, "model": info["name"], "checkpoint_sha256": info.get("checkpoint_sha256"),
                             "column": col, "metric": metric, "value": v, "lo": lo, "hi": hi, "run": str(run_dir)})
    return board, recs


def write_segmentation_boards(runs: list[str], out: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Merge the segmentation ``runs`` into boards; returns the files written (none without runs)."""
    if not runs:
        return {}
    recs: list[dict] = []
    for run in runs:
        recs += _records(Path(run))[1]
    df = pd.DataFrame.from_records(recs)
    key = ["board", "model", "checkpoint_sha256", "column", "metric"]
    first = df.drop_duplicates(key, keep="first")
    merged = df.merge(first[key + ["value"]], on=key, suffixes=("", "_first"))
    disagree = merged[(merged["value"] - merged["value_first"]).abs() > 1e-12]
    lines = ["# Segmentation boards", ""]
    for board, g in first.groupby("board", sort=False):
        cols = list(dict.fromkeys(zip(g["column"], g["metric"])))
        clean = g[(g["column"] == "clean") & (g["metric"] == "mIoU")].set_index("model")["value"]
        models = sorted(dict.fromkeys(g["model"]), key=lambda m: -clean.get(m, -1.0))
        lines += [f"## {board}", "", "| rank | model | " + " | ".join(f"{c} {m}" for c, m in cols) + " |",
                  "|" + "---|" * (len(cols) + 2)]
        for rank, model in enumerate(models, 1):
            cell = {(r.column, r.metric): f"{100 * r.value:.1f} [{100 * r.lo:.1f}, {100 * r.hi:.1f}]"
                    for r in g[g["model"] == model].itertuples()}
            flag = " (runs disagree)" if model in set(disagree.loc[disagree["board"] == board, "model"]) else ""
            lines.append(f"| {rank} | {model}{flag} | " + " | ".join(cell.get(c, "") for c in cols) + " |")
        lines += ["", "%, 95 % image-level bootstrap intervals; ranked by clean mIoU.", ""]
    out.mkdir(parents=True, exist_ok=True)
    paths = {"segmentation_md": write_text(out / "segmentation.md", "\n".join(lines)),
             "segmentation_csv": write_text(out / "segmentation.csv", first.to_csv(index=False))}
    log(f"segmentation: {len(runs)} run(s) -> {first['board'].nunique()} board(s): {paths['segmentation_md']}")
    return paths
