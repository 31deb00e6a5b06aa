"""The store's tables as files: ``<table>.csv`` and ``<table>.parquet`` under ``results/``, each written
atomically (temporary file + rename, ``atomic.replacing``), so a full disk or a kill mid-export leaves
every file whole: its previous version, or the new one."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ..atomic import replacing
from .rows import canonical_json


def write_tables(tables: Mapping[str, pd.DataFrame], out: Path, formats: Sequence[str]) -> dict[str, Path]:
    """Write each frame as ``out/<name>.<fmt>`` (fmt in csv, parquet); returns {"<name>.<fmt>": path}.
    OS errors (ENOSPC, EACCES) propagate, with no partial file left behind."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, df in tables.items():
        df = df.copy()
        for c in df.columns:
            if df[c].dtype == object and df[c].map(lambda v: isinstance(v, (dict, list))).any():
                df[c] = df[c].map(lambda v: canonical_json(v) if isinstance(v, (dict, list)) else v)
        for fmt in formats:
            p = out / f"{name}.{fmt}"
            with replacing(p) as tmp:
                if fmt == "csv":
                    df.to_csv(tmp, index=False)
                else:
                    _to_parquet(df, tmp)
            paths[f"{name}.{fmt}"] = p
    return paths


def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    # Arrow needs one type per column: object columns holding one scalar type are kept, int/float mixes
    # become float, anything else (e.g. a param that is a str in one evaluation and a number in another)
    # is written as JSON text
    df = df.copy()
    for c in df.columns:
        if df[c].dtype != object:
            continue
        present = [v for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        types = {type(v) for v in present}
        if len(types) <= 1 and types <= {str, bool, int, float}:
            continue
        if types <= {int, float}:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        else:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                              else canonical_json(v))
    df.to_parquet(path, index=False)
