"""How one unit is written: the SQL steps of ``ResultsStore.write_unit``, each on the open transaction's
connection. A unit is whole when its ``units`` row and as many sample rows as that row records are
present; anything less (rows lost, or rows left without their ``units`` row) is not a result and is
replaced."""
from __future__ import annotations

import operator
import sqlite3
from typing import Any, Mapping, Sequence

from .errors import StoreConflictError, StoreError
from .rows import REQUIRED_SAMPLE_COLUMNS, SAMPLE_COLUMNS, coerce, rows_to_columns, same_value

UnitKey = tuple[str, str, int]  # (model_key, eval_key, unit)
_WHERE = "WHERE model_key = ? AND eval_key = ? AND unit = ?"


def unit_index(unit: Any) -> int:
    try:
        if isinstance(unit, bool):
            raise TypeError
        return operator.index(unit)
    except TypeError:
        raise ValueError(f"unit must be an int, got {unit!r}") from None


def sample_records(rows: Mapping[str, Sequence] | Sequence[Mapping[str, Any]], what: str) -> list[tuple]:
    """Validated rows as tuples in ``SAMPLE_COLUMNS`` order (absent optional columns None)."""
    cols = rows_to_columns(rows)
    records = [tuple(coerce(c, cols[c][i], c in REQUIRED_SAMPLE_COLUMNS) if c in cols else None
                     for c in SAMPLE_COLUMNS) for i in range(len(cols["sample_id"]))]
    ids = [r[0] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} has duplicate sample_ids")
    return records


def require_registered(con: sqlite3.Connection, model_key: str, eval_key: str) -> None:
    for table, col, key in (("models", "model_key", model_key), ("evaluations", "eval_key", eval_key)):
        if con.execute(f"SELECT 1 FROM {table} WHERE {col} = ?", (key,)).fetchone() is None:
            raise StoreError(f"{col} {key!r} is not registered; call register_"
                             f"{'model' if table == 'models' else 'evaluation'} first")


def stored_whole(con: sqlite3.Connection, key: UnitKey) -> int | None:
    """The row count of the unit when it is stored whole, else None; a unit stored in part is deleted
    first: it is no result."""
    row = con.execute(f"SELECT n FROM units {_WHERE}", key).fetchone()
    count = con.execute(f"SELECT COUNT(*) FROM samples {_WHERE}", key).fetchone()[0]
    if row is not None and count == row[0]:
        return count
    if row is not None or count:
        con.execute(f"DELETE FROM samples {_WHERE}", key)
        con.execute(f"DELETE FROM units {_WHERE}", key)
    return None


def same_rows(con: sqlite3.Connection, key: UnitKey, records: list[tuple]) -> bool:
    """The stored rows of a whole unit equal ``records`` (ints equal, floats within 1e-9 relative)."""
    stored = con.execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples {_WHERE} ORDER BY sample_id",
                         key).fetchall()
    given = sorted(records, key=lambda r: r[0])
    return len(stored) == len(given) and all(
        all(same_value(a, b) for a, b in zip(rs, rg)) for rs, rg in zip(stored, given))


def refuse_clashes(con: sqlite3.Connection, key: UnitKey, ids: list[int]) -> None:
    """A sample_id already stored under another unit of the same (model, evaluation) is an error."""
    model_key, eval_key, unit = key
    clash: list = []
    for start in range(0, len(ids), 500):  # stay below SQLite's bound-variable limit
        chunk = ids[start:start + 500]
        clash += con.execute(
            f"SELECT sample_id, unit FROM samples WHERE model_key = ? AND eval_key = ? AND sample_id IN "
            f"({','.join('?' * len(chunk))}) LIMIT 5", (model_key, eval_key, *chunk)).fetchall()
        if clash:
            raise StoreConflictError(
                f"unit {unit} of ({model_key}, {eval_key}) repeats sample_ids already stored under "
                f"other units: {[(s, u) for s, u in clash]} (sample_id, unit)")


def insert_unit(con: sqlite3.Connection, key: UnitKey, records: list[tuple], finished_at: str) -> None:
    con.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?)", (*key, len(records), finished_at))
    con.executemany(
        "INSERT INTO samples (model_key, eval_key, unit, " + ", ".join(SAMPLE_COLUMNS) + ") "
        "VALUES (?, ?, ?, " + ", ".join("?" * len(SAMPLE_COLUMNS)) + ")", [(*key, *r) for r in records])
