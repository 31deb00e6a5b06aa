"""One leaderboard across many runs (``robustbench-rpc leaderboard RUN... --out DIR``).

Runs are read read-only (``sources``); every stored number carries a protocol fingerprint (``fingerprint``);
numbers whose fingerprints agree share a column, different ones never merge (``merge``); rows are ranked with
Wilson intervals, bootstrap rank intervals and Holm-corrected McNemar tests, and flagged (``ranking``);
published RobustBench ``model_info`` rows join as reference rows, one board per RobustBench folder ranked as
RobustBench ranks it (``published``), and measured rows export as model_info where they follow RobustBench's
protocol (``model_info``); ``render`` writes the page and the tables.

The board folder keeps its state in ONE file (``board_state.json.gz``: the runs, their entries and the
per-sample outcomes used), replaced atomically, so a kill at any moment leaves the previous board or the new
one. Rerunning with one more run folder, or with only the new one, adds it without reading the others again;
a run whose store changed since (a resumed run, an edited sample row) is read anew; a run folder gone since
is flagged on its rows, and ``remove`` takes a run (or a published file) off the board. ``--out`` must be
empty, new, or a board folder: a run folder or a folder of other files is refused, as ``run`` refuses one.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import atomic
from .merge import Board, board_differences, build_boards
from .model_info import export_row
from .published import add_published, published_files
from .ranking import check_rank_by, flag_rows, rank_board
from .render import write_all
from .sources import (OUTCOME_COLUMNS, STORE_NAME, Entry, LeaderboardError, RunRecord, open_store, read_run,
                      store_digest)
from .segmentation import is_segmentation_run, write_segmentation_boards

STATE = "board_state.json.gz"
#: the state of boards built before it became one file (read once, then replaced by STATE)
LEGACY_STATE = ("board.json", "outcomes.csv.gz")
OUTCOMES = "outcomes.csv.gz"
STATE_VERSION = 2
FLAG_GONE = "run folder gone"

__all__ = ["Board", "LeaderboardError", "build_leaderboard"]


def check_out_folder(out: Path) -> None:
    """``--out`` is ours only when it is new, empty, or holds a board's state; never a run folder or a folder
    of the user's own files (their index.html or leaderboard.md would be overwritten)."""
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"--out {out} is a file, not a folder")
    if not out.is_dir():
        return
    if (out / STORE_NAME).exists():
        raise LeaderboardError(f"--out {out} is a run folder (it holds {STORE_NAME}): a board would overwrite its "
                               "index.html; choose an empty or new folder for the board")
    if (out / STATE).is_file() or (out / LEGACY_STATE[0]).is_file():
        return
    others = sorted(p.name for p in out.iterdir())
    if others:
        raise LeaderboardError(f"--out {out} is a folder with other files ({', '.join(others[:3])}"
                               f"{', ...' if len(others) > 3 else ''}) and no board state ({STATE}): a board would "
                               "overwrite its index.html and leaderboard.md; choose an empty or new folder, or a "
                               "board folder to update")


def _save_state(out: Path, title: str, records: list[RunRecord], published: list[str]) -> None:
    meta: dict[str, Any] = {"version": STATE_VERSION, "title": title, "published": published, "sources": []}
    for r in records:
        entries = [{"run": e.run, "row": e.row, "model_key": e.model_key, "eval_key": e.eval_key,
                    "fingerprint": e.fingerprint, "complete": e.complete, "n_expected": e.n_expected,
                    "outcomes": {c: e.outcomes[c].astype("int64").tolist() for c in OUTCOME_COLUMNS}}
                   for e in r.entries]
        meta["sources"].append({"path": r.path, "digest": r.digest, "settings": r.settings, "models": r.models,
                                "checks": r.checks, "entries": entries})
    data = json.dumps(meta, default=str, separators=(",", ":")).encode()
    atomic.write_bytes(out / STATE, gzip.compress(data, compresslevel=6, mtime=0))
    (out / LEGACY_STATE[0]).unlink(missing_ok=True)  # the old two-file state, now replaced


def _unreadable(out: Path, name: str, err: BaseException) -> LeaderboardError:
    return LeaderboardError(f"--out {out}: its board state {name} is unreadable ({type(err).__name__}: {err}); "
                            "nothing was written: rebuild the board into a new --out from its run folders (or "
                            f"remove {out} first)")


def _load_state(out: Path) -> tuple[str | None, list[RunRecord], list[str]]:
    if not (out / STATE).is_file():
        return _load_legacy(out) if (out / LEGACY_STATE[0]).is_file() else (None, [], [])
    try:
        meta = json.loads(gzip.decompress((out / STATE).read_bytes()))
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"version {meta.get('version')!r}, not {STATE_VERSION}")
        records = []
        for src in meta["sources"]:
            entries = [Entry(m["run"], m["row"], m["model_key"], m["eval_key"], m["fingerprint"], m["complete"],
                             m["n_expected"], pd.DataFrame(m["outcomes"], columns=OUTCOME_COLUMNS),
                             src["models"].get(m["model_key"], {})) for m in src["entries"]]
            records.append(RunRecord(src["path"], src["digest"], src["settings"], src["models"], src["checks"],
                                     entries))
        return meta.get("title"), records, [str(p) for p in meta.get("published") or []]
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _unreadable(out, STATE, err) from None


