"""Corruption registry, severity tables, per-sample seeding and the one entry point :func:`corrupt`.

A corruption is a name with one implementation per *severity table*:

- ``"imagenet-c"``: the ImageNet-C parameters (Hendrycks & Dietterich, ICLR 2019) for ~224 px images,
  computed by the ``imagecorruptions`` package (see :mod:`.imagenet_c`);
- ``"cifar10-c"``: the CIFAR-10-C parameters of Hendrycks' ``make_cifar_c.py`` for 32 px images,
  implemented here (see :mod:`.cifar_c`).

``severity_table="auto"`` picks by image size (shorter side < 64 px -> ``cifar10-c``); use
:func:`resolve_severity_table` to learn (and record) the table a run used.

Implementations take ``(x, severity, rng)`` with ``x`` a uint8 ``(H, W, 3)`` array, ``severity`` in
1..5 and ``rng`` a seeded ``numpy.random.Generator``, and return an array of the same shape in
[0, 255].  While one runs, numpy's *global* random state is also seeded from the same seed (and
restored afterwards), because ``imagecorruptions`` draws from it; this makes :func:`corrupt`
deterministic for a given seed but not thread-safe (DataLoader workers are processes, so they are
fine).
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..metrics import IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA
from ..registry import Registry

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

SEVERITY_TABLES: tuple[str, ...] = ("imagenet-c", "cifar10-c")
AUTO_TABLE_MIN_SIDE = 64
"""With ``severity_table="auto"``, images whose shorter side is below this get ``cifar10-c``."""

_TABLE_ALIASES = {
    "imagenet-c": "imagenet-c", "imagenet_c": "imagenet-c", "imagenet": "imagenet-c",
    "cifar10-c": "cifar10-c", "cifar-10-c": "cifar10-c", "cifar10_c": "cifar10-c",
    "cifar": "cifar10-c", "cifar10": "cifar10-c",
}
ANY_TABLE = "any"


@dataclass
class CorruptionSpec:
    """One registered corruption: its implementations per severity table."""

    name: str
    group: str  # "common" (the 15 of the mCE), "extra" (the 4 held-out ones) or "custom"
    impls: dict[str, CorruptionFn] = field(default_factory=dict)
    doc: str = ""

    def tables(self) -> list[str]:
        return list(SEVERITY_TABLES) if ANY_TABLE in self.impls else sorted(self.impls)

    def impl(self, table: str) -> CorruptionFn:
        if table in self.impls:
            return self.impls[table]
        if ANY_TABLE in self.impls:
            return self.impls[ANY_TABLE]
        raise ValueError(f"corruption '{self.name}' has no implementation for severity table "
                         f"'{table}'; it has: {', '.join(self.tables())}")


CORRUPTIONS: Registry[CorruptionSpec] = Registry("corruption")


def register_corruption(name: str, *, table: str | None = None, group: str = "custom",
                        overwrite: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator registering ``fn(x_uint8_hwc, severity, rng) -> array`` as corruption ``name``.

    ``table=None`` registers one implementation for every severity table; otherwise the function
    serves only that table (register once per table to give a corruption table-specific parameters).
    Randomness must come from ``rng`` (or numpy's global state, which :func:`corrupt` seeds).
    """
    key = ANY_TABLE if table is None else normalize_table(table)

    def deco(fn: CorruptionFn) -> CorruptionFn:
        if not callable(fn):
            raise TypeError(f"corruption '{name}' must be callable, got {fn!r}")
        if name in CORRUPTIONS:
            spec = CORRUPTIONS.get(name)
        else:
            spec = CORRUPTIONS.add(name, CorruptionSpec(name=name, group=group))
        if key in spec.impls and spec.impls[key] is not fn and not overwrite:
            raise ValueError(f"corruption '{name}' already has an implementation for table '{key}'")
        spec.impls[key] = fn
        if fn.__doc__ and not spec.doc:
            spec.doc = fn.__doc__.strip().splitlines()[0]
        return fn

    return deco


def get_corruption(name: str) -> CorruptionSpec:
    """The spec of a registered corruption (unknown names raise with did-you-mean suggestions)."""
    return CORRUPTIONS.get(name)


def list_corruptions(subset: str = "common") -> list[str]:
    """Corruption names: ``"common"`` (the 15 of ImageNet-C, paper order), ``"extra"`` (the 4
    held-out ones), ``"custom"`` (user-registered) or ``"all"`` (all of these)."""
    common = [c for c in IMAGENET_C_CORRUPTIONS if c in CORRUPTIONS]
    extra = [c for c in IMAGENET_C_EXTRA if c in CORRUPTIONS]
    custom = [c for c in CORRUPTIONS.names() if c not in IMAGENET_C_CORRUPTIONS
              and c not in IMAGENET_C_EXTRA]
    subsets = {"common": common, "extra": extra, "custom": custom, "all": common + extra + custom}
    if subset not in subsets:
        raise ValueError(f"unknown corruption subset '{subset}'; use one of {', '.join(subsets)}")
    return list(subsets[subset])


