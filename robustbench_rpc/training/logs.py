"""What a training shows and leaves behind: a tqdm bar per epoch on the console (a TTY, rank 0), one line
per epoch, ``DIR/metrics.csv`` (one row per epoch, rewritten whole each epoch from the state's history) and
``DIR/curves.png`` (loss; train, clean and PGD accuracy with their Wilson intervals), redrawn at most every
``PLOT_EVERY_S`` seconds and at the end, so plotting never costs a short epoch a noticeable share.
"""
from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .state import atomic_write

COLUMNS = ("epoch", "lr", "loss", "train_acc", "n_val", "clean_acc", "clean_lo", "clean_hi", "pgd_acc", "pgd_lo",
           "pgd_hi", "train_s", "val_s", "images_per_s", "best")
PLOT_EVERY_S = 60.0


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def epoch_line(row: Mapping[str, Any], epochs: int, eps_label: str) -> str:
    """'epoch 3/10  loss 0.512  train 85.1%  clean 93.2% [91.0, 95.0]  pgd 8/255 41.2% [...]  12.3 s'."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"train {_pct(row['train_acc'])}"]
    if row.get("clean_acc") is not None:
        parts.append(f"clean {_pct(row['clean_acc'])} [{100 * row['clean_lo']:.1f}, {100 * row['clean_hi']:.1f}]")
    if row.get("pgd_acc") is not None:
        parts.append(f"pgd {eps_label} {_pct(row['pgd_acc'])} [{100 * row['pgd_lo']:.1f}, {100 * row['pgd_hi']:.1f}]")
    if row.get("n_val"):
        parts.append(f"(n={row['n_val']})")
    parts.append(f"{row['train_s']:.1f} s ({row['images_per_s']:.0f} img/s)" +
                 (f" + val {row['val_s']:.1f} s" if row.get("val_s") else ""))
    if row.get("best"):
        parts.append("best")
    return "  ".join(parts)


class EpochLog:
    """Console, CSV and plot of one training; only rank 0 writes."""

    def __init__(self, out: Path, main: bool, progress: bool | None, log: Callable[[str], None]):
        self.out, self.main, self.log = Path(out), main, log
        self.progress = main and (sys.stderr.isatty() if progress is None else progress)
        self._plotted = time.monotonic()  # the first plot after PLOT_EVERY_S, or at the end

    def bar(self, steps: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=desc, unit="step", leave=False, disable=not self.progress)

    def write(self, history: Sequence[Mapping[str, Any]], final: bool = False) -> None:
        if not self.main:
            return
        buf = io.StringIO()
        diag = [k for k in dict.fromkeys(k for row in history for k in row) if k.startswith("diag_")]
        w = csv.DictWriter(buf, fieldnames=COLUMNS + tuple(diag), extrasaction="ignore")  # + opt-in diagnostics
        w.writeheader()
        w.writerows(history)
        atomic_write(self.out / "metrics.csv", lambda tmp: tmp.write_text(buf.getvalue()))
        if final or time.monotonic() - self._plotted >= PLOT_EVERY_S:
            plot_curves(history, self.out / "curves.png")
            self._plotted = time.monotonic()


def _series(history: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in history if r.get(key) is not None]
    return [r["epoch"] for r in rows], [r[key] for r in rows]


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Training loss (left) and accuracies with Wilson bands (right) against the epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(*_series(history, "loss"), marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("train_acc", "train (training inputs)"), ("clean_acc", "val clean"), ("pgd_acc", "val PGD")):
        x, y = _series(history, key)
        if not x:
            continue
        line, = ax_acc.plot(x, [100 * v for v in y], marker="o", ms=3, label=label)
        lo_key, hi_key = key.replace("_acc", "_lo"), key.replace("_acc", "_hi")
        rows = [r for r in history if r.get(lo_key) is not None]
        if rows:
            ax_acc.fill_between([r["epoch"] for r in rows], [100 * r[lo_key] for r in rows],
                                [100 * r[hi_key] for r in rows], color=line.get_color(), alpha=0.2, lw=0)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (bands: Wilson 95 %)", ylim=(0, 100))
    ax_acc.legend(loc="lower right", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
