"""The store keeps everything, and says when it cannot. The store file alone holds every
finished evaluation (WAL checkpoints), a damaged store is one line in every reader, files made from the
store are written whole or not at all, a full disk during the export or the report is one line, and a unit
that lost sample rows is recomputed on resume."""
from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

import robustbench_rpc.store.results as store_module
from robustbench_rpc.cli.commands import main
from robustbench_rpc.store.manifest import write_manifest
from robustbench_rpc.store.errors import OutputWriteError, StoreError
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import UNITS, copy_run, count, overwrite, query, run, sql, suite, table_page

ROWS = {"label": [1, 2, 3, 4], "pred": [1, 2, 0, 4], "correct1": [1, 1, 0, 1], "correct5": [1, 1, 1, 1],
        "confidence": [0.9, 0.8, 0.7, 0.6]}


def _rows(first: int) -> dict:
    return {"sample_id": list(range(first, first + 4)), **ROWS}


def _store(path: Path, n_samples: int = 8) -> ResultsStore:
    s = ResultsStore(path)
    s.register_model("m", {"name": "m"})
    s.register_evaluation("e", {"kind": "clean", "name": "clean", "dataset": "d", "n_samples": n_samples})
    return s


def _units_in_file_alone(db: Path, tmp: Path) -> int:
    """Units held by the store file alone, copied without its -wal (as users copy a results.sqlite)."""
    copy = tmp / f"alone-{time.monotonic_ns()}.sqlite"
    shutil.copyfile(db, copy)
    try:
        con = sqlite3.connect(copy)
        try:
            return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        except sqlite3.OperationalError:  # no such table: the schema itself is still in the -wal
            return 0
        finally:
            con.close()
    finally:
        for p in tmp.glob(f"{copy.name}*"):
            p.unlink()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    return suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def reference(suite_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ref"
    assert run(suite_file, out) == 0
    return out


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------ WAL
def test_the_store_file_alone_holds_every_finished_evaluation_during_and_after_a_run(suite_file, tmp_path,
                                                                                     monkeypatch):
    out, seen = tmp_path / "o", []
    real = store_module.ResultsStore.write_unit

    def write_unit(self, model_key, eval_key, unit, rows):
        written = real(self, model_key, eval_key, unit, rows)
        seen.append((eval_key, _units_in_file_alone(self.path, tmp_path)))
        return written

    monkeypatch.setattr(store_module.ResultsStore, "write_unit", write_unit)
    assert run(suite_file, out, "--no-report") == 0
    assert len(seen) == UNITS
    last_of_each = [i for i, (e, _) in enumerate(seen) if i + 1 == len(seen) or seen[i + 1][0] != e]
    assert last_of_each == [3, 7]
    # when an evaluation's last unit is written, the file alone holds it and every unit before it
    assert [seen[i][1] for i in last_of_each] == [4, 8]
    assert _units_in_file_alone(out / "results.sqlite", tmp_path) == UNITS  # and after the run


def test_a_wal_file_removed_mid_run_loses_nothing(suite_file, tmp_path, monkeypatch):
    out, calls = tmp_path / "o", []
    real = store_module.ResultsStore.write_unit

    def write_unit(self, *a, **kw):
        written = real(self, *a, **kw)
        calls.append(1)
        if len(calls) == 2:  # a user tidying up the folder mid-run
            os.remove(f"{self.path}-wal")
        return written

    monkeypatch.setattr(store_module.ResultsStore, "write_unit", write_unit)
    assert run(suite_file, out) == 0  # the report (a second connection) reads the store too
    assert count(out, "units") == UNITS and count(out, "samples") == 32
    assert (out / "index.html").is_file()
    assert _units_in_file_alone(out / "results.sqlite", tmp_path) == UNITS


def test_checkpoint_when_an_evaluation_completes_and_never_waiting_for_a_reader(tmp_path):
    s = _store(tmp_path / "results.sqlite", n_samples=8)
    s.register_evaluation("f", {"kind": "clean", "name": "other", "dataset": "d", "n_samples": 1000})
    s.write_unit("m", "e", 0, _rows(0))
    assert _units_in_file_alone(s.path, tmp_path) == 0  # half an evaluation: in the WAL only
    s.write_unit("m", "e", 1, _rows(4))
    assert _units_in_file_alone(s.path, tmp_path) == 2  # the evaluation is complete: checkpointed
    reader = sqlite3.connect(s.path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM units").fetchone() == (2,)  # holds this snapshot
    s.write_unit("m", "f", 0, _rows(0))
    t0 = time.perf_counter()
    busy, wal_pages, copied = s.checkpoint()
    assert time.perf_counter() - t0 < 1.0  # PASSIVE: the reader does not stall the run
    assert copied < wal_pages  # the pages after the reader's snapshot stay in the WAL for now
    reader.execute("COMMIT")
    reader.close()
    busy, wal_pages, copied = s.checkpoint()
    assert busy == 0 and copied == wal_pages and _units_in_file_alone(s.path, tmp_path) == 3
    with pytest.raises(ValueError, match="PASSIVE, FULL, RESTART or TRUNCATE"):
        s.checkpoint("SOMETIMES")
    s.close()
    wal = Path(f"{s.path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # close: TRUNCATE
    with ResultsStore(s.path, readonly=True) as r, pytest.raises(StoreError, match="read-only"):
        r.checkpoint()


def test_checkpoint_at_least_every_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL_S", 0.0)
    s = _store(tmp_path / "results.sqlite", n_samples=10 ** 6)
    s.write_unit("m", "e", 0, _rows(0))
    assert _units_in_file_alone(s.path, tmp_path) == 1
    s.close()


# ------------------------------------------------------------------------------------ damage
def _damage_page_header(db: Path) -> None:
    offset, _ = table_page(db, "checks")
    overwrite(db, offset, random.Random(0).randbytes(64))


def _damage_a_value(db: Path) -> None:
    # bytes that are no UTF-8 inside a stored text: the page structure stays valid (quick_check passes)
    data = db.read_bytes()
    text = b"deterministic forward pass"
    assert text in data
    start = 0
    while (i := data.find(text, start)) >= 0:
        overwrite(db, i, b"\xff" * len(text))
        start = i + 1


@pytest.mark.parametrize("damage", [_damage_page_header, _damage_a_value], ids=["page-header", "value"])
def test_a_damaged_store_is_one_line_in_every_reader(reference, suite_file, tmp_path, capsys, damage):
    out = copy_run(reference, tmp_path / "damaged")
    db = out / "results.sqlite"
    damage(db)
    commands = {"report": ["report", str(out)],
                "compare": ["compare", str(out), "symvit_micro_patch4_32", "symvit_micro_patch4_32"],
                "verify": ["verify", str(reference), str(out)]}
    capsys.readouterr()
    for name, argv in commands.items():
        assert main(argv) in (1, 2), name
        err = _one_line(capsys)
        assert str(db) in err and "damaged" in err and "restore it from a copy" in err, (name, err)
    assert run(suite_file, out, "--no-report") in (1, 2)  # resume
    err = _one_line(capsys)
    assert str(db) in err and "damaged" in err


def test_random_damage_of_the_checks_page_is_never_a_traceback(reference, tmp_path):
    """64 random bytes at random places of the checks table's page: every read either returns what was
    stored or raises one StoreError line. (SQLite keeps no checksums: bytes landing in a page's unused space
    change nothing, and a value altered into another valid one could not be seen; none of these seeds does.)"""
    clean = reference / "results.sqlite"
    offset, size = table_page(clean, "checks")
    with ResultsStore(clean, readonly=True) as s:
        expected = s.checks().drop(columns="updated_at").to_json()
    outcomes = {"same": 0, "changed": 0, "refused": 0}
    for seed in range(40):
        rng = random.Random(seed)
        db = tmp_path / f"d{seed}.sqlite"
        shutil.copyfile(clean, db)
        overwrite(db, offset + rng.randrange(size - 64), rng.randbytes(64))
        try:
            with ResultsStore(db, readonly=True) as s:
                got = s.checks().drop(columns="updated_at").to_json()
                s.samples(), s.models(), s.evaluations(), s.meta(), s.aggregates()
            outcomes["same" if got == expected else "changed"] += 1
        except StoreError as e:
            assert "\n" not in str(e) and str(db) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["changed"] == 0, outcomes


# -------------------------------------------------------------------------------- atomic files
def test_manifest_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_manifest(path, {"manifest_version": 1, "seeds": {"run": 0}})
    before = path.read_bytes()
    import robustbench_rpc.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OutputWriteError) as info:
        write_manifest(path, {"manifest_version": 1, "seeds": {"run": 1}, "big": "x" * 10000})
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "No space left on device" in msg and "free space" in msg
    assert path.read_bytes() == before  # the previous manifest, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary file left


def test_full_disk_during_the_parquet_export_is_one_line_and_keeps_every_unit(suite_file, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "o"
    real = pd.DataFrame.to_parquet

    def to_parquet(self, path, *a, **kw):
        Path(path).write_bytes(b"PAR1" + bytes(100))  # what a full disk leaves: the start of a file
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    capsys.readouterr()
    assert run(suite_file, out) == 1
    err = _one_line(capsys)
    assert "No space left on device" in err and "export" in err and "store is intact" in err
    assert count(out, "units") == UNITS  # every finished unit kept
    assert not list((out / "results").glob("*.parquet")) and not list((out / "results").glob(".*"))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    assert run(suite_file, out) == 0  # space freed: the same command writes the export, nothing recomputed
    assert len(pd.read_parquet(out / "results" / "samples.parquet")) == 32


def test_full_disk_while_writing_the_report_keeps_the_previous_files(reference, tmp_path, capsys, monkeypatch):
    out = copy_run(reference, tmp_path / "o")
    before = (out / "index.html").read_bytes()
    import robustbench_rpc.atomic as atomic

    real = atomic.os.replace

    def replace(src, dst):
        if str(dst).endswith("index.html"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = _one_line(capsys)
    assert str(out / "index.html") in err and "No space left on device" in err and f"report {out}" in err
    assert (out / "index.html").read_bytes() == before
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only): a real full disk."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk_under_the_report_and_the_export(reference, tmp_path, capsys, tiny_disk):
    capsys.readouterr()
    assert main(["report", str(reference), "--out", str(tiny_disk)]) == 1
    err = _one_line(capsys)
    assert "No space left on device" in err and str(tiny_disk) in err
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith(".tmp")]
    for csv in tiny_disk.rglob("*.csv"):
        pd.read_csv(csv)  # every table written is whole
    # the Parquet/CSV export onto the full disk: one line, nothing cut short
    for p in tiny_disk.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):
        while True:  # fill the disk, then give back 8 KiB: some export files fit, then one does not
            os.write(fd, bytes(4096))
    os.ftruncate(fd, os.fstat(fd).st_size - 8192)
    os.close(fd)
    with ResultsStore(reference / "results.sqlite", readonly=True) as s, pytest.raises(OutputWriteError) as info:
        s.export(tiny_disk / "results")
    assert "\n" not in str(info.value) and "No space left on device" in str(info.value)
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith(".tmp")]