def normalize_table(table: str) -> str:
    key = str(table).lower()
    if key not in _TABLE_ALIASES:
        raise ValueError(f"unknown severity table '{table}'; use 'auto', "
                         f"{', '.join(repr(t) for t in SEVERITY_TABLES)}")
    return _TABLE_ALIASES[key]


def resolve_severity_table(height: int, width: int, requested: str = "auto") -> str:
    """The severity table a corruption of an ``height x width`` image uses.

    ``"auto"``: ``"cifar10-c"`` when ``min(height, width) < 64``, else ``"imagenet-c"``; an explicit
    table is returned normalized.  Record the result with the run (evaluation params
    ``severity_table``).
    """
    if str(requested).lower() == "auto":
        return "cifar10-c" if min(height, width) < AUTO_TABLE_MIN_SIDE else "imagenet-c"
    return normalize_table(requested)


def derive_seed(base_seed: int, corruption: str, severity: int, sample_id: int) -> int:
    """A 63-bit seed from ``(base seed, corruption, severity, sample id)``.

    Stable across processes, platforms and Python versions (SHA-256, not ``hash()``), so an image
    corrupted on any DataLoader worker, in any order, after any resume, is the same.
    """
    key = f"{int(base_seed)}|{corruption}|{int(severity)}|{int(sample_id)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


_restore_numpy_global = True


def own_numpy_global_state() -> None:
    """Declare that this process owns numpy's global random state (a data worker does): corruptions then
    seed it without saving and restoring it around each image, which costs ~75 us of the ~2.5 ms a cheap
    corruption takes at 224 px. The images are the same; only the state left behind differs."""
    global _restore_numpy_global
    _restore_numpy_global = False


@contextlib.contextmanager
def seeded_numpy_global(seed: int) -> Iterator[None]:
    """Seed numpy's global (legacy) random state for the block and restore it afterwards (unless this
    process declared :func:`own_numpy_global_state`)."""
    if not _restore_numpy_global:
        np.random.seed(int(seed) % (2 ** 32))
        yield
        return
    state = np.random.get_state()
    np.random.seed(int(seed) % (2 ** 32))
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def _corrupt_uint8(x: np.ndarray, name: str, severity: int, seed: int | None, table: str
                   ) -> np.ndarray:
    spec = CORRUPTIONS.get(name)
    resolved = resolve_severity_table(x.shape[0], x.shape[1], table)
    fn = spec.impl(resolved)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2 ** 63 - 1))
    rng = np.random.default_rng(int(seed))
    with seeded_numpy_global(seed):
        out = fn(np.ascontiguousarray(x), severity, rng)
    out = np.asarray(out)
    if out.shape != x.shape:
        raise RuntimeError(f"corruption '{name}' ({resolved}) returned shape {out.shape} for an input "
                           f"of shape {x.shape}")
    # ImageNet-C / CIFAR-10-C store np.uint8(corrupted): clip then truncate (already 8-bit: as it is)
    return out if out.dtype == np.uint8 else np.clip(out, 0, 255).astype(np.uint8)


def corrupt(image, name: str, severity: int, seed: int | None = None,
            severity_table: str = "auto"):
    """Corrupt one image with corruption ``name`` at ``severity`` (1..5).

    ``image`` is a uint8 numpy array ``(H, W, 3)`` (or ``(H, W)`` / ``(H, W, 1)``, treated as grey) or
    a float tensor ``(3, H, W)`` (or ``(1, H, W)``) in [0, 1]; the result has the same type, shape,
    dtype and device.  Float input is first quantized to uint8 (rounded), as ImageNet-C corrupts
    8-bit images.  ``seed=None`` draws fresh randomness; an int makes the result reproducible (use
    :func:`derive_seed` for per-sample seeds).
    """
    severity = _check_severity(severity)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None

    if torch is not None and isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) or (1, H, W) tensor, got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"tensor images must be float in [0, 1], got dtype {image.dtype}")
        arr = np.rint(image.detach().float().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
        grey = arr.shape[2] == 1
        arr = np.repeat(arr, 3, axis=2) if grey else arr
        out = _corrupt_uint8(arr, name, severity, seed, severity_table)
        if grey:
            out = np.round(out.astype(np.float64).mean(axis=2, keepdims=True)).astype(np.uint8)
        t = torch.from_numpy(out).permute(2, 0, 1).to(device=image.device, dtype=image.dtype) / 255
        return t.contiguous()

    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a uint8 numpy array (H, W, 3) or a float tensor (3, H, W), got "
                        f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 (H, W, 3), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        return _corrupt_uint8(image, name, severity, seed, severity_table)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        rgb = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        out = _corrupt_uint8(rgb, name, severity, seed, severity_table)
        grey = np.round(out.astype(np.float64).mean(axis=2)).astype(np.uint8)
        return grey.reshape(image.shape)
    raise ValueError(f"expected an image of shape (H, W, 3), (H, W, 1) or (H, W), got {image.shape}")
