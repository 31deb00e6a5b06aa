"""Per-image segmentation counts in the results store: the ``seg_areas`` table (schema version 3).

A segmentation evaluation's unit writes, beside its ``samples`` rows, one ``seg_areas`` row per image holding
that image's per-class intersection, union, prediction and label areas (``metrics_seg.intersect_and_union``,
an int array (4, num_classes), stored as JSON text of four lists). aAcc, mAcc, mIoU, per-class IoU, the
image-level bootstrap and the per-image worst case over attacks are all sums over these rows, so every number
a segmentation report prints is recomputed from the store, never stored.

The rows are written in the transaction that writes the unit (``ResultsStore.write_unit(..., seg_areas=...)``),
so a kill -9 leaves a unit with all of its counts or none of it. A unit whose counts went missing later (an
edited store) is not done (:func:`seg_done_units`): a resume recomputes it, replacing what is left.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Mapping

import numpy as np

_WHERE = "WHERE model_key = ? AND eval_key = ? AND unit = ?"


def encode(areas: np.ndarray) -> str:
    a = np.asarray(areas)
    if a.ndim != 2 or a.shape[0] != 4 or (a < 0).any():
        raise ValueError(f"per-image areas must be non-negative counts of shape (4, classes), got {a.shape}")
    return json.dumps(a.astype(np.int64).tolist(), separators=(",", ":"))


def decode(text: str) -> np.ndarray:
    return np.asarray(json.loads(text), dtype=np.int64)


def has_table(con: sqlite3.Connection) -> bool:
    """A store from before schema version 3, opened read-only, has no ``seg_areas`` table (and no counts)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seg_areas'").fetchone() is not None


def same_areas(con: sqlite3.Connection, key: tuple[str, str, int], areas: Mapping[int, np.ndarray]) -> bool:
    stored = dict(con.execute(f"SELECT sample_id, areas_json FROM seg_areas {_WHERE}", key).fetchall())
    return set(stored) == set(areas) and all(np.array_equal(decode(stored[i]), np.asarray(a))
                                             for i, a in areas.items())


def drop_unit_without_areas(con: sqlite3.Connection, key: tuple[str, str, int]) -> None:
    """A committed unit whose counts are not all there is no segmentation result: delete it whole."""
    row = con.execute(f"SELECT n FROM units {_WHERE}", key).fetchone()
    have = con.execute(f"SELECT COUNT(*) FROM seg_areas {_WHERE}", key).fetchone()[0]
    if row is not None and have != row[0]:
        for table in ("samples", "units", "seg_areas"):
            con.execute(f"DELETE FROM {table} {_WHERE}", key)


def insert_areas(con: sqlite3.Connection, key: tuple[str, str, int], areas: Mapping[int, np.ndarray],
                 sample_ids: list[int]) -> None:
    """The counts of every sample of the unit (exactly its ``sample_ids``), replacing any left over."""
    if sorted(int(i) for i in areas) != sorted(sample_ids):
        raise ValueError(f"unit {key[2]} of ({key[0]}, {key[1]}): segmentation counts given for samples "
                         f"{sorted(areas)[:5]}... but the unit holds samples {sorted(sample_ids)[:5]}...")
    con.execute(f"DELETE FROM seg_areas {_WHERE}", key)
    con.executemany("INSERT INTO seg_areas VALUES (?, ?, ?, ?, ?)",
                    [(key[0], key[1], int(i), key[2], encode(a)) for i, a in areas.items()])


def seg_done_units(store, model_key: str, eval_key: str) -> set[int]:
    """Units committed whole with a count row for each of their samples."""
    done = store.done_units(model_key, eval_key)
    if not done:
        return done
    if not has_table(store._con):
        return set()
    held = dict(store._query("SELECT unit, COUNT(*) FROM seg_areas WHERE model_key = ? AND eval_key = ? "
                             "GROUP BY unit", (model_key, eval_key)))
    n = dict(store._query("SELECT unit, n FROM units WHERE model_key = ? AND eval_key = ?", (model_key, eval_key)))
    return {u for u in done if held.get(u) == n.get(u)}


def read_areas(store, model_key: str | None = None, eval_key: str | None = None) -> dict[tuple[str, str], tuple]:
    """{(model_key, eval_key): (sample ids sorted, areas (images, 4, C))} of the store's segmentation rows."""
    if not has_table(store._con):
        return {}
    where, params = [], []
    for col, v in (("model_key", model_key), ("eval_key", eval_key)):
        if v is not None:
            where.append(f"{col} = ?")
            params.append(v)
    sql = "SELECT model_key, eval_key, sample_id, areas_json FROM seg_areas"
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY model_key, eval_key, sample_id"
    grouped: dict[tuple[str, str], tuple[list, list]] = {}
    for m, e, i, text in store._query(sql, params):
        ids, arrs = grouped.setdefault((m, e), ([], []))
        ids.append(int(i))
        arrs.append(decode(text))
    return {k: (ids, np.stack(arrs)) for k, (ids, arrs) in grouped.items()}


def areas_frame(store):
    """The counts in long form (model_key, eval_key, sample_id, class, intersect, union, pred, label), for export."""
    import pandas as pd

    cols = ["model_key", "eval_key", "sample_id", "class", "intersect", "union", "pred", "label"]
    recs = []
    for (m, e), (ids, arrs) in read_areas(store).items():
        for i, a in zip(ids, arrs):
            recs += [(m, e, i, c, *map(int, a[:, c])) for c in range(a.shape[1])]
    return pd.DataFrame.from_records(recs, columns=cols)


def compare_areas(a, b, model_key: str, eval_key: str, where: str) -> list[str]:
    """``verify``'s lines for the counts of one (model, evaluation) in two stores: images counted in one run
    only, and images whose counts differ (counts are integers: compared exactly)."""
    ra, rb = (read_areas(s, model_key, eval_key).get((model_key, eval_key)) for s in (a, b))
    if ra is None and rb is None:
        return []
    da = dict(zip(*ra)) if ra else {}
    db = dict(zip(*rb)) if rb else {}
    out = []
    for side, mine, other in (("a", da, db), ("b", db, da)):
        only = sorted(set(mine) - set(other))
        if only:
            out.append(f"{len(only)} image(s) of {where} have segmentation counts only in run {side}: sample ids "
                       + ", ".join(map(str, only[:5])) + (" ..." if len(only) > 5 else ""))
    changed = sorted(i for i in set(da) & set(db) if not np.array_equal(da[i], db[i]))
    if changed:
        i = changed[0]
        diff_cls = int(np.flatnonzero((da[i] != db[i]).any(axis=0))[0]) if da[i].shape == db[i].shape else -1
        out.append(f"{where}: {len(changed)} image(s) differ in their segmentation counts, e.g. sample {i}"
                   + (f" class {diff_cls}: {da[i][:, diff_cls].tolist()} vs {db[i][:, diff_cls].tolist()} "
                      "(intersect, union, pred, label)" if diff_cls >= 0 else " (another class count)"))
    return out
