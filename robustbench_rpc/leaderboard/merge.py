"""Merging entries of many runs into boards: one column per protocol fingerprint, one row per model.

Rules:

- Entries of the same model (fingerprint.model_identity: architecture + checkpoint hash + settings) under the
  same fingerprint, from different runs, are one cell when their per-sample outcomes agree on every shared
  sample (pred, correct1, correct5); otherwise :class:`LeaderboardError` names both runs, the model, the
  evaluation and the first differing sample.
- The corruption evaluations of one model that share everything but (corruption, severity) become one
  aggregate: RobustBench's corruption accuracy (mean of the per-(corruption, severity) accuracies) and its mCE
  against AlexNet where a published AlexNet baseline exists for exactly these images (RobustBench's 5,000 ids:
  its per-severity rows; the full ImageNet val: Hendrycks & Dietterich's per-corruption errors).
- A board holds the runs that evaluated the same images (run dataset, selection, sample-id hash); columns
  with the same label but different fingerprints are split ("[A]", "[B]") and say which fields differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from ..data import robustbench as rbdata
from ..store.rows import stable_key
from .fingerprint import column_label, differences, is_adaptive_column, is_reduced_autoattack
from .sources import Entry, LeaderboardError, RunRecord
from ..data.subsets import subset_fingerprint

ROBUSTBENCH_CORRUPTION_SET = sorted((c, s) for c in rbdata.CORRUPTIONS for s in range(1, 6))
BASELINE_RB = "AlexNet on RobustBench's 5,000 ids (its unaggregated_results.csv)"
BASELINE_HENDRYCKS = "AlexNet on the full val set (Hendrycks & Dietterich 2019)"


@dataclass
class Cell:
    value: float
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    n_expected: int = 0
    correct: pd.Series | None = None          # per sample_id: 1/0 (or a mean over corruptions)
    runs: list[str] = field(default_factory=list)
    published: bool = False
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.published or (self.n > 0 and self.n >= self.n_expected)


@dataclass
class Column:
    key: str                                   # digest of the fingerprint (+ the kind of number)
    fingerprint: dict[str, Any]
    label: str
    metric: str = "accuracy"                   # accuracy | corruptions_acc | corruptions_mce
    cells: dict[str, Cell] = field(default_factory=dict)
    note: str = ""
    partial: bool = False                      # created by a published row: only the fields it states

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "corruptions_mce"


@dataclass
class Row:
    row: str
    name: str
    model: dict[str, Any]
    runs: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    published: bool = False
    flags: list[str] = field(default_factory=list)
    #: flags that come with the row itself (a published file's "unreliable", "additional_data"; a gone run)
    own_flags: list[str] = field(default_factory=list)
    footnote: str = ""


@dataclass
class Board:
    key: tuple
    title: str
    columns: list[Column] = field(default_factory=list)
    rows: dict[str, Row] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank_column: Column | None = None
    ranking: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    #: the RobustBench folder (threat model) a board of published rows only reproduces, else None
    robustbench: str | None = None

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)


# ------------------------------------------------------------------------------------------ merging

def merge_entries(entries: list[Entry]) -> list[list[Entry]]:
    """Groups of entries that are one measurement (same row, same fingerprint), checked for agreement."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.row, stable_key(e.fingerprint)), []).append(e)
    for group in groups.values():
        first = group[0]
        for other in group[1:]:
            _check_agree(first, other)
    return list(groups.values())


