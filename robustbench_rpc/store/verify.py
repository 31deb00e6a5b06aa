"""``robustbench-rpc verify A B``: does run B reproduce run A?

Two parts, each printed as it is found:

1. The manifests (``manifest.compare_manifests``): ``REPRO:`` inputs that can change the numbers (checkpoint
   hashes, sample ids, seeds, settings, code commit), ``INFO:`` what may differ between machines. Each run's
   ``manifest.json`` must also equal the copy its ``results.sqlite`` holds (an edited file is caught).
2. The stores, everything a run computes and keeps: every model and every evaluation (their stored info),
   every unit (and whether it is stored whole), every per-sample field of every row of every evaluation
   (``store.SAMPLE_COLUMNS`` plus the unit it belongs to), every trust check (status, message, details), the
   diagnostics rows and the run's other meta records. Rows, units, checks and evaluations present in one
   run only are differences too, counted, with the first few named (model and evaluation names, not only
   keys). Each difference prints one ``DIFF:`` line.

Float fields (confidence, the norms linf, l2, l1, l0 and the numbers inside checks and diagnostics) compare exactly by
default: the same code on the same machine is deterministic (every unit is seeded from the run seed, the
evaluation and the unit). ``tolerance`` (``--tolerance``) accepts an absolute difference up to that value, for
reruns on other hardware (another BLAS, GPU kernels); integers (labels, predictions, correctness) and check
statuses always compare exactly, and with a tolerance a check message that differs (it prints the same
numbers, rounded) is reported as ``INFO:``. Timings stored in details (keys such as ``seconds``) measure
the machine, not the result, and are not compared.

Exit status: 0 reproduced, 1 not reproduced, 2 bad input (a missing or unreadable manifest or store).
"""
from __future__ import annotations

import contextlib
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .manifest import ManifestError, compare_manifests, read_manifest
from .rows import FLOAT_COLUMNS, SAMPLE_COLUMNS
from .results import ResultsStore

STORE_NAME = "results.sqlite"
SHOW = 5  # differences named per kind; the rest are counted
MACHINE_FIELDS = {"checkpoint", "spec"}  # model info that names a path on this machine, not a result
SAMPLE_FIELDS = ("unit",) + tuple(c for c in SAMPLE_COLUMNS if c != "sample_id")
FLOAT_FIELDS = set(FLOAT_COLUMNS)  # the only per-sample fields --tolerance applies to
TIMING = re.compile(r"(^|_)(seconds|secs|elapsed|duration|wall_time|time_s)$")  # measure the machine, not a result


def verify_runs(a: str | Path, b: str | Path, tolerance: float = 0.0,
                out: Callable[[str], None] = print) -> int:
    """Compare run ``b`` with reference run ``a`` (folders, or manifest.json files for the manifests only),
    printing each difference through ``out``; returns the exit status (see module docstring). Bad input
    prints one ``error:`` line to stderr before anything else; a damaged store raises StoreCorruptError."""
    if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance)
                                           and tolerance >= 0):
        return _bad_input(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    a, b = Path(a), Path(b)
    try:
        ma, mb = read_manifest(a), read_manifest(b)
    except ManifestError as e:
        return _bad_input(str(e))
    folders = a.is_dir() and b.is_dir()
    for folder in (a, b) if folders else ():
        if not (folder / STORE_NAME).is_file():
            return _bad_input(f"no results store at {folder / STORE_NAME} (pass two run folders, or two "
                              "manifest.json files to compare the manifests only)")
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(ResultsStore(f / STORE_NAME, readonly=True, check_rows=False))
                  for f in (a, b)] if folders else []
        diffs = compare_manifests(ma, mb)
        for line in diffs:
            out(line)
        failed = any(d.startswith("REPRO") and "dirty" not in d for d in diffs)
        if stores:
            found = StoreComparison(*stores, float(tolerance), out)
            found.manifest_copies(ma, mb)
            found.run()
            from .adversarial_verify import compare_saved_sets  # saved adversarial images, per sample

            compare_saved_sets(a, b, ma, mb, float(tolerance), found.diff, out)
            failed = failed or found.failed
        else:
            out("per-sample outcomes: not compared (a manifest file was given, not two run folders)")
    out("verdict: " + ("NOT reproduced" if failed else "reproduced") + " (dirty trees are reported, not failed"
        + (f"; floats within {tolerance:g}" if tolerance else "; floats exact") + ")")
    return 1 if failed else 0


