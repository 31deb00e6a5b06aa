"""Ranks, paired tests and flags of a board.

- The rank column: ``rank_by`` (a column label, or its start; one naming no column of any board is an
  error), else the first "best known" column (RobustBench's ranking key: an external or adaptive worst case
  where known, else AutoAttack standard), else the first AutoAttack standard column, else the first
  AutoAttack, else the first attack column, else the first corruption accuracy (RobustBench ranks corruption
  boards by it), else the first clean column. Rows with a complete value rank by it, ties sharing a rank
  (1 + the rows strictly better); tied rows keep the order they were read in (published files: by name);
  published rows rank by their point estimate.
- Rank intervals: a paired bootstrap over the samples every measured row of the column shares
  (:func:`metrics.bootstrap_rank_intervals`, 1,000 resamples, 95 %).
- Paired McNemar tests between every two measured rows on their shared sample ids
  (:func:`metrics.mcnemar`), Holm-adjusted over the board's pairs (:func:`metrics.holm_adjust`).
- Flags: published; what a published file states (unreliable AutoAttack, external evaluation, extra data,
  eps not stated, robust above clean); a run folder gone since it was read; incomplete; failed trust checks;
  reduced AutoAttack; a dynamic model (model info ``dynamics.kind == "dynamic"``) without an adaptive attack
  in its row (``evalspec.is_adaptive``: bpda, transfer, or ``adaptive = true``); a model at chance
  (the ``chance_level`` check failed, or without it, a clean Wilson interval containing 1/classes);
  stochastic (evaluated with EOT).
"""
from __future__ import annotations

import math

import numpy as np

from .. import metrics
from ..registry import did_you_mean
from .fingerprint import is_adaptive_column, is_reduced_autoattack
from .merge import Board, Column
from .sources import LeaderboardError

N_BOOT = 1000


def _matches(board: Board, rank_by: str) -> list[Column]:
    return [c for c in board.columns if c.label == rank_by] or \
        [c for c in board.columns if c.label.startswith(rank_by)]


def check_rank_by(boards: list[Board], rank_by: str | None) -> None:
    """``rank_by`` must name a column of some board: one line with the closest labels otherwise."""
    if rank_by and not any(_matches(b, rank_by) for b in boards):
        labels = sorted({c.label for b in boards for c in b.columns})
        hint = did_you_mean(rank_by, labels, aside=True)
        if not hint:  # a misspelt start ("claen") of a long label ("clean (digits32)"): match on first words
            firsts = {label.split(" ")[0]: label for label in labels}
            hint = did_you_mean(rank_by.split(" ")[0], firsts, aside=True)
            for first, label in firsts.items():
                hint = hint.replace(f" {first}?", f" {label}?").replace(f" {first},", f" {label},")
        raise LeaderboardError(f"--rank-by {rank_by!r}: no board has such a column{hint}; columns: "
                               + ", ".join(labels))


def choose_rank_column(board: Board, rank_by: str | None = None) -> Column | None:
    if rank_by:
        hit = _matches(board, rank_by)
        if hit:
            return hit[0]
    fp = lambda c: c.fingerprint  # noqa: E731
    for test in (lambda c: fp(c).get("kind") == "best known",
                 lambda c: fp(c).get("name") == "autoattack" and not is_reduced_autoattack(fp(c)),
                 lambda c: fp(c).get("name") == "autoattack", lambda c: fp(c).get("kind") == "attack",
                 lambda c: c.metric == "corruptions_acc", lambda c: fp(c).get("kind") == "clean"):
        hit = [c for c in board.columns if c.metric in ("accuracy", "corruptions_acc") and test(c)]
        if hit:
            return hit[0]
    cols = [c for c in board.columns if c.metric == "accuracy"]
    return cols[0] if cols else None


