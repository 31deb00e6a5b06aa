"""Random-patch contamination: k grid patches of an image replaced (severity = k, 1..5), a sparse corruption.

Why: RPC-Attention's PAP separates a low-rank signal from a *sparse* corruption of the keys; a few corrupted
patches of a ViT are exactly a sparse outlier in a few tokens. These corruptions measure accuracy against the
number of corrupted patches with no optimization at all (the attacks ``patch_fool`` and ``adversarial_patch``
are the worst-case counterpart).

* ``patch_noise``: k distinct patches, chosen uniformly, filled with uniform noise in [0, 255];
* ``patch_shuffle``: k distinct patches, each overwritten by a copy of another patch of the same image (a
  plausible, in-distribution content at the wrong place). A corruption sees one image at a time, so patches
  from *other* images are not offered here.

Patches tile the image on the ViT grid of the image size: 8 x 8 patches below 64 pixels (4-pixel patches at
32 x 32, the micro models' grid), 16-pixel patches from 64 pixels up (ViT-B/16's grid at 224). Randomness
comes from the per-sample ``rng`` only, so a sample gets the same patches on every run.
"""
from __future__ import annotations

import numpy as np

from .core import AUTO_TABLE_MIN_SIDE, register_corruption


def patch_grid(height: int, width: int) -> int:
    """The patch side, in pixels, for an image of this size (see the module docstring)."""
    side = min(height, width)
    return max(1, side // 8) if side < AUTO_TABLE_MIN_SIDE else 16


def _cells(x: np.ndarray, severity: int, rng: np.random.Generator):
    size = patch_grid(x.shape[0], x.shape[1])
    rows, cols = x.shape[0] // size, x.shape[1] // size
    chosen = rng.choice(rows * cols, size=min(int(severity), rows * cols), replace=False)
    return size, rows * cols, cols, chosen


def _box(cell: int, cols: int, size: int):
    r, c = divmod(int(cell), cols)
    return slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size)


@register_corruption("patch_noise")
def patch_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """k = severity grid patches replaced by uniform noise."""
    out = x.copy()
    size, _, cols, chosen = _cells(x, severity, rng)
    for cell in chosen:
        rs, cs = _box(cell, cols, size)
        out[rs, cs] = rng.integers(0, 256, size=out[rs, cs].shape, dtype=np.uint8)
    return out


@register_corruption("patch_shuffle")
def patch_shuffle(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """k = severity grid patches overwritten by copies of other patches of the same image."""
    out = x.copy()
    size, n, cols, chosen = _cells(x, severity, rng)
    for cell in chosen:
        source = int(rng.choice([c for c in range(n) if c != cell]))
        rs, cs = _box(cell, cols, size)
        sr, sc = _box(source, cols, size)
        out[rs, cs] = x[sr, sc]
    return out
