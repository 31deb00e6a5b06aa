"""Measured rows out as RobustBench ``model_info`` JSON, claiming no more than was measured.

Layout and fields as RobustBench's repository holds them (``model_info/<dataset>/<threat>/<model>.json``;
``robustbench/utils.py::ModelInfo``'s fields, plus ``external``, which its ``ACC_FIELDS`` ranks by where
present); numbers as its ``update_json`` writes them: percentages as strings rounded to 2 decimals.

Only RobustBench's protocol goes under its field names: RobustBench's dataset and images (the full CIFAR
test set, its 5,000 ImageNet ids), AutoAttack's standard version at full budgets at RobustBench's eps in the
plain pixel threat model for ``autoattack_acc``; its 15 corruptions x 5 severities from the published
``-C`` files for ``corruptions_acc`` (and AlexNet's mCE where its baseline covers the images). A file is
written per threat model that has such a number; every other number of the row (a reduced AutoAttack,
another attack, a smaller corruption set) is named in the file's ``footnote``, and a threat model with
none is not exported, with the reason returned. The best known robust accuracy (a per-sample worst case of
AutoAttack and the adaptive attacks or given adversarial sets at the same budget) goes out as ``external``
where it is lower than AutoAttack's, with a footnote naming them, as RobustBench's own external evaluations do.
Unknown strings are ``"N/A"`` (RobustBench's own placeholder: ``get_leaderboard_bibtex`` skips an N/A venue
and crashes on a null one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import atomic
from ..data import robustbench as rbdata
from ..evalspec import eps_label
from ..store.rows import stable_key
from .fingerprint import is_reduced_autoattack
from .merge import ROBUSTBENCH_CORRUPTION_SET, Board, Column, _rb_list_sha
from .published import N_EXAMPLES

#: robustbench/utils.py ModelInfo's fields, in its order
FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
          "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "corruptions_acc_3d",
          "corruptions_mce", "corruptions_mce_3d", "autoattack_acc", "footnote")
PIXEL_THREAT = {"threat.space": "pixel", "threat.clip": True, "threat.labels": "true", "threat.accuracy": "robust"}


def _fmt(value: float | None) -> str | None:
    return None if value is None or value != value else str(round(100.0 * value, 2))


def _rb_selection(dataset: str) -> str:
    return f"list sha256:{_rb_list_sha()}" if dataset == "imagenet" else "all"


def _eps_text(eps: float, norm: str) -> str:
    return eps_label(eps) if norm == "Linf" else f"{eps:g}"


def _is_rb_autoattack(c: Column, dataset: str, norm: str) -> bool:
    fp = c.fingerprint
    budget = rbdata.THREAT_MODELS.get((dataset, norm), {}).get("eps")
    return (fp.get("kind") == "attack" and fp.get("name") == "autoattack" and not is_reduced_autoattack(fp)
            and fp.get("threat.norm") == norm and budget is not None
            and abs(float(fp.get("threat.eps") or -1) - budget) < 1e-9
            and all(fp.get(k) == v for k, v in PIXEL_THREAT.items()))


def _is_rb_corruptions(c: Column, dataset: str) -> bool:
    fp = c.fingerprint
    return (c.metric in ("corruptions_acc", "corruptions_mce") and fp.get("corruption.source") == f"{dataset}-c"
            and fp.get("corruption.set") == stable_key(ROBUSTBENCH_CORRUPTION_SET))


def export_row(board: Board, key: str, out_dir: Path, taken: dict[Path, str]) -> tuple[list[Path], list[str]]:
    """The row as RobustBench model_info JSONs (see the module docstring): (files written, reasons for what
    was not). ``taken``: paths already written in this export (path -> row), so two rows never share a file."""
    row = board.rows[key]
    dataset = board.key[0]
    if dataset not in N_EXAMPLES:
        return [], [f"{row.name}: dataset {dataset} is not one of RobustBench's ({', '.join(N_EXAMPLES)})"]
    if board.key[1] != _rb_selection(dataset):
        return [], [f"{row.name}: evaluated on {board.key[1]}, not RobustBench's "
                    + ("5,000 ImageNet ids" if dataset == "imagenet" else "full test set")]
    cells = [(c, c.cells[key]) for c in board.columns if key in c.cells and c.cells[key].complete]
    clean = next((cell for c, cell in cells if c.fingerprint.get("kind") == "clean"), None)
    files, skipped = [], []
    for threat in ("Linf", "L2", "corruptions"):
        if threat == "corruptions":
            ours = [(c, cell) for c, cell in cells if _is_rb_corruptions(c, dataset)]
            others = [(c, cell) for c, cell in cells if c.metric in ("corruptions_acc", "corruptions_mce")
                      and not _is_rb_corruptions(c, dataset)]
        else:
            ours = [(c, cell) for c, cell in cells if _is_rb_autoattack(c, dataset, threat)]
            others = [(c, cell) for c, cell in cells
                      if c.fingerprint.get("kind") in ("attack", "external", "best known")
                      and c.fingerprint.get("threat.norm", "Linf") == threat
                      and not _is_rb_autoattack(c, dataset, threat)]
        if not ours:
            if others:
                skipped.append(f"{row.name} {threat}: " + ", ".join(c.label for c, _ in others)
                               + " is not RobustBench's protocol (nothing to put under its field names)")
            continue
        doc: dict[str, Any] = {k: None for k in FIELDS}
        doc.update(link="N/A", name=row.name, authors="N/A", venue="N/A", number_forward_passes=1,
                   dataset=dataset, architecture=str(row.model.get("arch") or row.name),
                   clean_acc=_fmt(clean.value) if clean else None)
        notes = [f"Evaluated with robustbench-rpc on RobustBench's protocol "
                 f"({N_EXAMPLES[dataset]} images); model {row.name}"]
        if threat == "corruptions":
            for c, cell in ours:
                doc[c.metric] = _fmt(cell.value)
        else:
            aa_col, aa = ours[0]
            doc["eps"] = _eps_text(float(aa_col.fingerprint["threat.eps"]), threat)
            doc["autoattack_acc"] = _fmt(aa.value)
            best = next(((c, cell) for c, cell in cells if c.fingerprint.get("kind") == "best known"
                         and all(c.fingerprint.get(k) == aa_col.fingerprint.get(k)
                                 for k in ("threat.norm", "threat.eps", *PIXEL_THREAT))), None)
            if best is not None and _fmt(best[1].value) != doc["autoattack_acc"] and best[1].value < aa.value:
                doc["external"] = _fmt(best[1].value)
                notes.append(f"external (best known robust accuracy): {best[1].note}")
            others = [(c, cell) for c, cell in others if c.fingerprint.get("kind") != "best known"]
        if others:
            notes.append("also measured, not RobustBench's protocol: " + "; ".join(
                f"{c.label} {_fmt(cell.value)} %" for c, cell in others))
        if row.flags:
            notes.append("flags: " + ", ".join(row.flags))
        doc["footnote"] = "; ".join(notes)
        path = out_dir / dataset / threat / f"{_safe(row.name)}.json"
        if path in taken and taken[path] != key:
            path = path.with_name(f"{_safe(row.name)}_{key[:8]}.json")
        taken[path] = key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(doc, indent=2))
        files.append(path)
    if not files and not skipped:
        skipped.append(f"{row.name}: no AutoAttack standard or RobustBench corruption number")
    return files, skipped


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name)[:120] or "model"


def robustbench_eps(dataset: str, threat: str) -> float | None:
    """RobustBench's budget for a leaderboard (e.g. imagenet Linf 4/255), None when it has none."""
    return rbdata.THREAT_MODELS.get((dataset, threat), {}).get("eps")
