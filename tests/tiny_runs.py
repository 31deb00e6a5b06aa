"""Tiny runs through the real CLI for the store and verify tests: one shipped micro model, 16 digits32
images in units of 4. ``SUITE`` (clean + OOD) runs in about a second on CPU; ``ATTACK_SUITE`` (clean +
FGSM) also stores the attack fields (norms, clean/plain correctness) and runs the attack trust checks.
``suite_text`` / ``write_suite`` render any test's suite from Python values (one renderer, so a suite is
spelled as its keys and values, not retyped TOML); ``run`` is the ``run`` command as a user types it."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from robustbench_rpc.cli.commands import main

MICRO = "symvit_micro_patch4_32:packaged"
RPC_MICRO = "rpc_symvit_micro_patch4_32:packaged"


def toml_value(value) -> str:
    """A Python value as TOML: bool, int, float, str, a list of them or a dict (an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def _table(keys: dict) -> str:
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items() if v is not None)


def evaluation_table(keys: dict) -> str:
    """One ``[[evaluation]]`` table; a key whose value is None is left out."""
    return "[[evaluation]]\n" + _table(keys)


def suite_text(*evaluations: dict, name: str = "tiny", version: int | None = 1, description: str | None = None,
               top: dict | None = None, dataset: str | None = "digits32", models: list | None = (MICRO,),
               **defaults) -> str:
    """A suite file's TOML: the top keys, ``[defaults]`` (dataset, models, then ``defaults`` in order) and one
    ``[[evaluation]]`` table per dict. A key given as None is left out of the file, so the suite's own default
    applies."""
    head = _table({"name": name, "version": version, "description": description, **(top or {})})
    models = list(models) if models is not None else None
    text = head + "[defaults]\n" + _table({"dataset": dataset, "models": models, **defaults})
    return text + "".join(evaluation_table(e) for e in evaluations)


def write_suite(path: Path, *evaluations: dict, **keys) -> Path:
    """Write ``suite_text(*evaluations, **keys)`` to ``path`` (its folder made) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(suite_text(*evaluations, **keys))
    return path


_STORE = dict(name="tiny-store", batch_size=4, seed=3, limit=16)
SUITE = suite_text(dict(kind="clean"), dict(kind="ood", dataset="digits32-ood"), **_STORE)
ATTACK_SUITE = suite_text(dict(kind="clean"), dict(kind="attack", attack="fgsm", eps=["2/255"]), **_STORE)
EXTRA_EVAL = """[[evaluation]]
kind = "attack"
attack = "noise"
eps = ["8/255"]
"""  # on a dataset the run already reads: the manifests' sample ids cannot tell the runs apart
UNITS = 8  # either suite: 2 evaluations x 16 images / 4 per unit


def suite(folder: Path, text: str = SUITE, filename: str = "tiny_store.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / filename
    p.write_text(text)
    return p


def run(suite_file: Path, out: Path, *extra: str, plugin: Path | None = None) -> int:
    """``robustbench-rpc [--plugin PLUGIN] run --suite SUITE --out OUT --no-progress --device cpu EXTRA...``"""
    first = ["--plugin", str(plugin)] if plugin is not None else []
    return main([*first, "run", "--suite", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu",
                 *extra])


def slow_plugin(name: str, seconds: str) -> str:
    """A plug-in registering model ``name``: a linear layer whose forwards after the 12th (the checks before the first
    unit) each sleep ``seconds`` (a Python expression), so a run can be stopped between units."""
    return f"""import os
import time
import torch
from torch import nn
import robustbench_rpc


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 12:
            time.sleep({seconds})
        return self.lin(x.flatten(1))


@robustbench_rpc.register_model("{name}", input_size=32, mean=0.5, std=0.25, num_classes=10)
def {name}(**kw):
    return Slow()
"""


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
