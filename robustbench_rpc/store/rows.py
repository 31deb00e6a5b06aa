"""How the results store encodes values: the per-sample row columns with their validation; canonical JSON and
the keys derived from it come from :mod:`robustbench_rpc.keys` (re-exported here), so the evaluation spec keys
what the store keys the same way without importing the store."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ..keys import canonical_json, stable_key  # noqa: F401  (the store's encoding, re-exported)

SAMPLE_COLUMNS = ("sample_id", "label", "pred", "correct1", "correct5", "confidence",
                  "clean_correct1", "linf", "l2", "clean_correct5", "plain_correct1", "plain_correct5", "l1", "l0")
REQUIRED_SAMPLE_COLUMNS = ("sample_id", "label", "pred", "correct1", "correct5", "confidence")
OPTIONAL_SAMPLE_COLUMNS = ("clean_correct1", "linf", "l2", "clean_correct5", "plain_correct1", "plain_correct5", "l1",
                           "l0")
#: per-sample perturbation norms (``schema``: l0 counts changed values over every channel); NULL when not measured
NORM_COLUMNS = ("linf", "l2", "l1", "l0")
FLOAT_COLUMNS = ("confidence", *NORM_COLUMNS)
BOOL_COLUMNS = {"correct1", "correct5", "clean_correct1", "clean_correct5", "plain_correct1", "plain_correct5"}
_INT_COLUMNS = {"sample_id", "label", "pred"} | BOOL_COLUMNS


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
