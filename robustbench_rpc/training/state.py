"""Resumable training state: one file per output folder, replaced atomically at each finished epoch.

``DIR/state.pt`` holds everything the next epoch depends on: model, optimizer, scheduler, EMA and
gradient-scaler states, the data-order generator and every rank's torch RNG (CPU and CUDA), the epoch
history and the best metric, plus the recipe and the run settings it was made with. It is written to a
temporary file, fsynced and renamed over the old one (then the folder is fsynced), so a kill -9 at any
moment leaves either the previous epoch's state or the new one, never a torn file. The same command then
continues from the last finished epoch; on CPU with the same thread count the result is bit-identical to
an uninterrupted run (nothing random happens outside these states). The weights files ``last``/``best``
are replaced the same way, before the state, so the state never points past them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..atomic import replacing
from .recipe import RecipeError

STATE_FILE = "state.pt"
STATE_FORMAT = 1


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
    return atomic_write(Path(out) / STATE_FILE, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_state(out: Path) -> dict[str, Any] | None:
    """The folder's training state, None when it has none; an unreadable one is a one-line error."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise RecipeError(f"{path}: unreadable training state ({type(e).__name__}); move it away to start over")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RecipeError(f"{path}: not a training state of this version; move it away to start over")
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
    notes = []
    for key, what in (("world_size", "ranks"), ("threads", "torch threads")):
        if old.get(key) != settings.get(key):
            notes.append(f"resuming with {settings.get(key)} {what} (trained so far with {old.get(key)}): the "
                         "result will not be bit-identical to an uninterrupted run")
    return notes
