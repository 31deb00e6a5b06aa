"""RobustBench ``model_info`` JSON: published rows in, any row out.

Layout (RobustBench/robustbench ``model_info/<dataset>/<threat model>/<model>.json``, threat model one of
``Linf``, ``L2``, ``corruptions``). Fields are those of ``robustbench/utils.py::ModelInfo`` (link, name,
authors, additional_data, number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported,
corruptions_acc, corruptions_acc_3d, corruptions_mce, corruptions_mce_3d, autoattack_acc, footnote), numbers
written as RobustBench's ``update_json`` writes them: percentages as strings rounded to 2 decimals.

Imported rows are marked published. They carry no per-sample outcomes: no McNemar test, no bootstrap rank
interval; a Wilson interval only where the count is recoverable: RobustBench evaluates 5,000 ImageNet /
10,000 CIFAR images, and a 2-decimal percentage of those determines the number of correct images exactly.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from .. import metrics
from ..data import robustbench as rbdata
from .fingerprint import column_label, digest
from .merge import BASELINE_RB, ROBUSTBENCH_CORRUPTION_SET, Board, Cell, Column, Row, _rb_list_sha
from .sources import LeaderboardError

FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
          "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "corruptions_acc_3d",
          "corruptions_mce", "corruptions_mce_3d", "autoattack_acc", "footnote")
THREATS = ("Linf", "L2", "corruptions")
N_EXAMPLES = {"imagenet": 5000, "cifar10": 10000, "cifar100": 10000}


def _selection(dataset: str) -> str:
    return f"list sha256:{_rb_list_sha()}" if dataset == "imagenet" else "all"


def _eps(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise LeaderboardError(f"model_info eps {value!r} is not a number like 4/255 or 0.5") from None


def _pct(value: Any, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value) / 100.0
    except (TypeError, ValueError):
        raise LeaderboardError(f"{where}: {value!r} is not a percentage") from None


def published_files(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise LeaderboardError(f"--published {p}: no such file or folder")
    return out


def read_published(path: Path) -> list[tuple[dict[str, Any], str, str, Cell]]:
    """One model_info JSON -> (stated fingerprint, metric, row key, cell) per number it publishes."""
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LeaderboardError(f"--published {path}: not a JSON file ({err})") from None
    dataset = str(info.get("dataset") or "")
    if dataset not in N_EXAMPLES:
        raise LeaderboardError(f"--published {path}: dataset {dataset!r} is not one of RobustBench's "
                               f"({', '.join(N_EXAMPLES)})")
    threat = path.parent.name if path.parent.name in THREATS else (
        "corruptions" if info.get("corruptions_acc") not in (None, "") else
        "L2" if (_eps(info.get("eps")) or 0) >= 0.1 else "Linf")
    row = f"published:{dataset}:{path.stem}"
    sel = _selection(dataset)
    n = N_EXAMPLES[dataset]
    out = []
    clean = _pct(info.get("clean_acc"), f"{path} clean_acc")
    if clean is not None:
        out.append(({"dataset": dataset, "kind": "clean", "name": "clean", "samples.selection": sel},
                    "accuracy", row, _cell(clean, n, path)))
    if threat in ("Linf", "L2"):
        aa = _pct(info.get("autoattack_acc"), f"{path} autoattack_acc")
        if aa is not None:
            fp = {"dataset": dataset, "kind": "attack", "name": "autoattack", "samples.selection": sel,
                  "threat.norm": threat, "threat.eps": round(_eps(info.get("eps")) or float("nan"), 12),
                  "threat.space": "pixel", "threat.clip": True, "threat.labels": "true", "threat.accuracy": "robust",
                  "attack.version": "standard"}
            out.append((fp, "accuracy", row, _cell(aa, n, path)))
    else:
        base = {"dataset": f"{dataset}-c", "kind": "corruption set", "samples.selection": sel,
                "corruption.source": f"{dataset}-c", "corruption.set": digest(ROBUSTBENCH_CORRUPTION_SET)}
        acc = _pct(info.get("corruptions_acc"), f"{path} corruptions_acc")
        if acc is not None:
            out.append(({**base, "mce.baseline": None}, "corruptions_acc", row, _cell(acc, None, path)))
        mce = _pct(info.get("corruptions_mce"), f"{path} corruptions_mce")
        if mce is not None and dataset == "imagenet":
            out.append(({**base, "mce.baseline": BASELINE_RB}, "corruptions_mce", row, _cell(mce, None, path)))
    return [(fp, metric, r, cell) for fp, metric, r, cell in out] if out else []


def _cell(value: float, n: int | None, path: Path) -> Cell:
    """A published number; its Wilson interval when the count out of RobustBench's n is recoverable."""
    cell = Cell(value, None, None, n or 0, n or 0, None, [str(path)], published=True)
    if n:
        k = round(value * n)
        if abs(round(100.0 * k / n, 2) - round(100.0 * value, 2)) < 1e-9:
            cell.lo, cell.hi = metrics.wilson_interval(k, n)
            cell.note = f"count inferred: {k}/{n}"
    return cell


