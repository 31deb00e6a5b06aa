"""``--plugin MODULE|FILE.py``: import a user's module so its ``@register_*`` decorators run.

A plug-in that cannot be imported costs one line, never a traceback: a syntax error names the file and
line; an exception while importing names the line of the plug-in file it came from and the exception; a
name registered twice names the name and both registrants (:class:`robustbench_rpc.registry.DuplicateNameError`).
The same file given twice is imported once, as ``import`` would.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from .registry import DuplicateNameError


class PluginError(ImportError):
    """A ``--plugin`` that cannot be loaded; the message names the file (and line) and what went wrong."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _raised_at(err: BaseException, file: str | None) -> str:
    """``file:line`` of the innermost frame of ``err``'s traceback inside the plug-in ``file`` (the line of
    the plug-in that led to the exception), else of the innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return file or "?"
    same = lambda a, b: a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)  # noqa: E731
    inside = [f for f in frames if same(f.filename, file)]
    frame = (inside or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def _explain(spec: str, err: BaseException, file: str | None) -> PluginError:
    if isinstance(err, SyntaxError):  # the file (or a module it imports) does not parse
        where = f"{err.filename or file}:{err.lineno}" if err.lineno else (err.filename or file)
        return PluginError(f"--plugin {spec}: syntax error at {where}: {_one_line(err.msg)}")
    if isinstance(err, DuplicateNameError):
        return PluginError(f"--plugin {spec}: {err}")
    return PluginError(f"--plugin {spec}: importing it raised {type(err).__name__}: {_one_line(err)} "
                       f"(at {_raised_at(err, file)})")


def _load_file(spec: str) -> None:
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--plugin file not found: {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where is not None and os.path.realpath(where) == os.path.realpath(path):
            return  # imported already: its registrations stand
        raise PluginError(f"--plugin {spec}: a module named '{name}' is already loaded "
                          f"({where or 'built in'}); rename the plug-in file")
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any import-time fault of the user's file becomes one line
        sys.modules.pop(name, None)
        raise _explain(spec, err, str(path)) from None


def _load_module(spec: str) -> None:
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as err:  # a parent package missing or broken
        raise _explain(spec, err, None) from None
    if found is None:
        raise PluginError(f"--plugin {spec}: no module named '{spec}' (give a module importable from "
                          "sys.path, or a .py file)")
    try:
        importlib.import_module(spec)
    except Exception as err:  # noqa: BLE001
        raise _explain(spec, err, found.origin) from None


def load_plugin(spec: str) -> None:
    """Import a user module (dotted name or .py file) so its @register_* decorators run; any fault raises
    :class:`PluginError` in one line (or FileNotFoundError for a missing file)."""
    if spec.endswith(".py"):
        _load_file(spec)
    else:
        _load_module(spec)