def _load_legacy(out: Path) -> tuple[str | None, list[RunRecord], list[str]]:
    """A board folder written before the state became one file: board.json + outcomes.csv.gz."""
    try:
        meta = json.loads((out / LEGACY_STATE[0]).read_text())
        outcomes = pd.read_csv(out / LEGACY_STATE[1], dtype={"run": str, "model_key": str, "eval_key": str})
        by_entry = {k: g[OUTCOME_COLUMNS].reset_index(drop=True)
                    for k, g in outcomes.groupby(["run", "model_key", "eval_key"], sort=False)}
        records = []
        for src in meta["sources"]:
            entries = [Entry(m["run"], m["row"], m["model_key"], m["eval_key"], m["fingerprint"], m["complete"],
                             m["n_expected"], by_entry.get((m["run"], m["model_key"], m["eval_key"]),
                                                           pd.DataFrame(columns=OUTCOME_COLUMNS)),
                             src["models"].get(m["model_key"], {}))
                       for m in meta["entries"] if m["run"] == src["path"]]
            records.append(RunRecord(src["path"], src["digest"], src["settings"], src["models"], src["checks"],
                                     entries))
        return meta.get("title"), records, list(meta.get("published") or [])
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError, AttributeError,
            pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise _unreadable(out, LEGACY_STATE[0], err) from None


def _write_outcomes(out: Path, records: list[RunRecord]) -> Path:
    """The per-sample outcomes the board used, for the reader (the board reads its state, not this file)."""
    cols = ["run", "model_key", "eval_key", *OUTCOME_COLUMNS]
    frames = [e.outcomes.assign(run=e.run, model_key=e.model_key, eval_key=e.eval_key)
              for r in records for e in r.entries]
    df = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    with atomic.replacing(out / OUTCOMES) as tmp:
        df.to_csv(tmp, index=False, compression="gzip")
    return out / OUTCOMES


def build_leaderboard(runs: list[str | Path], out: str | Path, *, published: list[str | Path] = (),
                      rank_by: str | None = None, title: str | None = None, export_model_info: bool = False,
                      remove: list[str | Path] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge ``runs`` (and those already on the board in ``out``) into one board folder; see the module doc."""
    out = Path(out)
    check_out_folder(out)
    old_title, records, old_published = _load_state(out)
    by_path = {r.path: r for r in records}
    pub = list(dict.fromkeys([*old_published, *(str(Path(p).resolve()) for p in published)]))
    for item in remove:
        path = str(Path(item).resolve())
        if path in by_path:
            del by_path[path]
        elif path in pub:
            pub.remove(path)
        else:
            raise LeaderboardError(f"--remove {item}: not on the board in {out} (its runs: "
                                   + (", ".join(by_path) or "none") + "; published: " + (", ".join(pub) or "none")
                                   + ")")
    if not runs and not by_path and not pub and not remove:
        raise LeaderboardError("nothing to put on a board: pass run folders (or --published model_info JSONs)")

    seg_runs = [str(Path(r).resolve()) for r in runs if is_segmentation_run(Path(r))]  # boards of their own
    runs = [r for r in runs if str(Path(r).resolve()) not in seg_runs]
    if seg_runs and not runs and not by_path and not pub and not remove:  # segmentation runs only
        seg = write_segmentation_boards(list(dict.fromkeys(seg_runs)), out, log)
        return {"boards": [], "paths": {**seg, "html": seg["segmentation_md"]}, "read": seg_runs, "reused": [],
                "kept": [], "gone": [], "exported": [], "not_exported": []}
    seg_paths = write_segmentation_boards(list(dict.fromkeys(seg_runs)), out, log)
    read, reused = [], []
    for run in dict.fromkeys(str(Path(r).resolve()) for r in runs):
        with open_store(run) as store:
            digest = store_digest(store)
        if run in by_path and by_path[run].digest == digest:
            reused.append(run)
            continue
        by_path[run] = read_run(run)
        read.append(run)
    records = list(by_path.values())
    kept = [p for p in by_path if p not in read and p not in reused]
    gone = {p for p in kept if not (Path(p) / STORE_NAME).is_file()}
    boards = build_boards(records)
    boards = add_published(boards, pub)
    n_published = len(published_files(pub))
    board_differences(boards)
    check_rank_by(boards, rank_by)
    for b in boards:
        for row in b.rows.values():
            if any(r in gone for r in row.runs):
                row.own_flags.append(FLAG_GONE)
        rank_board(b, rank_by)
        flag_rows(b)
    title = title or old_title or "robustbench-rpc leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    paths = write_all(out, title, boards, [r.path for r in records] + [str(p) for p in published_files(pub)])
    _save_state(out, title, records, pub)
    paths["state"] = out / STATE
    paths["outcomes"] = _write_outcomes(out, records)
    exported: list[Path] = []
    not_exported: list[str] = []
    if export_model_info:
        taken: dict[Path, str] = {}
        for b in boards:
            for key, row in b.rows.items():
                if not row.published:
                    files, skipped = export_row(b, key, out / "model_info", taken)
                    exported += files
                    not_exported += skipped
    log(f"leaderboard: {len(records)} run(s) ({len(read)} read, {len(reused)} unchanged since the last build, "
        f"{len(kept)} kept from the board" + (f", {len(gone)} of them gone from disk (flagged; --remove takes "
                                              "them off)" if gone else "") + f"), {n_published} published file(s) "
        f"-> {len(boards)} board(s)")
    paths.update(seg_paths)
    return {"boards": boards, "paths": paths, "read": read, "reused": reused, "kept": kept, "gone": sorted(gone),
            "exported": list(dict.fromkeys(exported)), "not_exported": not_exported}