def _check_agree(a: Entry, b: Entry) -> None:
    cols = ["pred", "correct1", "correct5"]
    joined = a.outcomes.merge(b.outcomes, on="sample_id", suffixes=("_a", "_b"))
    bad = np.zeros(len(joined), dtype=bool)
    for c in cols:
        bad |= joined[f"{c}_a"].to_numpy() != joined[f"{c}_b"].to_numpy()
    if bad.any():
        r = joined[bad].iloc[0]
        label = column_label(a.fingerprint)
        raise LeaderboardError(
            f"model {a.model.get('name')} (checkpoint sha256 {str(a.model.get('checkpoint_sha256'))[:12]}): runs "
            f"{a.run} and {b.run} evaluated {label} under the same protocol but disagree at sample "
            f"{int(r['sample_id'])} (pred {int(r['pred_a'])} vs {int(r['pred_b'])}, correct {int(r['correct1_a'])} "
            f"vs {int(r['correct1_b'])}; {int(bad.sum())} of {len(joined)} shared samples differ): the same "
            "measurement cannot have two results; rerun one of them or drop it from the board")


def _union(group: list[Entry]) -> tuple[pd.DataFrame, list[str], int]:
    frames = pd.concat([e.outcomes for e in group]).drop_duplicates("sample_id").sort_values("sample_id")
    return frames.reset_index(drop=True), sorted({e.run for e in group}), max(e.n_expected for e in group)


def accuracy_cell(group: list[Entry]) -> Cell:
    out, runs, n_expected = _union(group)
    k, n = int(out["correct1"].sum()), len(out)
    lo, hi = metrics.wilson_interval(k, n) if n else (None, None)
    return Cell(k / n if n else float("nan"), lo, hi, n, n_expected,
                out.set_index("sample_id")["correct1"].astype(float), runs)


# ----------------------------------------------------------------------------------- corruption sets

def _reduced(fp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fp.items() if k not in ("name", "corruption.name", "corruption.severity")}


def _baseline(fp: dict[str, Any], members: list[tuple[str, int]]) -> tuple[str | None, dict | None]:
    """(label, {(c, s): AlexNet accuracy}) when a published AlexNet baseline covers exactly these images."""
    rb_selection = f"list sha256:{_rb_list_sha()}"
    if fp.get("corruption.source") == "imagenet-c" and fp.get("samples.selection") == rb_selection:
        alex = rbdata.alexnet_imagenet_c()
        if all(m in alex for m in members):
            return BASELINE_RB, alex
    if fp.get("corruption.source") == "imagenet-c" and fp.get("samples.selection") == "all" \
            and all(c in metrics.ALEXNET_ERRORS for c, _ in members):
        return BASELINE_HENDRYCKS, {(c, s): 1.0 - metrics.ALEXNET_ERRORS[c] for c, s in members}
    return None, None


def _rb_list_sha() -> str:
    return subset_fingerprint(rbdata.imagenet_test_ids())[:16]


def corruption_cells(groups: list[list[Entry]]) -> list[tuple[dict, str, str, Cell]]:
    """Per model and corruption set: (fingerprint, metric, row, cell) for the accuracy aggregate and the mCE."""
    sets: dict[tuple[str, str], dict[tuple[str, int], list[Entry]]] = {}
    fps: dict[tuple[str, str], dict] = {}
    for g in groups:
        fp = g[0].fingerprint
        if fp.get("kind") != "corruption":
            continue
        red = _reduced(fp)
        key = (g[0].row, stable_key(red))
        sets.setdefault(key, {})[(str(fp["corruption.name"]), int(fp["corruption.severity"]))] = g
        fps[key] = red
    out = []
    for (row, _), members in sets.items():
        fp = dict(fps[(row, _)])
        keys = sorted(members)
        fp["kind"] = "corruption set"
        fp["corruption.set"] = stable_key(keys)
        fp["corruption.count"] = len(keys)
        fp["corruption.severities"] = sorted({s for _, s in keys})
        label_base = "RobustBench 15 x 5" if keys == ROBUSTBENCH_CORRUPTION_SET else \
            f"{len({c for c, _ in keys})} corruptions x {len(fp['corruption.severities'])} severities"
        cells = {m: accuracy_cell(g) for m, g in members.items()}
        runs = sorted({r for c in cells.values() for r in c.runs})
        complete = all(c.complete for c in cells.values())
        per_sample = pd.concat([c.correct for c in cells.values()], axis=1).mean(axis=1)
        n_expected = max(c.n_expected for c in cells.values())
        acc = {m: c.value for m, c in cells.items()}
        lo = hi = None
        if complete and len(per_sample):
            lo, hi = metrics.bootstrap_ci(per_sample.to_numpy(), np.mean, n_boot=1000, seed=0)
        scores = metrics.robustbench_corruption_scores(acc) if complete else {"corruptions_acc": float("nan")}
        note = "" if complete else f"incomplete: {sum(not c.complete for c in cells.values())} of {len(cells)} " \
                                   "corruption x severity evaluations unfinished"
        acc_cell = Cell(scores["corruptions_acc"], lo, hi, len(per_sample) if complete else 0, n_expected,
                        per_sample, runs, note=note)
        out.append(({**fp, "mce.baseline": None, "label": f"corruption acc ({label_base})"},
                    "corruptions_acc", row, acc_cell))
        base_label, base = _baseline(fp, keys)
        if base is not None:
            value = metrics.robustbench_corruption_scores(acc, base)["corruptions_mce"] if complete else float("nan")
            out.append(({**fp, "mce.baseline": base_label, "label": f"mCE vs AlexNet ({label_base})"},
                        "corruptions_mce", row, Cell(value, None, None, acc_cell.n, n_expected, None, runs,
                                                      note=note)))
    return out


