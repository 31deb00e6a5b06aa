"""Canonical JSON and the stable keys derived from it: the one way a model, an evaluation or a record is keyed,
whatever the dict order or the machine. A leaf below the evaluation spec and the store, which both key with it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
