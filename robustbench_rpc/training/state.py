"""Resumable training state: one file per output folder, replaced atomically at each finished epoch.

``DIR/state.pt`` holds everything the next epoch depends on: model, optimizer, scheduler, EMA and
gradient-scaler states, the data-order generator and every rank's torch RNG (CPU and CUDA), the epoch
history and the best metric, plus the recipe and the run settings it was made with. The file is one header
line recording the sha256 of the torch payload that follows it, so a flipped byte (a bad disk, a copy cut
short) is refused in one line on resume instead of loading weights that train to ``loss nan``; states written
before the header existed are read unchecked, with a note. It is written to a
temporary file, fsynced and renamed over the old one (then the folder is fsynced), so a kill -9 at any
moment leaves either the previous epoch's state or the new one, never a torn file. The same command then
continues from the last finished epoch; on CPU with the same thread count the result is bit-identical to
an uninterrupted run (nothing random happens outside these states). The weights files ``last``/``best``
are replaced the same way, before the state, so the state never points past them.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..atomic import replacing
from .recipe import RecipeError

STATE_FILE = "state.pt"
STATE_FORMAT = 1
#: the first line of a state file: this prefix, the payload's sha256 (hex), a newline; then the torch payload
STATE_HEADER = b"robustbench-rpc training state sha256="
#: what ``train`` writes into its folder (the folder rule of ``store.lock.refuse_foreign_folder``)
OUTPUTS = f"last.safetensors, best.safetensors, metrics.csv, curves.png and {STATE_FILE}"


class TrainingFault(RuntimeError):
    """A training that cannot go on (a non-finite loss, a full disk): one line naming the step or file; the
    folder keeps the last finished epoch, so the same command resumes once the cause is fixed."""


def write_fault(path: Path, err: OSError, epoch: int) -> TrainingFault:
    """One line for a failed write of ``path``: the OS reason, the free space left there, what is kept."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    kept = f"epoch {epoch - 1}'s files and state are kept" if epoch > 1 else "no epoch had finished"
    return TrainingFault(f"cannot write {path} at the end of epoch {epoch}: {err.strerror or err} ({free}); {kept}: "
                         + ("free space" if full else "fix the folder") + " and rerun the same command to resume")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then ``tmp`` replaces ``path``, durably (``atomic.replacing``): all or nothing. ``tmp``
    ends like ``path`` (``.safetensors``, ``.png``), for writers that pick the format from the name."""
    path = Path(path)
    with replacing(path) as tmp:
        named = tmp.with_name(tmp.name + path.suffix)
        try:
            write(named)
            os.replace(named, tmp)
        finally:
            if named.exists():
                named.unlink()
    return path


def rng_state() -> dict[str, Any]:
    """This process's torch RNG (CPU and, where used, CUDA)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(out: Path, state: Mapping[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    payload = buf.getbuffer()
    header = STATE_HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)

    return atomic_write(Path(out) / STATE_FILE, write)


def _payload(path: Path) -> tuple[io.BytesIO, bool]:
    """(the torch payload of a state file, whether a checksum vouched for it); a mismatch is one line."""
    data = path.read_bytes()
    if not data.startswith(STATE_HEADER):  # written before the header: nothing to check it against
        return io.BytesIO(data), False
    end = data.find(b"\n", len(STATE_HEADER))
    recorded = data[len(STATE_HEADER):end].decode("ascii", "replace") if end > 0 else ""
    body = memoryview(data)[end + 1:] if end > 0 else memoryview(b"")
    actual = hashlib.sha256(body).hexdigest()
    if actual != recorded:
        raise RecipeError(f"{path}: the training state is damaged: its sha256 is {actual[:16]}..., not the "
                          f"{recorded[:16]}... recorded when it was written ({len(body)} bytes); restore it, or move "
                          "it away to start the training over")
    return io.BytesIO(body), True


def load_state(out: Path) -> dict[str, Any] | None:
    """The folder's training state, None when it has none; an unreadable one is a one-line error."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        payload, checked = _payload(path)
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the training state ({e.strerror or e})") from None
    try:
        state = torch.load(payload, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise RecipeError(f"{path}: unreadable training state ({type(e).__name__}); move it away to start over")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RecipeError(f"{path}: not a training state of this version; move it away to start over")
    state["checksum_verified"] = checked
    return state


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {a!r} there, {b!r} now"]


def check_resume(state: Mapping[str, Any], recipe: Mapping[str, Any], settings: Mapping[str, Any],
                 out: Path) -> list[str]:
    """Refuse to continue a training of another recipe or device/precision (one line naming what differs);
    return notes for settings that only cost bit-identity (rank or thread count)."""
    changed = _diff({k: v for k, v in state["recipe"].items() if k != "description"},
                    {k: v for k, v in recipe.items() if k != "description"})
    if changed:
        shown = "; ".join(changed[:3]) + (f"; ... ({len(changed)} in all)" if len(changed) > 3 else "")
        raise RecipeError(f"--out {out} holds a training of another recipe ({shown}): rerun the same command "
                          "to resume it, or pass another --out")
    old = state["settings"]
    for key in ("device_type", "amp"):
        if old.get(key) != settings.get(key):
            raise RecipeError(f"--out {out} was trained with {key} {old.get(key)!r}, not {settings.get(key)!r}: "
                              "resume it with the same setting, or pass another --out")
    if bool(old.get("skip_unreadable")) != bool(settings.get("skip_unreadable")):
        was = "with" if old.get("skip_unreadable") else "without"
        raise RecipeError(f"--out {out} was trained {was} --skip-unreadable, which decides the images trained on: "
                          "resume it the same way, or pass another --out")
    notes = []
    for key, what in (("world_size", "ranks"), ("threads", "torch threads")):
        if old.get(key) != settings.get(key):
            notes.append(f"resuming with {settings.get(key)} {what} (trained so far with {old.get(key)}): the "
                         "result will not be bit-identical to an uninterrupted run")
    return notes
