"""The results store's errors, each a one-line message naming the store or file and what to do next (the
CLI prints ``error: <message>``). A leaf: the store, its export and the folder lock raise these."""
from __future__ import annotations

import errno
from pathlib import Path


class StoreError(RuntimeError):
    """Base class for errors raised by the results store."""


class StoreConflictError(StoreError):
    """A key is already registered with different info, or a unit is rewritten with other rows."""


class StoreWriteError(StoreError):
    """The store could not be written (disk full, read-only, I/O error); committed units are kept."""


class FolderBusyError(StoreError):
    """Another process holds the folder's lock: two runs must not write into one folder at once."""


class StoreCorruptError(StoreError):
    """The store file is damaged (SQLite's quick_check fails, a page or a stored value cannot be read)."""


class OutputWriteError(StoreWriteError):
    """A file made from the store (export, report, manifest) could not be written; the store is intact."""


def one_line(reason: object, limit: int = 200) -> str:
    # SQLite quotes the undecodable bytes it met ("... with text '<garbage>'"): keep the column, drop the bytes
    text = str(reason).split(" with text ", 1)[0]
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def corrupt_error(path: Path, reason: object) -> StoreCorruptError:
    """One line naming the damaged store, what SQLite found and what to do."""
    reason = one_line(reason)
    return StoreCorruptError(f"the results store {path} is damaged ({reason}); its results cannot be trusted: "
                             "restore it from a copy, or move it aside and rerun the same command to recompute")


def output_error(path: Path, exc: BaseException, what: str, again: str) -> OutputWriteError:
    """One line naming the file that could not be written, the OS reason and how to write it again."""
    reason = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    where = getattr(exc, "filename", None) or path
    full = "full" in reason.lower() or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
    return OutputWriteError(f"cannot write the {what} {where}: {reason}; the results store is intact: "
                            f"{'free space' if full else 'fix the folder'} and {again}")


def is_corruption(e: BaseException) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB, or text that cannot be decoded: the file's bytes are damaged."""
    if getattr(e, "sqlite_errorname", None) in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return True
    text = str(e).lower()
    return any(w in text for w in ("malformed", "not a database", "could not decode", "corrupt"))


def write_error(path: Path, exc: BaseException) -> StoreWriteError:
    """One line naming the store, the OS/SQLite reason and how to go on."""
    reason = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    full = "full" in reason.lower() or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
    hint = ("free space and rerun the same command to resume" if full
            else "fix the folder and rerun the same command to resume")
    return StoreWriteError(f"cannot write the results store {path}: {reason}; the units committed before are "
                           f"kept: {hint}")


def is_write_fault(e: BaseException) -> bool:
    """Disk full, read-only file or folder, I/O error: faults of the medium, not of the data."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return any(w in text for w in ("full", "readonly", "read-only", "disk i/o", "unable to open"))