# --------------------------------------------------------------------------------------------- boards

def base_key(run: RunRecord) -> tuple:
    """The images a run evaluated: (dataset, selection, sample-id hash) of its clean evaluation on its dataset,
    else of its first attack evaluation."""
    dataset = run.settings.get("dataset")
    cand = [e for e in run.entries if e.fingerprint.get("dataset") == dataset and e.fingerprint["kind"] == "clean"]
    cand = cand or [e for e in run.entries if e.fingerprint["kind"] == "attack"] or run.entries
    if not cand:
        return (dataset, "none", None)
    fp = cand[0].fingerprint
    return (dataset, fp.get("samples.selection"), fp.get("samples.ids"))


def build_boards(runs: list[RunRecord]) -> list[Board]:
    """Boards from run records (published rows are added afterwards: model_info.add_published)."""
    boards: dict[tuple, Board] = {}
    run_base = {r.path: base_key(r) for r in runs}
    for r in runs:
        key = run_base[r.path]
        b = boards.setdefault(key, Board(key, _title(key)))
        b.runs.append(r.path)
    entries = [e for r in runs for e in r.entries]
    groups = merge_entries(entries)
    by_run = {r.path: r for r in runs}
    for g in groups:
        fp = g[0].fingerprint
        if fp["kind"] == "corruption":
            continue
        for board_key in {run_base[e.run] for e in g}:
            sub = [e for e in g if run_base[e.run] == board_key]
            _put(boards[board_key], fp, "accuracy", sub[0].row, accuracy_cell(sub), sub, by_run)
    for board_key, board in boards.items():
        sub_groups = [[e for e in g if run_base[e.run] == board_key] for g in groups
                      if g[0].fingerprint["kind"] == "corruption"]
        for fp, metric, row, cell in corruption_cells([g for g in sub_groups if g]):
            members = [e for g in sub_groups for e in g if e.row == row]
            _put(board, fp, metric, row, cell, members, by_run)
    for b in boards.values():
        add_best_known(b)
        split_labels(b)
    return list(boards.values())


