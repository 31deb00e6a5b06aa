"""Reading run folders for a leaderboard: read-only, one pass per store, into plain records.

An :class:`Entry` is one model x one evaluation of one run: its fingerprint, whether it is complete, and its
per-sample outcomes (``sample_id, label, pred, correct1, correct5``; ``correct1`` is the accuracy the
evaluation reports). The store is opened with ``readonly=True`` (SQLite ``mode=ro``): a leaderboard never
writes to a run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..store.results import ResultsStore
from .fingerprint import evaluation_fingerprint, ids_digest, model_identity

STORE_NAME = "results.sqlite"
OUTCOME_COLUMNS = ["sample_id", "label", "pred", "correct1", "correct5"]
KINDS = ("clean", "attack", "external", "corruption", "shift")


class LeaderboardError(ValueError):
    """A board that cannot be built honestly; the message names the runs, models and samples involved."""


@dataclass
class Entry:
    run: str                      # the run folder (absolute path)
    row: str                      # model identity (fingerprint.model_identity)
    model_key: str
    eval_key: str
    fingerprint: dict[str, Any]
    complete: bool
    n_expected: int
    outcomes: pd.DataFrame        # OUTCOME_COLUMNS, sorted by sample_id
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.outcomes["correct1"].mean()) if len(self.outcomes) else float("nan")


@dataclass
class RunRecord:
    path: str
    digest: str
    settings: dict[str, Any]
    models: dict[str, dict[str, Any]]          # model_key -> info (+ "row")
    checks: dict[str, list[dict[str, Any]]]    # model_key -> [{"check", "status", "message"}]
    entries: list[Entry]


#: per (model, evaluation): two sums of each sample row's outcome columns mixed with its sample id modulo a
#: prime, computed inside SQLite in one pass (1M rows in about a second, against seven to load them): any edit
#: of a row changes a row's terms, and a set of edits whose changes cancel in both sums is not an accident
_OUTCOME_SUMS = """SELECT model_key, eval_key, COUNT(*),
 SUM((sample_id * 2654435761 + label * 40503 + pred * 69069 + correct1 * 1000003 + correct5 * 7919) % 2147483629),
 SUM((sample_id * 1103515245 + label * 22695477 + pred * 134775813 + correct1 * 16807 + correct5 * 48271)
     % 4294967291)
 FROM samples GROUP BY model_key, eval_key ORDER BY model_key, eval_key"""


def store_digest(store: ResultsStore) -> str:
    """A digest of what a store holds that a board shows (its finished units, trust checks and its sample
    rows' outcomes, ``_OUTCOME_SUMS``): equal digests = nothing new to read. The sample rows count, not only
    the units table, so a row edited in place (same units, other outcomes) is read anew."""
    h = hashlib.sha256()
    h.update(store.units().to_csv(index=False).encode())
    checks = store.checks()
    if not checks.empty:
        h.update(checks[["model_key", "check", "status", "updated_at"]].to_csv(index=False).encode())
    h.update(repr(store._query(_OUTCOME_SUMS)).encode())  # the store has no public aggregate query
    return h.hexdigest()[:16]


def open_store(run_dir: str | Path) -> ResultsStore:
    path = Path(run_dir) / STORE_NAME
    if not path.is_file():
        raise LeaderboardError(f"{run_dir}: not a run folder (no {STORE_NAME}); pass folders written by "
                               "`robustbench-rpc run --out DIR`")
    return ResultsStore(path, readonly=True)


def read_run(run_dir: str | Path) -> RunRecord:
    """Everything a board needs from one run folder."""
    path = str(Path(run_dir).resolve())
    with open_store(run_dir) as store:
        digest = store_digest(store)
        meta = store.meta()
        manifest = meta.get("manifest") or {}
        code = dict((manifest.get("versions") or {})) if isinstance(manifest, dict) else {}
        models = {str(k): dict(store.model_info(str(k)) or {}) for k in store.models().get("model_key", [])}
        for key, info in models.items():
            info["row"] = model_identity(info)
        evals = {str(k): dict(store.evaluation_info(str(k)) or {}) for k in store.evaluations().get("eval_key", [])}
        checks: dict[str, list[dict[str, Any]]] = {}
        for r in store.checks().to_dict("records"):
            checks.setdefault(str(r["model_key"]), []).append(
                {"check": r["check"], "status": r["status"], "message": r["message"]})
        samples = store.samples(columns=["model_key", "eval_key", *OUTCOME_COLUMNS])
    entries = []
    planned = _planned_ids(samples, evals, manifest)
    for (mk, ek), df in samples.groupby(["model_key", "eval_key"], sort=False):
        info = evals.get(ek)
        if info is None or info.get("kind") not in KINDS or mk not in models:
            continue
        outcomes = df[OUTCOME_COLUMNS].sort_values("sample_id").reset_index(drop=True)
        n_expected = int(info.get("n_samples") or len(outcomes))
        fp = evaluation_fingerprint(info, planned.get(ek), models[mk], code)
        entries.append(Entry(path, models[mk]["row"], mk, ek, fp, len(outcomes) >= n_expected, n_expected,
                             outcomes, models[mk]))
    return RunRecord(path, digest, dict(meta.get("settings") or {}), models, checks, entries)


def _planned_ids(samples: pd.DataFrame, evals: dict[str, dict], manifest: dict) -> dict[str, str]:
    """Per evaluation, the digest of the sample ids it was planned on: from a complete model x evaluation
    (its stored ids are the planned ones), else the manifest's record for the dataset."""
    out: dict[str, str] = {}
    for (mk, ek), df in samples.groupby(["model_key", "eval_key"], sort=False):
        info = evals.get(ek) or {}
        if ek not in out and len(df) >= int(info.get("n_samples") or 0) > 0:
            out[ek] = ids_digest(df["sample_id"])
    recorded = (manifest.get("sample_ids") or {}) if isinstance(manifest, dict) else {}
    for ek, info in evals.items():
        if ek in out:
            continue
        name = info.get("dataset") if info.get("kind") != "corruption" else \
            f"{info.get('dataset')}:{(info.get('params') or {}).get('source')}"
        rec = recorded.get(name)
        if isinstance(rec, dict) and rec.get("sha256"):
            out[ek] = str(rec["sha256"])[:16]
    return out
