"""One run per output folder: an exclusive OS-level ``flock`` on ``<folder>/.lock`` holding the owner's PID,
released by the OS when the process ends (so a killed run never blocks its resume)."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .store_errors import FolderBusyError


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

    def release(self) -> None:
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
