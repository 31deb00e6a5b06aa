"""Durable per-sample results: an embedded SQLite database under the run's output folder.

Schema (ARCHITECTURE.md), plus additions marked (+):

    meta(key, value_json)
    models(model_key, info_json)
    evaluations(eval_key, info_json)
    units(model_key, eval_key, unit, n, finished_at)
    samples(model_key, eval_key, sample_id, unit(+), label, pred, correct1, correct5, confidence,
            clean_correct1, linf, l2, clean_correct5(+), plain_correct1(+), plain_correct5(+), l1(+), l0(+))
    checks(model_key, eval_key(+), check, status, message, details_json, updated_at(+))

`samples.unit` lets a unit be verified (its row count equals `units.n`) and compared on a rewrite;
`checks.eval_key` lets a trust check be attached to one evaluation ('' in the database = none).
For attacks, `correct1/5` hold the accuracy the evaluation reports (its ``accuracy`` parameter: robust =
clean-correct and adversarially correct, or plain = adversarially correct); `plain_correct1/5` and
`clean_correct1/5` keep the other definition derivable (robust = clean AND plain). Schema version 2 added
clean_correct5 and the plain columns, version 4 the L1 and L0 perturbation norms (``l0``: changed values over
every channel, foolbox's count); an older store is migrated in place when opened for writing (the new columns
are NULL for its rows: never measured) and read as is.

Durability: WAL journal with ``synchronous=FULL``. A unit's sample rows and its ``units`` row are written
in one transaction; once :meth:`ResultsStore.write_unit` returns, the unit survives a kill -9 of the
process (``NORMAL`` would already guarantee that) and also an OS crash or power loss (``FULL`` adds the
fsync of the WAL at every commit, a negligible cost next to a unit of model evaluation). A transaction
in flight when the process dies is rolled back on the next open, so a unit is either complete or absent.
Committed pages first live in ``results.sqlite-wal``; :meth:`ResultsStore.checkpoint` copies them into
``results.sqlite`` when an evaluation's last unit is written, at least every ``CHECKPOINT_INTERVAL_S``
and on close, so the file alone (copied elsewhere, or with its -wal deleted) is at most one evaluation
behind during a run and complete after it. A unit whose sample rows went missing later (an edited or
damaged file) is not done (:meth:`ResultsStore.done_units`): a resume recomputes it.

Damage: opening checks the file (``PRAGMA quick_check`` and a read of every JSON value) and the rows SQLite
cannot judge (``impossible_rows``: values no run writes; ``partial_units``: units whose sample rows disagree with
their ``units`` row, which a reader refuses and a resume recomputes, saying so): the checks ``verify`` runs, less
the full ``integrity_check``. Any SQLite error while reading becomes one :class:`StoreCorruptError` line naming
the store and what to do.

Concurrency: one writer process (rank 0), which holds ``<folder>/.lock`` (``lock_folder``: an OS-level
``flock``, released by the OS when the process ends, so a killed run never blocks its resume) for the
run's duration; a second run into the same folder is refused with the holder's PID. Any number of
readers may open the same file, in the same or other processes, while it writes (WAL readers see the last
committed state and never block the writer; checkpoints never wait for them, see ``checkpoint``).

Numbers in :meth:`ResultsStore.aggregates` are always computed from the stored samples, never stored.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from . import seg_areas as seg_store
from .lock import FolderLock, lock_folder  # noqa: F401 (API)
from .errors import (
    FolderBusyError, OutputWriteError, StoreConflictError, StoreCorruptError, StoreError, StoreWriteError,
    corrupt_error, is_corruption, is_write_fault, one_line, output_error, write_error,
)
from .export import write_tables
from .skips import newly_skipped, skip_conflict
from .rows import (
    BOOL_COLUMNS, FLOAT_COLUMNS, OPTIONAL_SAMPLE_COLUMNS, REQUIRED_SAMPLE_COLUMNS, SAMPLE_COLUMNS, canonical_json,
    stable_key,
)
from .schema import EVAL_KINDS, JSON_COLUMNS, MIGRATIONS, SCHEMA, SCHEMA_VERSION  # noqa: F401 (API)
from .write_unit import (
    insert_unit, refuse_clashes, require_registered, same_rows, sample_records, stored_whole, unit_index,
)
from ..metrics import wilson_interval

CHECKPOINT_INTERVAL_S = 30.0  # write_unit checkpoints the WAL at least this often (and when an evaluation ends)

# ----------------------------------------------------------------------------------------------- keys
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _normalize_info(info: Mapping[str, Any]) -> dict:
    # round trip through canonical JSON so that what we compare is exactly what is stored
    return json.loads(canonical_json(dict(info)))


def _describe_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: stored {old.get(k, '<absent>')!r} != given {new.get(k, '<absent>')!r}"
             for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- store
class ResultsStore:
    """Per-sample results of one run, in one SQLite file (see module docstring).

    ``ResultsStore(path)`` creates the file and schema if needed. ``ResultsStore(path, readonly=True)``
    opens an existing file without ever writing to it (reports use this); a missing file is an error.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 60.0, check_rows: bool = True):
        self.path = Path(path)
        self.readonly = readonly
        self._check_rows = check_rows
        self._lock = threading.RLock()
        self._last_checkpoint = time.monotonic()
        self._n_expected: dict[str, int] = {}  # eval_key -> n_samples: a unit that completes one checkpoints
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"results store not found: {self.path}")
        try:
            self._open(timeout, check_rows)
        except BaseException:
            con = getattr(self, "_con", None)
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            raise

    def _open(self, timeout: float, check_rows: bool) -> None:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._con = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False,
                                        isolation_level=None)
            self._con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._check_schema_version()
            self._check_integrity()
            if check_rows:
                self._refuse_damaged_rows(partial_too=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False,
                                    isolation_level=None)  # we issue BEGIN/COMMIT ourselves
        con = self._con
        con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            if is_corruption(e):
                raise StoreError(f"{self.path} is not a results store, or its header is damaged ({e}): restore "
                                 "it from a copy, or move it aside and rerun the same command to recompute") from e
            raise
        if str(mode).lower() != "wal":
            raise StoreError(f"could not enable WAL journal on {self.path} (got {mode!r}); "
                             "is it on a network file system?")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        self._check_integrity(decode=False)  # before the schema is touched: a damaged file is never written
        with self._transaction():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT value_json FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
            else:
                version = self._loads(row[0], "meta 'schema_version'")
                while version in MIGRATIONS:  # older stores gain the new columns, their rows kept
                    for stmt in MIGRATIONS[version]:
                        con.execute(stmt)
                    version += 1
                    con.execute("UPDATE meta SET value_json = ? WHERE key = 'schema_version'",
                                (json.dumps(version),))
        self._check_schema_version()
        self._check_integrity(structure=False)
        if check_rows:  # a resume recomputes units that lost rows (``partial_units``); impossible values: refused
            self._refuse_damaged_rows(partial_too=False)

    # ------------------------------------------------------------------------------------ plumbing
    def _check_schema_version(self) -> None:
        try:
            row = self._con.execute("SELECT value_json FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            if "no such table" in str(e) or "not a database" in str(e):
                raise StoreError(f"{self.path} is not a results store: {e}") from e
            raise self._fault(e) from e
        version = self._loads(row[0], "meta 'schema_version'") if row else None
        if self.readonly and version in MIGRATIONS:  # read an older store as is: new columns read NULL
            self._missing_columns = {c for c in SAMPLE_COLUMNS if c not in {
                r[1] for r in self._con.execute("PRAGMA table_info(samples)").fetchall()}}
            return
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema version {version!r}; this code reads "
                             f"version {SCHEMA_VERSION}")

    def _check_integrity(self, structure: bool = True, decode: bool = True) -> None:
        """Refuse a damaged file on open, with one line (:func:`corrupt_error`).

        ``structure``: SQLite's ``PRAGMA quick_check`` (every page's b-tree structure, NOT NULL and CHECK
        constraints; it skips only the index-versus-table comparison of ``integrity_check``): measured 35 ms
        for a 100k-sample store (7.5 MB), twice that for ``integrity_check``. ``decode``: every text value of
        the small tables (meta, models, evaluations, checks) is read and its JSON parsed, because damage
        inside a value (bytes that are no UTF-8, JSON cut short) keeps the page structure valid and only
        shows when the value is read.
        """
        try:
            if structure:
                problems = [r[0] for r in self._con.execute("PRAGMA quick_check(5)").fetchall()]
                if problems != ["ok"]:
                    raise corrupt_error(self.path, "SQLite quick_check: " + "; ".join(problems[:3]))
            if decode:
                for table, column in JSON_COLUMNS:
                    for (text,) in self._con.execute(f"SELECT {column} FROM {table}"):
                        self._loads(text, f"a {table} value")
                self._con.execute('SELECT model_key, eval_key, "check", status, message FROM checks').fetchall()
        except sqlite3.DatabaseError as e:
            raise corrupt_error(self.path, e) from e

    def _refuse_damaged_rows(self, partial_too: bool) -> None:
        """Refuse, in one line, rows no run writes (:meth:`impossible_rows`) and, for a reader (``partial_too``),
        units whose sample rows disagree with their ``units`` row: tables built from them would be wrong."""
        try:
            problems = self.impossible_rows()
            partial = self.partial_units() if partial_too else []
        except sqlite3.DatabaseError as e:
            raise corrupt_error(self.path, e) from e
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise corrupt_error(self.path, f"{problems[0]}{more}")
        if partial:
            more = f" and {len(partial) - 1} more" if len(partial) > 1 else ""
            raise StoreCorruptError(
                f"the results store {self.path} is damaged ({partial[0]}{more}): tables built from it would count "
                f"the wrong samples: rerun the same `robustbench-rpc run` into {self.path.parent} to recompute "
                "those units, or restore the store from a copy")

    def partial_units(self) -> list[str]:
        """Units whose sample rows disagree with their ``units`` row (a deleted, added or moved sample row), and
        sample rows of no unit: one text each, e.g. 'unit 0 of (m, e) records n=8 but holds 7 sample rows'. What
        :meth:`verify` and ``robustbench-rpc verify`` report too; one pass over the units and the samples'
        unit index."""
        held = {(m, e, u): c for m, e, u, c in self._query(  # a scan of the samples' unit index only
            "SELECT model_key, eval_key, unit, COUNT(*) FROM samples GROUP BY model_key, eval_key, unit")}
        out = []
        for m, e, u, n in self._query("SELECT model_key, eval_key, unit, n FROM units"):
            c = held.pop((m, e, u), 0)
            if c != n:
                out.append(f"unit {u} of ({m}, {e}) records n={n} but holds {c} sample rows")
        if held:
            out.append(f"{sum(held.values())} sample rows belong to no committed unit")
        return out

    def impossible_rows(self) -> list[str]:
        """Sample rows holding values no evaluation writes (an edited or damaged row that SQLite's quick_check
        passes, as it does not check CHECK constraints): a 0/1 column with another value, a confidence outside
        [0, 1], a negative prediction or perturbation norm, an L0 norm that is no whole count, top-1 correct but not
        top-5. One text per kind, with its count and a first sample."""
        missing = getattr(self, "_missing_columns", set())
        rules = [(f"{c} not 0/1", f"{c} IS NOT NULL AND {c} NOT IN (0, 1)") for c in sorted(BOOL_COLUMNS)]
        rules += [("confidence outside [0, 1]", "NOT (confidence BETWEEN 0 AND 1)"),
                  ("a negative prediction", "pred < 0"),  # labels may be -1 (OOD images have no class)
                  ("a negative perturbation norm", "linf < 0 OR l2 < 0"),
                  ("a negative L1 norm", "l1 < 0"),  # a rule of its own: a store older than the column skips it
                  ("an L0 norm that is no count of changed values", "l0 < 0 OR l0 <> ROUND(l0)"),
                  ("top-1 correct but not top-5", "correct1 = 1 AND correct5 = 0"),
                  ("plain top-1 correct but not top-5", "plain_correct1 = 1 AND plain_correct5 = 0"),
                  ("clean top-1 correct but not top-5", "clean_correct1 = 1 AND clean_correct5 = 0")]
        rules = [(what, where) for what, where in rules if not any(re.search(rf"\b{c}\b", where) for c in missing)]
        if not self._query("SELECT 1 FROM samples WHERE " + " OR ".join(f"({w})" for _, w in rules) + " LIMIT 1"):
            return []  # one pass over the samples when they are sound; the details only for a damaged store
        out = []
        for what, where in rules:
            count, first = self._query(f"SELECT COUNT(*), MIN(eval_key || ' sample ' || sample_id) FROM samples "
                                       f"WHERE {where}")[0]
            if count:
                out.append(f"{count} sample row(s) with {what}, e.g. evaluation {first}")
        return out

    def _loads(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError) as e:
            raise corrupt_error(self.path, f"{what} is not valid JSON: {e}") from None

    def _fault(self, e: BaseException) -> StoreError:
        """The one-line StoreError for a SQLite/OS error met while using the store."""
        if is_corruption(e):
            return corrupt_error(self.path, e)
        if is_write_fault(e) and not self.readonly:
            return write_error(self.path, e)
        return StoreError(f"cannot read the results store {self.path}: {one_line(e)}")

    class _Tx:
        def __init__(self, store: "ResultsStore"):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            try:
                self.store._con.execute("BEGIN IMMEDIATE")
            except BaseException as e:
                self.store._lock.release()
                if isinstance(e, (sqlite3.DatabaseError, OSError)) and (is_write_fault(e) or is_corruption(e)):
                    raise self.store._fault(e) from e
                raise
            return self.store._con

        def __exit__(self, exc_type, exc, tb):
            try:
                if exc_type is None:
                    try:
                        self.store._con.execute("COMMIT")
                    except (sqlite3.DatabaseError, OSError) as e:
                        with contextlib.suppress(sqlite3.Error):
                            self.store._con.execute("ROLLBACK")
                        if is_write_fault(e) or is_corruption(e):
                            raise self.store._fault(e) from e
                        raise
                else:
                    with contextlib.suppress(sqlite3.Error):  # a full disk may refuse even this
                        self.store._con.execute("ROLLBACK")
            finally:
                self.store._lock.release()
            if exc_type is not None and issubclass(exc_type, (sqlite3.DatabaseError, OSError)) and (
                    is_corruption(exc) or (issubclass(exc_type, (sqlite3.OperationalError, OSError))
                                            and is_write_fault(exc))):
                raise self.store._fault(exc) from exc
            return False

    def _transaction(self) -> "ResultsStore._Tx":
        if self.readonly:
            raise StoreError(f"results store {self.path} was opened read-only")
        return ResultsStore._Tx(self)

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._con.execute(sql, tuple(params)).fetchall()
            except sqlite3.DatabaseError as e:
                raise self._fault(e) from e

    def _frame(self, sql: str, params: Iterable = ()) -> pd.DataFrame:
        with self._lock:
            try:
                cur = self._con.execute(sql, tuple(params))
                cols = [d[0] for d in cur.description]
                return pd.DataFrame.from_records(cur.fetchall(), columns=cols)
            except sqlite3.DatabaseError as e:
                raise self._fault(e) from e

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Copy the committed pages of ``<store>-wal`` into the store file itself, so that the file alone
        (copied elsewhere, or with its -wal lost) holds every unit committed so far.

        ``PASSIVE`` (the default, used after each evaluation) never waits: a reader that holds an older
        snapshot (a report or ``compare`` run while the evaluation goes on) keeps the pages it may still
        read in the WAL; they are copied by the next checkpoint, and compute never stalls behind a reader.
        ``TRUNCATE`` (used by :meth:`close`) also waits for readers (the busy timeout) and then empties the
        WAL file. Returns SQLite's (busy, pages in the WAL, pages copied); everything is in the main file
        when the last two are equal.
        """
        mode = str(mode).upper()
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"checkpoint mode must be PASSIVE, FULL, RESTART or TRUNCATE, got {mode!r}")
        if self.readonly:
            raise StoreError(f"results store {self.path} was opened read-only")
        with self._lock:
            try:
                row = tuple(self._con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())
            except (sqlite3.DatabaseError, OSError) as e:
                raise self._fault(e) from e
            self._last_checkpoint = time.monotonic()
            if row[0] == 0 and row[1] == row[2] and not self._wal_path.exists():
                self._renew_wal()
        return row

    @property
    def _wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _renew_wal(self) -> None:
        """The -wal file was deleted under the open store (a user tidying up mid-run): SQLite still writes
        through its open descriptor, so nothing is lost once checkpointed, but other processes can no
        longer read the store (disk I/O error). Leaving WAL mode and entering it again makes a new file.
        Skipped, to retry at the next checkpoint, when a reader holds the store (1 s busy timeout)."""
        con = self._con
        timeout = con.execute("PRAGMA busy_timeout").fetchone()[0]
        try:
            con.execute("PRAGMA busy_timeout = 1000")
            with contextlib.suppress(sqlite3.OperationalError):
                con.execute("PRAGMA journal_mode = DELETE").fetchone()
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not enable WAL journal on {self.path} again (got {mode!r})")
        except sqlite3.DatabaseError as e:
            raise self._fault(e) from e
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(timeout)}")

    def _checkpoint_if_due(self, model_key: str, eval_key: str) -> None:
        """After a unit: checkpoint when it completes its (model, evaluation) -- the units' recorded n add up
        to the evaluation's ``n_samples`` --, when CHECKPOINT_INTERVAL_S passed since the last checkpoint, or
        when the -wal file is gone. Costs a stat and one indexed SUM over the pair's units rows."""
        if time.monotonic() - self._last_checkpoint < CHECKPOINT_INTERVAL_S and self._wal_path.exists():
            expected = self._n_expected.get(eval_key)
            if expected is None:
                info = self.evaluation_info(eval_key) or {}
                expected = self._n_expected[eval_key] = int(info.get("n_samples") or 0)
            stored = self._query("SELECT COALESCE(SUM(n), 0) FROM units WHERE model_key = ? AND eval_key = ?",
                                 (model_key, eval_key))[0][0]
            if stored < expected:
                return
        self.checkpoint()

    def close(self) -> None:
        """Checkpoint the WAL whole into the store file (waiting at most 5 s for readers), then close.
        A checkpoint that fails (a full disk) loses nothing: the WAL keeps the pages for the next open."""
        with self._lock:
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("PRAGMA busy_timeout = 5000")
                    self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._con.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r}{', readonly=True' if self.readonly else ''})"

    # ------------------------------------------------------------------------------ registration
    def _register(self, table: str, key_col: str, key: str, info: dict) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{key_col} must be a non-empty string, got {key!r}")
        info = _normalize_info(info)
        with self._transaction() as con:
            row = con.execute(f"SELECT info_json FROM {table} WHERE {key_col} = ?", (key,)).fetchone()
            if row is None:
                con.execute(f"INSERT INTO {table} VALUES (?, ?)", (key, canonical_json(info)))
                return
            old = self._loads(row[0], f"{table} {key!r}")
            if old != info and all(k in info and info[k] == v for k, v in old.items()):
                # a newer version records more about the same key (e.g. a model's mean/std): keep the
                # old fields as they are and add the new ones, so older runs stay resumable
                con.execute(f"UPDATE {table} SET info_json = ? WHERE {key_col} = ?", (canonical_json(info), key))
                return
            if old != info:
                raise StoreConflictError(
                    f"{key_col} {key!r} is already registered in {self.path} with different info "
                    f"({_describe_diff(old, info)}). Use a new output folder, or a new key.")

    def register_model(self, model_key: str, info: Mapping[str, Any]) -> None:
        """Register a model (idempotent; the same key with different info raises StoreConflictError).

        info: name (display), spec (as given on the CLI), arch, checkpoint, checkpoint_sha256,
        attention (dict), num_params, num_classes, reference (bool).
        """
        info = _normalize_info(info)  # numpy scalars -> plain JSON values, as stored
        if not isinstance(info.get("name"), str) or not info["name"]:
            raise ValueError(f"model info needs a non-empty 'name', got {info.get('name')!r}")
        if "attention" in info and info["attention"] is not None and not isinstance(info["attention"], Mapping):
            raise ValueError("model info 'attention' must be a dict")
        info["reference"] = bool(info.get("reference", False))
        self._register("models", "model_key", model_key, info)

    def register_evaluation(self, eval_key: str, info: Mapping[str, Any]) -> None:
        """Register an evaluation (idempotent, as :meth:`register_model`).

        info: kind (clean|attack|corruption|ood|shift), name, dataset, params (dict), n_samples (int),
        optionally group (for plotting) and any other JSON value. An entry stored by an older version
        that lacks fields this one records (e.g. ``resolved``) is completed with them, never changed; a
        resume that only leaves more unreadable files out updates it while no finished unit moves.
        """
        info = _normalize_info(info)
        if info.get("kind") not in EVAL_KINDS:
            raise ValueError(f"evaluation kind must be one of {EVAL_KINDS}, got {info.get('kind')!r}")
        for field in ("name", "dataset"):
            if not isinstance(info.get(field), str) or not info[field]:
                raise ValueError(f"evaluation info needs a non-empty string {field!r}")
        info.setdefault("params", {})
        if not isinstance(info["params"], Mapping):
            raise ValueError("evaluation info 'params' must be a dict")
        n = info.get("n_samples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"evaluation info 'n_samples' must be a non-negative int, got {n!r}")
        old = self.evaluation_info(eval_key)
        added = newly_skipped(old, info) if old is not None and old != info else None
        if added is not None:  # a resume that leaves more unreadable files out (store_skips.py)
            with self._transaction() as con:
                last = con.execute("SELECT MAX(sample_id) FROM samples WHERE eval_key = ?", (eval_key,)).fetchone()[0]
                conflict = skip_conflict(eval_key, str(self.path), added, last)
                if conflict:
                    raise StoreConflictError(conflict)
                con.execute("UPDATE evaluations SET info_json = ? WHERE eval_key = ?", (canonical_json(info), eval_key))
        else:
            self._register("evaluations", "eval_key", eval_key, info)
        self._n_expected.pop(eval_key, None)

    def _info(self, table: str, key_col: str, key: str) -> dict | None:
        row = self._query(f"SELECT info_json FROM {table} WHERE {key_col} = ?", (key,))
        return self._loads(row[0][0], f"{table} {key!r}") if row else None

    def model_info(self, model_key: str) -> dict | None:
        return self._info("models", "model_key", model_key)

    def evaluation_info(self, eval_key: str) -> dict | None:
        return self._info("evaluations", "eval_key", eval_key)

    # ----------------------------------------------------------------------------------- units
    def done_units(self, model_key: str, eval_key: str) -> set[int]:
        """Indices of the units committed whole for (model, evaluation): a ``units`` row and as many sample
        rows as it records. A unit that lost sample rows (a damaged or edited store) is not done, so a
        resume recomputes it, and :meth:`write_unit` replaces what is left of it."""
        return {u for u, n, count in self._unit_counts(model_key, eval_key) if n == count}

    def incomplete_units(self, model_key: str, eval_key: str) -> dict[int, tuple[int | None, int]]:
        """Units of (model, evaluation) stored in part: {unit: (n its ``units`` row records, or None when
        sample rows are left without that row, sample rows found)}. Empty for a healthy store."""
        return {u: (n, count) for u, n, count in self._unit_counts(model_key, eval_key) if n != count}

    def _unit_counts(self, model_key: str, eval_key: str) -> list[tuple[int, int | None, int]]:
        return self._query(
            "SELECT u.unit, u.n, (SELECT COUNT(*) FROM samples s WHERE s.model_key = u.model_key AND "
            "s.eval_key = u.eval_key AND s.unit = u.unit) FROM units u WHERE u.model_key = ? AND u.eval_key = ? "
            "UNION ALL SELECT s.unit, NULL, COUNT(*) FROM samples s WHERE s.model_key = ? AND s.eval_key = ? "
            "AND NOT EXISTS (SELECT 1 FROM units u WHERE u.model_key = s.model_key AND u.eval_key = s.eval_key "
            "AND u.unit = s.unit) GROUP BY s.unit", (model_key, eval_key, model_key, eval_key))

    def write_unit(self, model_key: str, eval_key: str, unit: int,
                   rows: Mapping[str, Sequence] | Sequence[Mapping[str, Any]],
                   seg_areas: Mapping[int, Any] | None = None) -> bool:
        """Write one unit's per-sample rows and its ``units`` marker in ONE transaction.

        ``rows``: a dict of equal-length sequences (lists, numpy arrays, tensors converted by the
        caller) or a list of dicts, with sample_id, label, pred, correct1, correct5, confidence and
        optionally clean_correct1, linf, l2, l1, l0 and the other ``OPTIONAL_SAMPLE_COLUMNS`` (NULL when absent).
        Booleans are stored as 0/1.

        Writing a unit that is already committed is a no-op returning False when the rows are the same
        (ints equal, floats within 1e-9 relative) -- so a resumed or duplicated rank is harmless -- and
        raises StoreConflictError when they differ. A unit stored in part (see :meth:`incomplete_units`)
        is replaced. Returns True when the unit was written. A sample_id already stored under another
        unit of the same (model, evaluation) is an error. The WAL is checkpointed when this unit completes
        its evaluation, or CHECKPOINT_INTERVAL_S after the last checkpoint (:meth:`checkpoint`).
        ``seg_areas``: a segmentation unit's per-image counts {sample_id: (4, classes)}, written in the same
        transaction (``store/seg_areas.py``).
        """
        unit = unit_index(unit)
        records = sample_records(rows, f"unit {unit} of ({model_key}, {eval_key})")
        key = (model_key, eval_key, unit)
        with self._transaction() as con:
            require_registered(con, model_key, eval_key)
            if seg_areas is not None:
                seg_store.drop_unit_without_areas(con, key)
            stored = stored_whole(con, key)
            if stored is not None:
                if same_rows(con, key, records) and (seg_areas is None or seg_store.same_areas(con, key, seg_areas)):
                    return False
                raise StoreConflictError(
                    f"unit {unit} of model {model_key!r} on evaluation {eval_key!r} is already stored with "
                    f"different rows ({stored} stored vs {len(records)} given). Results are not deterministic, "
                    "or two runs write to the same folder.")
            refuse_clashes(con, key, [r[0] for r in records])
            insert_unit(con, key, records, _now())
            if seg_areas is not None:
                seg_store.insert_areas(con, key, seg_areas, [r[0] for r in records])
        self._checkpoint_if_due(model_key, eval_key)
        return True

    def units(self) -> pd.DataFrame:
        return self._frame("SELECT model_key, eval_key, unit, n, finished_at FROM units "
                           "ORDER BY model_key, eval_key, unit")

    def integrity_check(self) -> list[str]:
        """SQLite's full ``PRAGMA integrity_check`` (quick_check, run on open, plus index versus table
        contents and UNIQUE constraints): its problems, empty when none."""
        return [r[0] for r in self._query("PRAGMA integrity_check") if r[0] != "ok"]

    def verify(self) -> list[str]:
        """Integrity problems (empty list = none): SQLite's own full check, units whose stored row count
        differs from the count recorded with them, and rows holding values no run writes. Opening the store
        runs the two last (cheap) ones: a reader refuses both, a writer (a resume) refuses the impossible rows
        and recomputes the partial units."""
        return self.integrity_check() + self.partial_units() + self.impossible_rows()

    # ---------------------------------------------------------------------------------- checks
    def write_check(self, model_key: str | None, eval_key: str | None, check: str, status: str,
                    message: str = "", details: Mapping[str, Any] | None = None) -> None:
        """Insert or replace the trust check ``check`` for (model or None, evaluation or None).

        ``status`` is free text, conventionally one of pass, warn, fail, skip, info.
        """
        if not isinstance(check, str) or not check:
            raise ValueError("check name must be a non-empty string")
        if not isinstance(status, str) or not status:
            raise ValueError("check status must be a non-empty string")
        with self._transaction() as con:
            con.execute(
                'INSERT INTO checks (model_key, eval_key, "check", status, message, details_json, updated_at) '
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_key, eval_key, \"check\") DO UPDATE SET "
                "status = excluded.status, message = excluded.message, details_json = excluded.details_json, "
                "updated_at = excluded.updated_at",
                (model_key or "", eval_key or "", check, status.lower(), str(message or ""),
                 canonical_json(dict(details or {})), _now()))

    def checks(self) -> pd.DataFrame:
        """Columns: model_key, eval_key (None when run-wide), check, status, message, details (dict),
        updated_at."""
        df = self._frame('SELECT model_key, eval_key, "check", status, message, details_json, updated_at '
                         'FROM checks ORDER BY model_key, eval_key, "check"')
        if df.empty:
            return pd.DataFrame(columns=["model_key", "eval_key", "check", "status", "message",
                                         "details", "updated_at"])
        for c in ("model_key", "eval_key"):
            df[c] = pd.Series([v or None for v in df[c]], index=df.index, dtype=object)
        df["details"] = df.pop("details_json").map(lambda t: self._loads(t, "a check's details"))
        return df[["model_key", "eval_key", "check", "status", "message", "details", "updated_at"]]

    # ------------------------------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        if key == "schema_version":
            raise ValueError("'schema_version' is reserved")
        with self._transaction() as con:
            con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "value_json = excluded.value_json", (key, canonical_json(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._query("SELECT value_json FROM meta WHERE key = ?", (key,))
        return self._loads(row[0][0], f"meta {key!r}") if row else default

    def meta(self) -> dict[str, Any]:
        return {k: self._loads(v, f"meta {k!r}") for k, v in self._query("SELECT key, value_json FROM meta ORDER BY key")}

    # ----------------------------------------------------------------------------------- reads
    def _info_frame(self, table: str, key_col: str, nested: str, prefix: str) -> pd.DataFrame:
        rows = self._query(f"SELECT {key_col}, info_json FROM {table} ORDER BY rowid")
        records = []
        for key, info_json in rows:
            info = self._loads(info_json, f"{table} {key!r}")
            rec = {key_col: key, **info}
            sub = info.get(nested)
            if isinstance(sub, Mapping):
                for k, v in sub.items():
                    rec[f"{prefix}{k}"] = v
            records.append(rec)
        df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=[key_col])
        return df

    def models(self) -> pd.DataFrame:
        """One row per model, in registration order: model_key, the info fields (attention kept as a
        dict) and flattened ``attention_<k>`` columns."""
        df = self._info_frame("models", "model_key", "attention", "attention_")
        if "reference" in df:
            df["reference"] = df["reference"].fillna(False).astype(bool)
        return df

    def evaluations(self) -> pd.DataFrame:
        """One row per evaluation, in registration order: eval_key, the info fields (params kept as a
        dict) and flattened ``param_<k>`` columns."""
        return self._info_frame("evaluations", "eval_key", "params", "param_")

    def samples(self, model_key: str | None = None, eval_key: str | None = None,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Per-sample rows (optionally of one model and/or evaluation), ordered by key and sample_id.

        correct1/correct5 are 0/1 ints; clean_correct1 is a nullable Int64; linf/l2/l1/l0 NaN when absent.
        """
        cols = ["model_key", "eval_key", "unit", *SAMPLE_COLUMNS] if columns is None else list(columns)
        allowed = {"model_key", "eval_key", "unit", *SAMPLE_COLUMNS}
        if set(cols) - allowed:
            raise ValueError(f"unknown sample column(s) {sorted(set(cols) - allowed)}")
        where, params = [], []
        if model_key is not None:
            where.append("model_key = ?")
            params.append(model_key)
        if eval_key is not None:
            where.append("eval_key = ?")
            params.append(eval_key)
        missing = getattr(self, "_missing_columns", set())
        sql = "SELECT " + ", ".join(f"NULL AS {c}" if c in missing else c for c in cols) + " FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY model_key, eval_key, sample_id"
        df = self._frame(sql, params)
        if df.empty:
            df = pd.DataFrame({c: pd.Series(dtype="float64" if c in FLOAT_COLUMNS else
                                            "object" if c in ("model_key", "eval_key") else "int64")
                               for c in cols})
        for c in OPTIONAL_SAMPLE_COLUMNS:
            if c in df and c in BOOL_COLUMNS:
                df[c] = pd.array(df[c].tolist(), dtype="Int64")
        for c in FLOAT_COLUMNS:
            if c in df:
                df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        return df

    def aggregates(self) -> pd.DataFrame:
        """Per model x evaluation (every registered pair, in registration order), computed from the
        stored samples: n, n_expected, complete, top1, top1_lo, top1_hi, top5, top5_lo, top5_hi
        (fractions in [0, 1]; Wilson 95% intervals), mean_confidence, units.

        Pairs with no samples have n = 0, complete False and NaN statistics.
        """
        models = self._query("SELECT model_key FROM models ORDER BY rowid")
        evals = self._query("SELECT eval_key, info_json FROM evaluations ORDER BY rowid")
        counts = {(m, e): (n, c1, c5, conf) for m, e, n, c1, c5, conf in self._query(
            "SELECT model_key, eval_key, COUNT(*), SUM(correct1), SUM(correct5), AVG(confidence) "
            "FROM samples GROUP BY model_key, eval_key")}
        nunits = {(m, e): u for m, e, u in self._query(
            "SELECT model_key, eval_key, COUNT(*) FROM units GROUP BY model_key, eval_key")}
        records = []
        nan = float("nan")
        for (m,) in models:
            for e, info_json in evals:
                info = self._loads(info_json, f"evaluation {e!r}")
                n, c1, c5, conf = counts.get((m, e), (0, 0, 0, None))
                rec = {"model_key": m, "eval_key": e, "kind": info["kind"], "name": info["name"],
                       "dataset": info["dataset"], "n": int(n), "n_expected": int(info["n_samples"]),
                       "units": int(nunits.get((m, e), 0))}
                rec["complete"] = bool(n > 0 and n >= rec["n_expected"])
                for tag, k in (("top1", c1), ("top5", c5)):
                    if n:
                        lo, hi = wilson_interval(int(k), int(n))
                        rec[tag], rec[f"{tag}_lo"], rec[f"{tag}_hi"] = k / n, float(lo), float(hi)
                    else:
                        rec[tag] = rec[f"{tag}_lo"] = rec[f"{tag}_hi"] = nan
                rec["mean_confidence"] = float(conf) if conf is not None else nan
                records.append(rec)
        cols = ["model_key", "eval_key", "kind", "name", "dataset", "n", "n_expected", "complete", "units",
                "top1", "top1_lo", "top1_hi", "top5", "top5_lo", "top5_hi", "mean_confidence"]
        return pd.DataFrame.from_records(records, columns=cols)

    # ---------------------------------------------------------------------------------- export
    def export(self, out_dir: str | Path, formats: Sequence[str] = ("csv", "parquet")) -> dict[str, Path]:
        """Write models, evaluations, samples, aggregates and checks as ``<table>.<fmt>`` files, each
        atomically (``store_export.write_tables``). Dict-valued columns (attention, params, details) are
        written as canonical JSON text. Returns {"<table>.<fmt>": path}.

        A file that cannot be written (full disk) raises OutputWriteError naming it; every file is then
        either its previous version or absent, never cut short, and the store is untouched.
        """
        bad = set(formats) - {"csv", "parquet"}
        if bad:
            raise ValueError(f"unknown export format(s) {sorted(bad)}; use csv and/or parquet")
        out = Path(out_dir)
        tables = {"models": self.models(), "evaluations": self.evaluations(), "samples": self.samples(),
                  "aggregates": self.aggregates(), "checks": self.checks()}
        if seg_store.has_table(self._con) and self._query("SELECT 1 FROM seg_areas LIMIT 1"):
            tables["seg_areas"] = seg_store.areas_frame(self)  # per-image, per-class counts (long form)
        try:
            return write_tables(tables, out, formats)
        except OSError as e:
            raise output_error(out, e, "export", "rerun the same command to export again (nothing is "
                               "recomputed)") from e