def rank_board(board: Board, rank_by: str | None = None, n_boot: int = N_BOOT, seed: int = 0) -> None:
    col = board.rank_column = choose_rank_column(board, rank_by)
    if col is None:
        return
    ranked = [(r, c) for r, c in col.cells.items() if c.complete and not math.isnan(c.value)]
    sign = 1 if col.higher_is_better else -1
    ranked.sort(key=lambda rc: -sign * rc[1].value)
    values = [c.value for _, c in ranked]
    board.ranking = [{"row": r, "rank": 1 + sum(sign * v > sign * c.value + 1e-12 for v in values),
                      "interval": None} for r, c in ranked]
    measured = [(r, c) for r, c in ranked if not c.published and c.correct is not None]
    if len(measured) >= 2:
        common = measured[0][1].correct.index
        for _, c in measured[1:]:
            common = common.intersection(c.correct.index)
        if len(common):
            matrix = np.stack([c.correct.loc[common].to_numpy(dtype=float) for _, c in measured])
            intervals = metrics.bootstrap_rank_intervals(matrix, n_boot=n_boot, seed=seed)
            # published rows are not resampled: shift measured intervals by the published rows ranked above
            for (r, c), (lo, hi) in zip(measured, intervals):
                pub_above = [p for p, pc in ranked if pc.published and sign * pc.value > sign * c.value]
                entry = next(x for x in board.ranking if x["row"] == r)
                entry["interval"] = (lo + len(pub_above), hi + len(pub_above))
    elif len(measured) == 1:
        entry = next(x for x in board.ranking if x["row"] == measured[0][0])
        entry["interval"] = (entry["rank"], entry["rank"])
    board.pairs = paired_tests(col, [r for r, _ in measured])


def paired_tests(col: Column, rows: list[str]) -> list[dict]:
    """McNemar on the shared sample ids of every two rows (binary outcomes only), Holm-adjusted."""
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            ca, cb = col.cells[a].correct, col.cells[b].correct
            common = ca.index.intersection(cb.index)
            if not len(common):
                continue
            xa, xb = ca.loc[common].to_numpy(), cb.loc[common].to_numpy()
            if not (np.isin(xa, (0, 1)).all() and np.isin(xb, (0, 1)).all()):
                continue
            res = metrics.mcnemar(xa.astype(bool), xb.astype(bool))
            pairs.append({"a": a, "b": b, "n": len(common), "delta": float(xa.mean() - xb.mean()), **res})
    for p, adj in zip(pairs, metrics.holm_adjust([p["p_value"] for p in pairs])):
        p["p_holm"] = adj
    return pairs


def flag_rows(board: Board) -> None:
    for key, row in board.rows.items():
        flags = []
        cells = {c.label: c.cells[key] for c in board.columns if key in c.cells}
        if row.published:
            flags.append("published")
        flags += row.own_flags
        if any(not c.complete for c in cells.values()):
            flags.append("incomplete")
        failed = sorted({c["check"] for c in row.checks if c["status"] == "fail" and c["check"] != "chance_level"})
        if failed:
            flags.append("failed checks: " + ", ".join(failed))
        if any(is_reduced_autoattack(c.fingerprint) for c in board.columns if key in c.cells):
            flags.append("reduced AutoAttack")
        dyn = row.model.get("dynamics")
        if isinstance(dyn, dict) and dyn.get("kind") == "dynamic" and not any(
                is_adaptive_column(c.fingerprint) for c in board.columns if key in c.cells):
            flags.append("dynamic model, no adaptive attack")
        if _at_chance(board, key, row):
            flags.append("at chance")
        if any(c["check"] == "stochastic_model" and c["status"] == "warn" for c in row.checks):
            flags.append("stochastic (EOT)")
        row.flags = flags


def _at_chance(board: Board, key: str, row) -> bool:
    if any(c["check"] == "chance_level" for c in row.checks):
        return any(c["check"] == "chance_level" and c["status"] == "fail" for c in row.checks)
    classes = int(row.model.get("num_classes") or 0)
    clean = [c.cells[key] for c in board.columns if c.fingerprint.get("kind") == "clean" and key in c.cells]
    if not classes or not clean or clean[0].lo is None:
        return False
    return clean[0].lo <= 1.0 / classes
