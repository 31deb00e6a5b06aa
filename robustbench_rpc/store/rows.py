"""How the results store encodes values: canonical JSON and the keys derived from it, and the per-sample
row columns with their validation. A leaf (no package imports), shared by ``store`` and its export."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

SAMPLE_COLUMNS = ("sample_id", "label", "pred", "correct1", "correct5", "confidence",
                  "clean_correct1", "linf", "l2", "clean_correct5", "plain_correct1", "plain_correct5")
REQUIRED_SAMPLE_COLUMNS = ("sample_id", "label", "pred", "correct1", "correct5", "confidence")
OPTIONAL_SAMPLE_COLUMNS = ("clean_correct1", "linf", "l2", "clean_correct5", "plain_correct1", "plain_correct5")
BOOL_COLUMNS = {"correct1", "correct5", "clean_correct1", "clean_correct5", "plain_correct1", "plain_correct5"}
_INT_COLUMNS = {"sample_id", "label", "pred"} | BOOL_COLUMNS


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays, paths, tuples-in-sets: anything with a faithful JSON form
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serializable: {obj!r}")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace and no NaN/Infinity: equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default)


def stable_key(obj: Any) -> str:
    """First 16 hex chars of the sha256 of ``canonical_json(obj)``.

    Use it to key models (name + checkpoint hash + attention params) and evaluations
    (kind + name + dataset + params); the key does not depend on dict order or on the machine.
    """
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:16]


def rows_to_columns(rows: Mapping[str, Sequence] | Sequence[Mapping[str, Any]]) -> dict[str, list]:
    if isinstance(rows, pd.DataFrame):
        rows = {c: rows[c].tolist() for c in rows.columns}
    if isinstance(rows, Mapping):
        cols = {k: list(v.tolist() if hasattr(v, "tolist") else v) for k, v in rows.items()}
    else:
        rows = list(rows)
        keys: list[str] = []
        for r in rows:
            for k in r:
                if k not in keys:
                    keys.append(k)
        cols = {k: [r.get(k) for r in rows] for k in keys}
    unknown = sorted(set(cols) - set(SAMPLE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown sample column(s) {unknown}; allowed: {list(SAMPLE_COLUMNS)}")
    missing = [c for c in REQUIRED_SAMPLE_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"missing required sample column(s) {missing}")
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sample columns have different lengths: {lengths}")
    return cols


def coerce(col: str, value: Any, required: bool) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise ValueError(f"sample column {col!r} has a missing value (None/NaN)")
        return None
    if col in _INT_COLUMNS:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"sample column {col!r} must be integer, got {value!r}")
        value = int(value)
        if col in BOOL_COLUMNS and value not in (0, 1):
            raise ValueError(f"sample column {col!r} must be 0/1 or bool, got {value!r}")
        return value
    value = float(value)
    if math.isinf(value):
        raise ValueError(f"sample column {col!r} has an infinite value")
    return value


def same_value(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b