def _same_budget(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = {k for k in (*a, *b) if k.startswith(("threat.", "samples.")) or k == "dataset"}
    return all(a.get(k) == b.get(k) for k in keys)


def add_best_known(board: Board) -> None:
    """A "best known" column beside each AutoAttack standard column, RobustBench's ranking key: per row, the
    per-sample worst case of AutoAttack and every complete adaptive attack (``evalspec.is_adaptive``) or
    external evaluation (a given adversarial set) at the same budget, threat model and images; AutoAttack's
    own number where the row has neither."""
    for aa in [c for c in board.columns if c.fingerprint.get("name") == "autoattack"
               and not is_reduced_autoattack(c.fingerprint)]:
        adaptive = [c for c in board.columns if (is_adaptive_column(c.fingerprint)
                                                 or c.fingerprint.get("kind") == "external")
                    and _same_budget(c.fingerprint, aa.fingerprint)]
        fp = {k: v for k, v in aa.fingerprint.items() if not k.startswith("attack.") and k not in ("name", "seed")}
        fp["kind"] = "best known"
        for row, cell in aa.cells.items():
            if not cell.complete or cell.correct is None:
                continue
            found = [(c, c.cells[row]) for c in adaptive if row in c.cells and c.cells[row].complete
                     and c.cells[row].correct is not None]
            if not found:
                best = Cell(cell.value, cell.lo, cell.hi, cell.n, cell.n_expected, cell.correct, list(cell.runs),
                            note=f"{aa.label} (no adaptive attack or external set at this budget)")
            else:
                frame = pd.concat([cell.correct] + [x.correct for _, x in found], axis=1, join="inner")
                worst = frame.min(axis=1)
                k, n = int(worst.sum()), len(worst)
                lo, hi = metrics.wilson_interval(k, n) if n else (None, None)
                runs = sorted({r for x in [cell, *(x for _, x in found)] for r in x.runs})
                best = Cell(k / n if n else float("nan"), lo, hi, n, n, worst, runs,
                            note="per-sample worst case of " + ", ".join([aa.label] + [c.label for c, _ in found]))
            key = stable_key({"fp": fp, "metric": "accuracy"})
            col = board.column(key)
            if col is None:
                col = Column(key, dict(fp), column_label(fp), "accuracy")
                board.columns.append(col)
            col.cells[row] = best


def _put(board: Board, fp: dict, metric: str, row: str, cell: Cell, entries: list[Entry],
         runs: dict[str, RunRecord]) -> None:
    label = fp.pop("label", None) or column_label(fp)
    key = stable_key({"fp": fp, "metric": metric})
    col = board.column(key)
    if col is None:
        col = Column(key, fp, label, metric)
        board.columns.append(col)
    col.cells[row] = cell
    if row not in board.rows:
        e = entries[0]
        board.rows[row] = Row(row, str(e.model.get("name") or e.model.get("arch")), dict(e.model))
    r = board.rows[row]
    for e in entries:
        if e.run not in r.runs:
            r.runs.append(e.run)
            r.checks += [dict(c, run=e.run) for c in runs[e.run].checks.get(e.model_key, [])]


def split_labels(board: Board) -> None:
    """Columns with one label but different fingerprints: suffix [A], [B], ... and the fields that differ."""
    by_label: dict[str, list[Column]] = {}
    for c in board.columns:
        by_label.setdefault(c.label, []).append(c)
    for label, cols in by_label.items():
        if len(cols) < 2:
            continue
        for i, c in enumerate(cols):
            c.label = f"{label} [{chr(65 + i)}]"
            if i:
                c.note = "differs from [A] in: " + "; ".join(differences(cols[0].fingerprint, c.fingerprint))


def _title(key: tuple) -> str:
    dataset, selection, ids = key
    return f"{dataset}: {selection}" + (f" (sample ids {ids[:8]})" if ids else "")


def board_differences(boards: list[Board]) -> None:
    """Each board after the first says how its images differ from the first board's of the same dataset (a
    board of one RobustBench folder is apart because RobustBench's leaderboards are, not by its images)."""
    first: dict[Any, Board] = {}
    for b in boards:
        if b.robustbench is not None:
            continue
        base = first.setdefault(b.key[0], b)
        if base is not b:
            fields = ["samples.selection", "samples.ids"]
            diffs = [f"{f} ({a} vs {c})" for f, a, c in zip(fields, base.key[1:], b.key[1:]) if a != c]
            b.notes.append(f"a separate board: its images differ from '{base.title}' in " + "; ".join(diffs))
