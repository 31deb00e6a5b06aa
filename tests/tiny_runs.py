"""Tiny runs through the real CLI for the store and verify tests: one shipped micro model, 16 digits32
images in units of 4. ``SUITE`` (clean + OOD) runs in about a second on CPU; ``ATTACK_SUITE`` (clean +
FGSM) also stores the attack fields (norms, clean/plain correctness) and runs the attack trust checks."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from robustbench_rpc.cli.commands import main

_HEAD = """name = "tiny-store"
version = 1
[defaults]
dataset = "digits32"
models = ["symvit_micro_patch4_32:packaged"]
batch_size = 4
seed = 3
limit = 16
[[evaluation]]
kind = "clean"
"""
SUITE = _HEAD + """[[evaluation]]
kind = "ood"
dataset = "digits32-ood"
"""
ATTACK_SUITE = _HEAD + """[[evaluation]]
kind = "attack"
attack = "fgsm"
eps = ["2/255"]
"""
EXTRA_EVAL = """[[evaluation]]
kind = "attack"
attack = "noise"
eps = ["8/255"]
"""  # on a dataset the run already reads: the manifests' sample ids cannot tell the runs apart
UNITS = 8  # either suite: 2 evaluations x 16 images / 4 per unit


def suite(folder: Path, text: str = SUITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "tiny_store.toml"
    p.write_text(text)
    return p


def run(suite_file: Path, out: Path, *extra: str) -> int:
    return main(["run", "--suite", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def sql(out: Path, script: str) -> None:
    """Edit a run's store as a user with the sqlite3 shell would (foreign keys off)."""
    con = sqlite3.connect(out / "results.sqlite")
    try:
        con.executescript(script)
        con.commit()
    finally:
        con.close()


def query(out: Path, q: str, *params) -> list[tuple]:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return con.execute(q, params).fetchall()
    finally:
        con.close()


def count(out: Path, table: str) -> int:
    return query(out, f"SELECT COUNT(*) FROM {table}")[0][0]


def overwrite(db: Path, offset: int, data: bytes) -> None:
    """Write ``data`` into the store file at ``offset`` (a damaged disk page)."""
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(data)


def table_page(db: Path, table: str) -> tuple[int, int]:
    """(byte offset, page size) of ``table``'s root page in the store file."""
    con = sqlite3.connect(db)
    try:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()
    return (root - 1) * size, size
