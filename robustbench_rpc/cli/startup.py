"""Ctrl-C while the command line starts: importing the package (torch, timm, torchvision) takes seconds, more on a
loaded machine, and an interrupt there used to print the 15-25 line traceback of whatever import it hit. The
package's ``__init__`` and :func:`robustbench_rpc.cli.commands.main` turn it into one line and exit 130 (the
shell's code for SIGINT); ``import robustbench_rpc`` from a user's own program still raises KeyboardInterrupt.

This module imports nothing but the standard library, so it works while the package is half imported.
"""
from __future__ import annotations

import os
import sys

INTERRUPTED = "interrupted (Ctrl-C) while starting: nothing was run or written"


def launched_as_cli() -> bool:
    """This process is the ``robustbench-rpc`` command or ``python -m robustbench_rpc`` (also under torchrun)."""
    if sys.argv and os.path.basename(sys.argv[0]).removesuffix(".exe") == "robustbench-rpc":
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "robustbench_rpc" for a, b in zip(argv, argv[1:]))


def exit_if_cli() -> None:
    """Called on a KeyboardInterrupt during the package's imports: one line and exit 130 for the command line;
    otherwise return, and the caller re-raises (a user's program decides what Ctrl-C means there)."""
    if launched_as_cli():
        print(INTERRUPTED, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