def _bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


class StoreComparison:
    """Everything two stores hold, compared; each difference goes to ``out`` as one ``DIFF:`` line."""

    def __init__(self, a: ResultsStore, b: ResultsStore, tolerance: float, out: Callable[[str], None]):
        self.a, self.b, self.tol, self.out = a, b, tolerance, out
        self.failed = False
        self.meta = (a.meta(), b.meta())
        self.models = tuple({k: s.model_info(k) for k in s.models().get("model_key", [])} for s in (a, b))
        self.evals = tuple({k: s.evaluation_info(k) for k in s.evaluations().get("eval_key", [])} for s in (a, b))
        self.units = tuple(_units(s) for s in (a, b))
        self.rows = [0, 0, 0]  # shared rows, rows only in a, rows only in b
        self.values = 0        # differing per-sample values

    def diff(self, text: str) -> None:
        self.failed = True
        self.out(f"DIFF: {text}")

    # ------------------------------------------------------------------------------- labels
    def model(self, key: str) -> str:
        info = self.models[0].get(key) or self.models[1].get(key) or {}
        return f"{info.get('name', '?')} [{key}]"

    def evaluation(self, key: str) -> str:
        planned = {**self.meta[1].get("planned_evaluations", {}), **self.meta[0].get("planned_evaluations", {})}
        info = self.evals[0].get(key) or self.evals[1].get(key) or {}
        label = planned.get(key) or f"{info.get('kind', '?')} {info.get('name', '?')}"
        return f"'{label}' on {info.get('dataset', '?')} [{key}]"

    # ------------------------------------------------------------------------------ sections
    def run(self) -> None:
        for name, infos, label, machine in (("model", self.models, self.model, MACHINE_FIELDS),
                                            ("evaluation", self.evals, self.evaluation, set())):
            self.registered(name, infos, label, machine)
        for m in sorted(set(self.models[0]) | set(self.models[1])):
            for e in sorted(set(self.evals[0]) | set(self.evals[1])):
                self.pair(m, e)
        self.checks()
        self.meta_records()
        for side, store in (("a", self.a), ("b", self.b)):
            for problem in store.integrity_check()[:SHOW]:
                self.diff(f"run {side}'s store fails SQLite's integrity_check: {problem}")
            for problem in store.impossible_rows()[:SHOW]:  # partial units: reported per pair above
                self.diff(f"run {side}'s store holds rows no run writes: {problem}")
        shared, only_a, only_b = self.rows
        self.out(f"per-sample outcomes: {shared} shared (model, evaluation, sample) rows, {only_a} only in a, "
                 f"{only_b} only in b; {self.values} differing values")

    def manifest_copies(self, ma: dict, mb: dict) -> None:
        for side, file_copy, meta in (("a", ma, self.meta[0]), ("b", mb, self.meta[1])):
            stored = meta.get("manifest")
            if stored is None:
                self.out(f"INFO: run {side}'s results.sqlite holds no manifest (a store from before it was kept)")
            elif stored != file_copy:
                where = _first_paths(file_copy, stored, 0.0)
                self.diff(f"run {side}'s manifest.json differs from the manifest in its results.sqlite "
                          f"({', '.join(where)}): one of them was edited or replaced")

    def registered(self, what: str, infos: tuple[dict, dict], label: Callable[[str], str], machine: set) -> None:
        ia, ib = infos
        for side, mine, other in (("a", ia, ib), ("b", ib, ia)):
            only = [k for k in mine if k not in other]
            if only:
                self.diff(f"{len(only)} {what}(s) only in run {side}: " + _first(label(k) for k in only))
        for key in sorted(set(ia) & set(ib)):
            fields = _first_paths({k: v for k, v in ia[key].items() if k not in machine},
                                  {k: v for k, v in ib[key].items() if k not in machine}, self.tol)
            if fields:
                self.diff(f"{what} {label(key)}: stored info differs: {', '.join(fields)}")
            for k in sorted(machine):
                if ia[key].get(k) != ib[key].get(k):
                    self.out(f"INFO: {what} {label(key)}: {k} differs: {ia[key].get(k)!r} vs {ib[key].get(k)!r}")

    def pair(self, m: str, e: str) -> None:
        """Units and sample rows of one (model, evaluation)."""
        where = f"{self.model(m)} on {self.evaluation(e)}"
        for side, store in (("a", self.a), ("b", self.b)):
            part = store.incomplete_units(m, e)
            if part:
                self.diff(f"run {side}: {len(part)} unit(s) of {where} do not hold the sample rows their units row "
                          "records: " + _first(f"unit {u}: {c} rows, {'no units row' if n is None else f'{n} recorded'}"
                                               for u, (n, c) in sorted(part.items())))
        ua, ub = (units.get((m, e), {}) for units in self.units)
        for side, mine, other in (("a", ua, ub), ("b", ub, ua)):
            only = sorted(set(mine) - set(other))
            if only:
                self.diff(f"{len(only)} unit(s) of {where} only in run {side}: "
                          + _first(f"unit {u} (n={mine[u]})" for u in only))
        changed = sorted(u for u in set(ua) & set(ub) if ua[u] != ub[u])
        if changed:
            self.diff(f"{len(changed)} unit(s) of {where} record another n: "
                      + _first(f"unit {u}: {ua[u]} vs {ub[u]}" for u in changed))
        self.samples(m, e, where)
        from .seg_areas import compare_areas  # segmentation counts, per image and class

        for line in compare_areas(self.a, self.b, m, e, where):
            self.diff(line)

    def samples(self, m: str, e: str, where: str) -> None:
        cols = ["sample_id", *SAMPLE_FIELDS]
        sa, sb = (s.samples(m, e, columns=cols) for s in (self.a, self.b))
        if sa.empty and sb.empty:
            return
        joined = sa.merge(sb, on="sample_id", how="outer", suffixes=("_a", "_b"), indicator=True)
        for side, tag, slot in (("a", "left_only", 1), ("b", "right_only", 2)):
            ids = joined.loc[joined["_merge"] == tag, "sample_id"].tolist()
            self.rows[slot] += len(ids)
            if ids:
                self.diff(f"{len(ids)} sample row(s) of {where} only in run {side}: sample ids " + _first(ids))
        both = joined[joined["_merge"] == "both"]
        self.rows[0] += len(both)
        older = {c for s in (self.a, self.b) for c in getattr(s, "_missing_columns", ())}
        for c in SAMPLE_FIELDS:
            if c in older:  # a store of an older schema never measured it: nothing to compare, not a difference
                if c not in self.__dict__.setdefault("told_older", set()):
                    self.told_older.add(c)
                    self.out(f"INFO: sample field {c} is not in both stores (an older store schema); not compared")
                continue
            x, y = both[f"{c}_a"], both[f"{c}_b"]
            bad = _differs(x, y, self.tol if c in FLOAT_FIELDS else 0.0)
            if bad.any():
                self.values += int(bad.sum())
                sel = both[bad]
                self.diff(f"{where}: {int(bad.sum())} sample(s) differ in {c}: " + _first(
                    f"sample {i}: {_fmt(p)} vs {_fmt(q)}" for i, p, q in zip(sel["sample_id"], sel[f"{c}_a"],
                                                                              sel[f"{c}_b"])))

    def checks(self) -> None:
        ca, cb = (_checks(s) for s in (self.a, self.b))

        def label(k: tuple) -> str:
            m, e, name = k
            return f"'{name}'" + (f" of {self.model(m)}" if m else "") + (f" on {self.evaluation(e)}" if e else "")

        for side, mine, other in (("a", ca, cb), ("b", cb, ca)):
            only = [k for k in mine if k not in other]
            if only:
                self.diff(f"{len(only)} trust check(s) only in run {side}: " + _first(label(k) for k in only))
        for k in sorted(set(ca) & set(cb)):
            (sa_, ma_, da), (sb_, mb_, db) = ca[k], cb[k]
            if sa_ != sb_:
                self.diff(f"trust check {label(k)}: status {sa_} vs {sb_}")
            fields = _first_paths(da, db, self.tol)
            if fields:
                self.diff(f"trust check {label(k)}: details differ: {', '.join(fields)}")
            if ma_ != mb_:
                line = f"trust check {label(k)}: message differs: {ma_!r} vs {mb_!r}"
                if self.tol:
                    self.out(f"INFO: {line}")
                else:
                    self.diff(line)

    def meta_records(self) -> None:
        a, b = self.meta
        for key in sorted((set(a) | set(b)) - {"manifest"}):
            if key not in a or key not in b:
                self.diff(f"meta record {key!r} only in run {'a' if key in a else 'b'}")
                continue
            va, vb = a[key], b[key]
            if key == "schema_version":  # how the store is laid out (an older one is read as is), not a result
                if va != vb:
                    self.out(f"INFO: store schema version differs: {va} vs {vb}")
                continue
            if key == "suite" and isinstance(va, dict) and isinstance(vb, dict):  # the suite file's path is local
                if va.get("path") != vb.get("path"):
                    self.out(f"INFO: suite file path differs: {va.get('path')} vs {vb.get('path')}")
                va, vb = ({k: v for k, v in d.items() if k != "path"} for d in (va, vb))
            fields = _first_paths(va, vb, self.tol)
            if fields:
                self.diff(f"meta record {key!r} differs: {', '.join(fields)}")


