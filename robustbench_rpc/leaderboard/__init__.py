"""One leaderboard across many runs (``robustbench-rpc leaderboard RUN... --out DIR``).

Runs are read read-only (``sources``); every stored number carries a protocol fingerprint (``fingerprint``);
numbers whose fingerprints agree share a column, different ones never merge (``merge``); rows are ranked with
Wilson intervals, bootstrap rank intervals and Holm-corrected McNemar tests, and flagged (``ranking``);
published RobustBench ``model_info`` rows join as reference rows and any row exports as one (``model_info``);
``render`` writes the page and the tables.

The board folder keeps its state (``board.json`` + ``outcomes.csv.gz``, the per-sample outcomes it used), so
rerunning with one more run folder, or with only the new one, adds it without reading the others again; a
run whose store changed since (a resumed run) is read anew.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .merge import Board, board_differences, build_boards
from .model_info import add_published, export_row
from .ranking import flag_rows, rank_board
from .render import write_all
from .sources import OUTCOME_COLUMNS, Entry, LeaderboardError, RunRecord, open_store, read_run, store_digest

STATE = "board.json"
OUTCOMES = "outcomes.csv.gz"
STATE_VERSION = 1

__all__ = ["Board", "LeaderboardError", "build_leaderboard"]


def _save_state(out: Path, title: str, records: list[RunRecord], published: list[str]) -> None:
    meta = {"version": STATE_VERSION, "title": title, "published": published, "sources": [], "entries": []}
    frames = []
    for r in records:
        meta["sources"].append({"path": r.path, "digest": r.digest, "settings": r.settings, "models": r.models,
                                "checks": r.checks})
        for e in r.entries:
            meta["entries"].append({"run": e.run, "row": e.row, "model_key": e.model_key, "eval_key": e.eval_key,
                                    "fingerprint": e.fingerprint, "complete": e.complete, "n_expected": e.n_expected})
            frames.append(e.outcomes.assign(run=e.run, model_key=e.model_key, eval_key=e.eval_key))
    (out / STATE).write_text(json.dumps(meta, indent=1, default=str))
    cols = ["run", "model_key", "eval_key", *OUTCOME_COLUMNS]
    df = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    df.to_csv(out / OUTCOMES, index=False)


def _load_state(out: Path) -> tuple[str | None, list[RunRecord], list[str]]:
    path = out / STATE
    if not path.is_file():
        return None, [], []
    try:
        meta = json.loads(path.read_text())
        outcomes = pd.read_csv(out / OUTCOMES, dtype={"run": str, "model_key": str, "eval_key": str})
    except (OSError, json.JSONDecodeError, pd.errors.ParserError) as err:
        raise LeaderboardError(f"--out {out}: its board state ({STATE}, {OUTCOMES}) is unreadable ({err}); "
                               "choose another --out or remove them to start the board afresh") from None
    if meta.get("version") != STATE_VERSION:
        raise LeaderboardError(f"--out {out}: board state version {meta.get('version')} is not {STATE_VERSION}")
    by_entry = {k: g[OUTCOME_COLUMNS].reset_index(drop=True)
                for k, g in outcomes.groupby(["run", "model_key", "eval_key"], sort=False)}
    records = []
    for src in meta["sources"]:
        entries = [Entry(m["run"], m["row"], m["model_key"], m["eval_key"], m["fingerprint"], m["complete"],
                         m["n_expected"], by_entry.get((m["run"], m["model_key"], m["eval_key"]),
                                                       pd.DataFrame(columns=OUTCOME_COLUMNS)),
                         src["models"].get(m["model_key"], {}))
                   for m in meta["entries"] if m["run"] == src["path"]]
        records.append(RunRecord(src["path"], src["digest"], src["settings"], src["models"], src["checks"], entries))
    return meta.get("title"), records, list(meta.get("published") or [])


def build_leaderboard(runs: list[str | Path], out: str | Path, *, published: list[str | Path] = (),
                      rank_by: str | None = None, title: str | None = None, export_model_info: bool = False,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge ``runs`` (and those already on the board in ``out``) into one board folder; see the module doc."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"--out {out} is a file, not a folder")
    old_title, records, old_published = _load_state(out)
    if not runs and not records and not published and not old_published:
        raise LeaderboardError("nothing to put on a board: pass run folders (or --published model_info JSONs)")
    by_path = {r.path: r for r in records}
    read, reused = [], []
    for run in runs:
        path = str(Path(run).resolve())
        with open_store(run) as store:
            digest = store_digest(store)
        if path in by_path and by_path[path].digest == digest:
            reused.append(path)
            continue
        by_path[path] = read_run(run)
        read.append(path)
    records = list(by_path.values())
    pub = list(dict.fromkeys([*old_published, *(str(Path(p).resolve()) for p in published)]))
    boards = build_boards(records)
    boards = add_published(boards, pub)
    board_differences(boards)
    for b in boards:
        rank_board(b, rank_by)
        flag_rows(b)
    title = title or old_title or "robustbench-rpc leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    paths = write_all(out, title, boards, [r.path for r in records] + pub)
    _save_state(out, title, records, pub)
    paths["outcomes"] = out / OUTCOMES
    exported = []
    if export_model_info:
        for b in boards:
            for key, row in b.rows.items():
                if not row.published:
                    exported += export_row(b, key, out / "model_info")
    log(f"leaderboard: {len(records)} run(s) ({len(read)} read, {len(reused)} unchanged since the last build, "
        f"{len(records) - len(read) - len(reused)} kept from the board), {len(pub)} published file(s) -> "
        f"{len(boards)} board(s)")
    return {"boards": boards, "paths": paths, "read": read, "reused": reused, "exported": exported}
