"""Ctrl-C while the command line starts: importing the package (torch, timm, torchvision) takes seconds, more on a
loaded machine, and an interrupt there printed the 15-25 line traceback of whatever import it hit, or was lost
when it landed in an extension module's C initialisation, which clears the error (numpy's did, measured by
interrupting at each import in turn: the command then ran to its end, exit 0).

So while the package imports, a command-line process handles SIGINT itself (:func:`startup_guard`): one line,
exit 130 (the shell's code for SIGINT), whatever code is running; nothing has been written yet. Afterwards the
previous handler is back, and :func:`robustbench_rpc.cli.commands.main` turns a Ctrl-C into its own one line.
``import robustbench_rpc`` from a user's own program is left alone (KeyboardInterrupt as usual).

This module imports nothing but the standard library, so it works while the package is half imported.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

INTERRUPTED = "interrupted (Ctrl-C) while starting: nothing was run or written"


def launched_as_cli() -> bool:
    """This process is the ``robustbench-rpc`` command or ``python -m robustbench_rpc`` (also under torchrun)."""
    if sys.argv and os.path.basename(sys.argv[0]).removesuffix(".exe") == "robustbench-rpc":
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "robustbench_rpc" for a, b in zip(argv, argv[1:]))


def _stop(signum, frame) -> None:
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)  # not an exception: an extension's C code could swallow it, and nothing needs unwinding


@contextlib.contextmanager
def startup_guard() -> Iterator[None]:
    """For the command line (where Ctrl-C has its default Python meaning): SIGINT ends the process in one line
    while the block runs. Elsewhere, or where SIGINT is ignored (a background job) or owned by the embedding
    program, nothing changes."""
    guard = (launched_as_cli() and threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if guard:
        signal.signal(signal.SIGINT, _stop)
    try:
        yield
    finally:
        if guard:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_if_cli() -> None:
    """A KeyboardInterrupt before the guard was in place: one line and exit 130 for the command line; otherwise
    return, and the caller re-raises (a user's program decides what Ctrl-C means there)."""
    if launched_as_cli():
        print(INTERRUPTED, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
