"""ResultsStore: schema, aggregates from samples, resume, kill -9 safety, concurrent reads, export."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from robustbench_rpc import metrics
from robustbench_rpc.store import results as store_module
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.store.errors import StoreConflictError, StoreError
from robustbench_rpc.store.rows import stable_key

MODEL = {"name": "rpc_vit", "spec": "rpc_symvit_micro_patch4_32:ckpt.safetensors", "arch": "symvit_micro",
         "checkpoint": "ckpt.safetensors", "checkpoint_sha256": "0" * 64,
         "attention": {"type": "rpc", "iters": 4, "lambda": 0.1}, "num_params": 1000, "num_classes": 10,
         "reference": False}
EVAL = {"kind": "attack", "name": "pgd", "dataset": "cifar10", "n_samples": 6,
        "params": {"eps": 8 / 255, "norm": "Linf", "steps": 10}, "group": "pgd"}


def rows(ids, correct1, correct5=None, **extra):
    ids = list(ids)
    correct5 = correct1 if correct5 is None else correct5
    return {"sample_id": ids, "label": [i % 10 for i in ids],
            "pred": [i % 10 if c else (i + 1) % 10 for i, c in zip(ids, correct1)],
            "correct1": list(correct1), "correct5": list(correct5),
            "confidence": [0.5 + 0.01 * i for i in ids], **extra}


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path / "results.sqlite")
    s.register_model("m", MODEL)
    s.register_evaluation("e", EVAL)
    yield s
    s.close()


def test_pragmas_and_schema(store):
    con = store._con
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "models", "evaluations", "units", "samples", "checks"} <= tables


def test_stable_key_is_canonical():
    a = stable_key({"name": "x", "params": {"eps": 8 / 255, "norm": "Linf"}})
    b = stable_key({"params": {"norm": "Linf", "eps": np.float64(8 / 255)}, "name": "x"})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert stable_key({"eps": 8 / 255}) != stable_key({"eps": 4 / 255})
    with pytest.raises(ValueError):
        stable_key({"x": float("nan")})


def test_registration_is_idempotent_and_conflicts_are_clear(store):
    store.register_model("m", dict(MODEL))  # same info: fine
    store.register_evaluation("e", {**EVAL, "params": dict(reversed(list(EVAL["params"].items())))})
    with pytest.raises(StoreConflictError, match="checkpoint_sha256"):
        store.register_model("m", {**MODEL, "checkpoint_sha256": "1" * 64})
    with pytest.raises(StoreConflictError, match="n_samples"):
        store.register_evaluation("e", {**EVAL, "n_samples": 7})
    with pytest.raises(ValueError, match="kind"):
        store.register_evaluation("e2", {**EVAL, "kind": "adversarial"})
    # a newer version that records more about the same model adds fields and keeps the old ones
    store.register_model("m", {**MODEL, "std": [0.25, 0.25, 0.25]})
    assert store.model_info("m")["std"] == [0.25, 0.25, 0.25]
    with pytest.raises(StoreConflictError, match="checkpoint_sha256"):  # but never changes a recorded one
        store.register_model("m", {**MODEL, "std": [0.25, 0.25, 0.25], "checkpoint_sha256": "1" * 64})
    models, evals = store.models(), store.evaluations()
    assert models.iloc[0]["attention"] == MODEL["attention"] and models.iloc[0]["attention_iters"] == 4
    assert evals.iloc[0]["params"]["norm"] == "Linf" and evals.iloc[0]["param_steps"] == 10
    assert evals.iloc[0]["group"] == "pgd"


def test_aggregates_match_hand_counts(store):
    assert store.done_units("m", "e") == set()
    store.write_unit("m", "e", 0, rows([0, 1, 2], [1, 1, 0], [1, 1, 1]))
    agg = store.aggregates().iloc[0]
    assert agg.n == 3 and agg.n_expected == 6 and not agg.complete  # partial
    store.write_unit("m", "e", 1, [dict(zip(rows([3, 4, 5], [0, 1, 0]).keys(), v))
                                   for v in zip(*rows([3, 4, 5], [0, 1, 0]).values())])  # list of dicts
    agg = store.aggregates().iloc[0]
    assert agg.n == 6 and agg.complete and agg.units == 2
    assert agg.top1 == pytest.approx(3 / 6) and agg.top5 == pytest.approx(4 / 6)
    assert (agg.top1_lo, agg.top1_hi) == pytest.approx(metrics.wilson_interval(3, 6))
    assert (agg.top5_lo, agg.top5_hi) == pytest.approx(metrics.wilson_interval(4, 6))
    assert agg.mean_confidence == pytest.approx(np.mean([0.5 + 0.01 * i for i in range(6)]))
    assert store.done_units("m", "e") == {0, 1}


def test_unregistered_pairs_and_missing_rows_are_nan_not_zero(store):
    store.register_model("m2", {**MODEL, "name": "other"})
    agg = store.aggregates()
    row = agg[agg.model_key == "m2"].iloc[0]
    assert row.n == 0 and not row.complete and np.isnan(row.top1)


def test_optional_columns_are_null_when_absent(store):
    store.write_unit("m", "e", 0, rows([0, 1], [1, 0], clean_correct1=[True, True], linf=np.array([0.03, 0.03])))
    store.write_unit("m", "e", 1, rows([2], [1]))
    s = store.samples("m", "e")
    assert list(s.sample_id) == [0, 1, 2]
    assert s.clean_correct1.isna().tolist() == [False, False, True]
    assert s.linf.isna().tolist() == [False, False, True] and s.l2.isna().all()


def test_rewrite_semantics(store):
    r = rows([0, 1, 2], [1, 0, 1])
    assert store.write_unit("m", "e", 0, r) is True
    assert store.write_unit("m", "e", 0, {k: list(reversed(v)) for k, v in r.items()}) is False  # identical
    with pytest.raises(StoreConflictError, match="already stored with different rows"):
        store.write_unit("m", "e", 0, rows([0, 1, 2], [1, 1, 1]))
    with pytest.raises(StoreConflictError, match="repeats sample_ids"):
        store.write_unit("m", "e", 1, rows([2, 3], [1, 1]))
    assert store.done_units("m", "e") == {0}  # failed writes left nothing behind
    assert len(store.samples()) == 3


def test_invalid_rows_are_rejected_atomically(store):
    with pytest.raises(ValueError, match="different lengths"):
        store.write_unit("m", "e", 0, {**rows([0, 1], [1, 0]), "pred": [1]})
    with pytest.raises(ValueError, match="missing required"):
        store.write_unit("m", "e", 0, {k: v for k, v in rows([0], [1]).items() if k != "confidence"})
    with pytest.raises(ValueError, match="0/1"):
        store.write_unit("m", "e", 0, rows([0], [2]))
    with pytest.raises(StoreError, match="not registered"):
        store.write_unit("m", "nope", 0, rows([0], [1]))
    assert store.done_units("m", "e") == set() and store.verify() == []


def test_checks_and_meta(store):
    store.write_check("m", None, "determinism", "PASS", "ok", {"diff": 0.0})
    store.write_check("m", None, "determinism", "fail", "mismatch", {"diff": 0.5})  # upsert
    store.write_check(None, "e", "clean_accuracy_matches", "warn", "", None)
    ck = store.checks()
    assert len(ck) == 2
    det = ck[ck.check == "determinism"].iloc[0]
    assert det.status == "fail" and det.details == {"diff": 0.5} and det.eval_key is None
    assert ck[ck.check == "clean_accuracy_matches"].iloc[0].model_key is None
    store.set_meta("suite", {"name": "s", "reference_model": "vit"})
    assert store.get_meta("suite")["reference_model"] == "vit"
    assert store.get_meta("absent", default=3) == 3


def test_reader_sees_committed_state_while_writer_is_in_a_transaction(store, tmp_path):
    store.write_unit("m", "e", 0, rows([0, 1, 2], [1, 1, 1]))
    reader = ResultsStore(tmp_path / "results.sqlite", readonly=True)
    con = store._con
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO units VALUES ('m', 'e', 1, 0, 'now')")
    t0 = time.perf_counter()
    assert reader.done_units("m", "e") == {0}  # not blocked, sees only the committed unit
    assert reader.aggregates().iloc[0].n == 3
    assert time.perf_counter() - t0 < 5
    con.execute("ROLLBACK")
    store.write_unit("m", "e", 1, rows([3], [0]))
    assert reader.done_units("m", "e") == {0, 1}
    with pytest.raises(StoreError, match="read-only"):
        reader.set_meta("x", 1)
    reader.close()
    with pytest.raises(FileNotFoundError):
        ResultsStore(tmp_path / "absent.sqlite", readonly=True)


STORE_PY = os.path.dirname(store_module.__file__)
_WRITER = textwrap.dedent("""
    import importlib, sys, time, types
    # import the store without running the package __init__, which may import torch (slow, irrelevant here)
    pkg = types.ModuleType("robustbench_rpc")
    pkg.__path__ = [sys.argv[4]]
    sys.modules["robustbench_rpc"] = pkg
    ResultsStore = importlib.import_module("robustbench_rpc.store").ResultsStore
    store = ResultsStore(sys.argv[1])
    store.register_model("m", {"name": "m"})
    store.register_evaluation("e", {"kind": "clean", "name": "c", "dataset": "d", "n_samples": 10**9})
    n = int(sys.argv[2])
    for u in range(100000):
        ids = list(range(u * n, (u + 1) * n))
        store.write_unit("m", "e", u, {"sample_id": ids, "label": [i % 7 for i in ids],
                         "pred": [i % 5 for i in ids], "correct1": [i % 2 for i in ids],
                         "correct5": [1] * n, "confidence": [(i % 100) / 100 for i in ids]})
        print(u, flush=True)
        if u == int(sys.argv[3]):
            # stall inside the next unit's transaction: units row and half its samples written
            with store._transaction() as con:
                con.execute("INSERT INTO units VALUES ('m', 'e', ?, ?, 'now')", (u + 1, n))
                con.executemany("INSERT INTO samples (model_key, eval_key, unit, sample_id, label, pred, "
                                "correct1, correct5, confidence) VALUES ('m', 'e', ?, ?, 0, 0, 0, 0, 0.5)",
                                [(u + 1, i) for i in range((u + 1) * n, (u + 1) * n + n // 2)])
                print("mid", flush=True)
                time.sleep(120)
""")


def _start_writer(tmp_path, path, n: int, stall_after: int) -> subprocess.Popen:
    """``_WRITER`` in its own process: units of ``n`` rows into ``path``; -1: never stall."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen([sys.executable, str(script), str(path), str(n), str(stall_after), STORE_PY],
                            stdout=subprocess.PIPE, text=True)


def test_kill_9_mid_write_keeps_every_committed_unit_intact(tmp_path):
    path, n = tmp_path / "results.sqlite", 3000
    proc = _start_writer(tmp_path, path, n, stall_after=-1)
    reported = -1
    deadline = time.time() + 30
    while reported < 6 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        reported = int(line)
    time.sleep(0.013)  # land somewhere inside a later unit's transaction
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert reported >= 6, "writer did not start"

    store = ResultsStore(path)  # reopen as the resumed writer would
    done = store.done_units("m", "e")
    assert set(range(reported + 1)) <= done  # every unit reported as committed survived
    assert done == set(range(len(done)))     # no gaps
    assert store.verify() == []              # no partial unit, no orphan rows
    s = store.samples("m", "e")
    assert len(s) == n * len(done)
    assert (s.sample_id.to_numpy() == np.arange(n * len(done))).all()
    assert (s.pred == s.sample_id % 5).all() and (s.correct1 == s.sample_id % 2).all()
    assert (s.unit == s.sample_id // n).all()
    # resume: the next unit writes fine
    u = len(done)
    ids = list(range(u * n, u * n + 2))
    assert store.write_unit("m", "e", u, {"sample_id": ids, "label": [0, 0], "pred": [0, 0], "correct1": [1, 1],
                                          "correct5": [1, 1], "confidence": [0.9, 0.9]})
    store.close()


def test_kill_9_inside_a_transaction_leaves_no_partial_unit(tmp_path):
    path, n = tmp_path / "results.sqlite", 50
    proc = _start_writer(tmp_path, path, n, stall_after=2)
    lines = []
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline().strip()
        lines.append(line)
        if line in ("mid", ""):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lines[-1] == "mid", lines
    store = ResultsStore(path)
    assert store.done_units("m", "e") == {0, 1, 2}
    assert len(store.samples("m", "e")) == 3 * n and store.verify() == []
    store.close()


def test_export_csv_and_parquet(store, tmp_path):
    store.write_unit("m", "e", 0, rows([0, 1, 2], [1, 0, 1], linf=[0.03, 0.03, 0.03]))
    store.write_check("m", "e", "c", "pass", "", {"a": [1, 2]})
    out = tmp_path / "export"
    paths = store.export(out)
    for name in ("models", "evaluations", "samples", "aggregates", "checks"):
        assert paths[f"{name}.csv"].is_file() and paths[f"{name}.parquet"].is_file()
    csv = pd.read_csv(paths["samples.csv"])
    pq = pd.read_parquet(paths["samples.parquet"])
    assert len(csv) == len(pq) == 3 and pq.correct1.tolist() == [1, 0, 1]
    agg = pd.read_parquet(paths["aggregates.parquet"]).iloc[0]
    assert agg.top1 == pytest.approx(2 / 3) and not agg.complete
    ev = pd.read_parquet(paths["evaluations.parquet"]).iloc[0]
    assert json.loads(ev.params)["norm"] == "Linf"
    assert json.loads(pd.read_csv(paths["checks.csv"]).iloc[0].details) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="unknown export format"):
        store.export(out, formats=("xlsx",))


def test_not_a_store(tmp_path):
    p = tmp_path / "other.sqlite"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value_json TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version"):
        ResultsStore(p, readonly=True)