# ------------------------------------------------------------------------------------------- helpers
def _units(store: ResultsStore) -> dict[tuple[str, str], dict[int, int]]:
    """{(model_key, eval_key): {unit: n recorded}}."""
    out: dict[tuple[str, str], dict[int, int]] = {}
    units = store.units()
    for m, e, u, n in zip(units["model_key"], units["eval_key"], units["unit"], units["n"]):
        out.setdefault((m, e), {})[int(u)] = int(n)
    return out


def _checks(store: ResultsStore) -> dict[tuple, tuple]:
    df = store.checks()
    return {(m or "", e or "", c): (s, msg, d) for m, e, c, s, msg, d in
            zip(df["model_key"], df["eval_key"], df["check"], df["status"], df["message"], df["details"])}


def _differs(x: pd.Series, y: pd.Series, tol: float) -> np.ndarray:
    """Elementwise: not (both missing, or both present and within ``tol``)."""
    xa = pd.to_numeric(x, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    ya = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    same = (np.isnan(xa) & np.isnan(ya)) | (np.abs(xa - ya) <= tol)
    return ~same


def _first_paths(a: Any, b: Any, tol: float, path: str = "", out: list | None = None) -> list[str]:
    """The first SHOW differing leaves of two JSON values ('params.eps: 0.03 vs 0.01'), floats within
    ``tol``; one more entry says how many were left out."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if TIMING.search(str(k)):
                continue
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(f"{sub} only in {'b' if k not in a else 'a'}")
            else:
                _first_paths(a[k], b[k], tol, sub, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (p, q) in enumerate(zip(a, b)):
            _first_paths(p, q, tol, f"{path}[{i}]", out)
    elif not _same_leaf(a, b, tol):
        out.append(f"{path or 'value'}: {_fmt(a)} vs {_fmt(b)}")
    if not path and len(out) > SHOW:
        return out[:SHOW] + [f"... {len(out) - SHOW} more"]
    return out


def _same_leaf(a: Any, b: Any, tol: float) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or abs(float(a) - float(b)) <= tol
    return type(a) is type(b) and a == b


def _first(items) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:SHOW])
    return text + (f" and {len(items) - SHOW} more" if len(items) > SHOW else "")


def _fmt(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "missing"
    if isinstance(v, float):
        return repr(v)
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 80 else text[:80] + "..."
