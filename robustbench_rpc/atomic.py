"""Atomic file writes: a reader (or a resume after kill -9, a full disk or a power cut) sees either the
previous version of a file or the new one whole, never a truncated mix.

The technique is the usual POSIX one (as in ``atomicwrites`` and SQLite's own journal): write a temporary
file in the same folder, flush and ``fsync`` it, ``os.replace`` it over the target (atomic within one file
system), then ``fsync`` the folder so the rename itself is durable. On any error the temporary file is
removed and the original target is left as it was; the error propagates unchanged (an ``OSError`` such as
ENOSPC), for the caller to turn into one line naming what it was writing.

This module is a leaf: it imports nothing from the package.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _file_mode() -> int:
    mask = os.umask(0)  # read once at import: umask() can only be read by setting it
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def _fsync_dir(folder: Path) -> None:
    # a rename is durable once its folder's entry is on disk; some file systems refuse O_RDONLY on dirs
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error, the temporary file
    replaces ``path`` atomically (fsynced first when ``durable``). On error it is removed, ``path`` untouched.

    For writers that want a file name (``DataFrame.to_parquet``, ``Figure.savefig``)::

        with replacing(out / "samples.parquet") as tmp:
            df.to_parquet(tmp)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see module docstring); returns ``path``."""
    path = Path(path)
    with replacing(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str | Path, text: str, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (see module docstring); returns ``path``."""
    return write_bytes(path, text.encode(encoding), durable=durable)