def test_report_pointed_at_the_store_file_is_one_line(reference, capsys):
    capsys.readouterr()
    assert main(["report", str(reference / "results.sqlite")]) == 2
    err = _one_line(capsys)
    assert "is a file" in err and f"pass its folder, {reference}" in err


# ------------------------------------------------------------------------------ incomplete units
def test_a_unit_that_lost_sample_rows_is_not_done_and_is_replaced(tmp_path):
    s = _store(tmp_path / "results.sqlite", n_samples=12)
    for u in range(3):
        s.write_unit("m", "e", u, _rows(4 * u))
    s.close()
    con = sqlite3.connect(tmp_path / "results.sqlite")  # a user with the sqlite3 shell: foreign keys off
    con.execute("DELETE FROM samples WHERE sample_id = 5")
    con.execute("DELETE FROM units WHERE unit = 2")  # its 4 sample rows stay, belonging to no unit
    con.commit()
    con.close()
    s = ResultsStore(tmp_path / "results.sqlite")
    assert s.done_units("m", "e") == {0}
    assert s.incomplete_units("m", "e") == {1: (4, 3), 2: (None, 4)}
    assert s.write_unit("m", "e", 1, _rows(4)) and s.write_unit("m", "e", 2, _rows(8))
    assert s.done_units("m", "e") == {0, 1, 2} and s.incomplete_units("m", "e") == {} and s.verify() == []
    assert not s.write_unit("m", "e", 1, _rows(4))  # a whole unit rewritten with the same rows: a no-op
    s.close()


def test_a_resumed_run_recomputes_a_unit_that_lost_a_sample_row(reference, suite_file, tmp_path):
    out = copy_run(reference, tmp_path / "o")
    (clean_key,) = query(out, "SELECT eval_key FROM evaluations WHERE info_json LIKE '%\"kind\":\"clean\"%'")[0]
    sql(out, f"DELETE FROM samples WHERE eval_key = '{clean_key}' AND sample_id = "
             f"(SELECT MIN(sample_id) FROM samples WHERE eval_key = '{clean_key}')")
    assert count(out, "samples") == 31
    assert run(suite_file, out, "--no-report") == 0
    assert count(out, "samples") == 32
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        assert s.verify() == []
    assert main(["verify", str(reference), str(out)]) == 0
