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