def add_published(boards: list[Board], paths: list[str]) -> list[Board]:
    """Published rows joined to the columns whose fingerprints agree with every field they state."""
    from .fingerprint import agrees

    for path in published_files(paths):
        info = json.loads(path.read_text())
        for fp, metric, row, cell in read_published(path):
            dataset = fp["dataset"].removesuffix("-c")
            board = next((b for b in boards if b.key[0] == dataset and b.key[1] == fp["samples.selection"]), None)
            if board is None:
                board = Board((dataset, fp["samples.selection"], None), f"{dataset}: RobustBench (published)")
                boards.append(board)
            col = next((c for c in board.columns if c.metric == metric and agrees(fp, c.fingerprint)), None)
            if col is None:
                label = column_label(fp) if metric == "accuracy" else (
                    "corruption acc (RobustBench 15 x 5)" if metric == "corruptions_acc" else
                    "mCE vs AlexNet (RobustBench 15 x 5)")
                col = Column(digest({"fp": fp, "metric": metric}), dict(fp), label, metric, partial=True)
                board.columns.append(col)
            col.cells[row] = cell
            if row not in board.rows:
                board.rows[row] = Row(row, path.stem, {"name": path.stem, "arch": info.get("architecture"),
                                                        "published": {k: info.get(k) for k in ("link", "venue")}},
                                      runs=[str(path)], published=True)
    return boards


# ------------------------------------------------------------------------------------------- export

def _fmt(value: float | None) -> str | None:
    return None if value is None or value != value else str(round(100.0 * value, 2))


def _eps_text(eps: float, norm: str) -> str:
    k = eps * 255
    return f"{round(k)}/255" if norm == "Linf" and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def export_row(board: Board, key: str, out_dir: Path) -> list[Path]:
    """The row as RobustBench model_info JSONs, one per threat model it has numbers for."""
    row = board.rows[key]
    dataset = board.key[0]
    cells = [(c, c.cells[key]) for c in board.columns if key in c.cells]
    clean = next((cell for c, cell in cells if c.fingerprint.get("kind") == "clean"), None)
    deviations = _deviations(board, dataset)
    common = {"name": None, "link": None, "authors": None, "additional_data": None, "venue": None,
              "number_forward_passes": 1, "dataset": dataset, "architecture": row.model.get("arch"),
              "reported": None, "clean_acc": _fmt(clean.value) if clean else None}
    files = []
    buckets: dict[str, dict[str, Any]] = {}
    for c, cell in cells:
        fp = c.fingerprint
        if fp.get("name") == "autoattack" and fp.get("attack.version", "standard") == "standard" \
                and fp.get("threat.norm") in ("Linf", "L2") and fp.get("threat.eps") is not None:
            buckets.setdefault(fp["threat.norm"], {})["autoattack_acc"] = _fmt(cell.value)
            buckets[fp["threat.norm"]]["eps"] = _eps_text(float(fp["threat.eps"]), fp["threat.norm"])
        elif c.metric in ("corruptions_acc", "corruptions_mce"):
            buckets.setdefault("corruptions", {"eps": None})[c.metric] = _fmt(cell.value)
    if not buckets:
        buckets["clean"] = {"eps": None}
    for threat, values in buckets.items():
        doc = {k: None for k in FIELDS}
        doc.update(common)
        doc.update(values)
        n = clean.n if clean else 0
        doc["footnote"] = (f"Evaluated with robustbench-rpc on {n} images ({board.key[1]}); model {row.name}"
                           + (f"; differs from RobustBench's protocol: {'; '.join(deviations)}" if deviations else
                              "; RobustBench's protocol") + (f"; flags: {', '.join(row.flags)}" if row.flags else ""))
        path = out_dir / dataset / threat / f"{_safe(row.name)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))
        files.append(path)
    return files


def _deviations(board: Board, dataset: str) -> list[str]:
    out = []
    if dataset in N_EXAMPLES and board.key[1] != _selection(dataset):
        out.append(f"images: {board.key[1]}, not RobustBench's "
                   + ("5,000 ids" if dataset == "imagenet" else "full test set"))
    if dataset not in N_EXAMPLES:
        out.append(f"dataset {dataset} is not one of RobustBench's")
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name)[:120] or "model"


def robustbench_eps(dataset: str, threat: str) -> float | None:
    """RobustBench's budget for a leaderboard (e.g. imagenet Linf 4/255), None when it has none."""
    return rbdata.THREAT_MODELS.get((dataset, threat), {}).get("eps")
