"""One run per output folder: an exclusive OS-level ``flock`` on ``<folder>/.lock`` holding the owner's PID,
released by the OS when the process ends (so a killed run never blocks its resume).

A flock belongs to the open file description, which a forked child (a DataLoader worker) shares through
its inherited descriptor: the lock then outlived a kill -9 of the run until the orphaned workers exited
(~5 s, their watchdog's interval, longer when busy), and an immediate resume was refused naming the dead
PID. Every forked child therefore closes its copies at once (:func:`_close_in_child`); closing a copy
releases nothing while the parent holds its own (flock(2): released by LOCK_UN on any copy, or when all
are closed), and the child never calls LOCK_UN, which would release the parent's lock.
"""
from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from .errors import FolderBusyError

_HELD: "weakref.WeakSet[FolderLock]" = weakref.WeakSet()  # this process's locks, closed in forked children


def _close_in_child() -> None:
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_close_in_child)


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` holding the owner's PID (``lock_folder``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(f"{self.folder} is in use by another run (PID {pid} holds {self.path}); wait for "
                                  "it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd
        _HELD.add(self)

    def release(self) -> None:
        _HELD.discard(self)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | Path) -> FolderLock:
    """Take ``folder``'s run lock or raise ``FolderBusyError`` naming the PID that holds it."""
    return FolderLock(folder)


class ForeignFolderError(ValueError):
    """An output folder that holds files another command or the user put there (:func:`refuse_foreign_folder`)."""


#: the file that marks a folder as written by a command (its own state), and what such a folder is, in words
FOLDER_MARKERS = {"results.sqlite": "an evaluation run folder (of robustbench-rpc run)",
                  "state.pt": "a training folder (of robustbench-rpc train)"}


def _own_leftover(name: str) -> bool:
    """The lock, and a temporary file of an interrupted atomic write (``atomic.replacing``: ``.NAME.*.tmp``)."""
    return name == ".lock" or (name.startswith(".") and name.endswith(".tmp"))


def refuse_foreign_folder(folder: str | Path, marker: str, command: str, *, writes: str = "its outputs",
                          error: type[Exception] = ForeignFolderError) -> None:
    """Every command that writes a folder follows one rule: it writes into a new or empty folder, or into a
    folder holding its own ``marker`` (its state, to resume); any other folder is the user's (or another
    command's) and is refused before anything is written, naming what it holds. Raises ``error`` (one line)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise error(f"--out {folder} is a file, not a folder")
    if (folder / marker).exists():
        return
    try:
        held = sorted(e.name for e in os.scandir(folder) if not _own_leftover(e.name))
    except OSError as err:
        raise error(f"--out {folder}: cannot list it ({err.strerror or err})") from None
    if not held:
        return
    other = next((FOLDER_MARKERS[name] for name in held if name in FOLDER_MARKERS), None)
    what = other or "a folder of other files"
    shown = ", ".join(held[:4]) + (f", ... ({len(held)} entries)" if len(held) > 4 else "")
    raise error(f"--out {folder} is {what}, holding {shown}: not a {command} folder (no {marker}); {command} would "
                f"overwrite {writes} there; choose an empty or new folder, or a {command} folder to resume")
