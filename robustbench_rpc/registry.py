"""One generic registry for every plug-in kind (attention variants, models, attacks, corruptions).

A name is declared once, with a decorator; lookups of unknown names fail with close matches, so a typo
in a suite file or on the command line costs seconds, not a wasted GPU hour.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
import sys
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def close_matches(word: object, known, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The known names closest to ``word`` (difflib's ratio), best first."""
    return difflib.get_close_matches(str(word), sorted(known), n=n, cutoff=cutoff)


def did_you_mean(word: object, known, n: int = 3, cutoff: float = 0.6, aside: bool = False) -> str:
    """The project's one "did you mean" hint: ``" Did you mean: a, b?"`` as a sentence of its own, or
    ``" (did you mean a, b?)"`` as an aside inside a sentence that goes on; ``""`` when nothing is close."""
    close = close_matches(word, known, n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" (did you mean {', '.join(close)}?)" if aside else f" Did you mean: {', '.join(close)}?"


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __init__(self, kind: str, name: str, known: list[str]):
        close = close_matches(name, known, n=5, cutoff=0.5)
        hint = did_you_mean(name, known, n=5, cutoff=0.5)
        shown = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
        self.kind, self.name, self.close = kind, name, close
        super().__init__(f"unknown {kind} '{name}'.{hint} Known {kind}s: {shown}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DuplicateNameError(ValueError):
    """A name registered a second time (without ``overwrite=True``); the message names both registrants."""

    def __init__(self, kind: str, name: str, first: str, second: str):
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(f"{kind} '{name}' is already registered by {first}; {second} registers it again: "
                         "choose another name")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def registrant(depth: int = 2) -> str:
    """Where a registration comes from, as ``module (file:line)``: the innermost calling frame that is
    outside this package (a plug-in file, a test, a script) or is a module's top-level code (a built-in
    registration), so the registry's own helpers and decorators in between are skipped."""
    frame = sys._getframe(depth)
    while frame is not None:
        file = frame.f_code.co_filename
        if not file.startswith("<") and (frame.f_code.co_name == "<module>"
                                         or not os.path.abspath(file).startswith(_PACKAGE_DIR)):
            return f"{frame.f_globals.get('__name__', '?')} ({file}:{frame.f_lineno})"
        frame = frame.f_back
    return "?"


class Registry(Generic[T]):
    """Name -> object mapping with a decorator for registration and did-you-mean errors. Each name
    remembers who registered it (:meth:`registered_by`), so a clash names both sides. ``name_attr``: the
    class attribute through which a registered class knows its own name (``variant_name``, ``head_name``),
    set at registration unless the class declares it itself."""

    def __init__(self, kind: str, name_attr: str | None = None):
        self.kind = kind
        self.name_attr = name_attr
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not obj:
                raise DuplicateNameError(self.kind, name, self.registered_by(name), registrant())
            if name not in self._items or self._items[name] is not obj:
                self._origins[name] = registrant()
            self._items[name] = obj
            if self.name_attr and isinstance(obj, type) and self.name_attr not in obj.__dict__:
                setattr(obj, self.name_attr, name)
            return obj

        return deco

    def registered_by(self, name: str) -> str:
        """``module (file:line)`` of the registration that holds ``name``."""
        self.get(name)
        return self._origins.get(name, "?")

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        return self.register(name, overwrite=overwrite)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, sorted(self._items)) from None

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._items)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
