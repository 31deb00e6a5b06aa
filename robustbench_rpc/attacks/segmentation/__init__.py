"""Attacks on segmentation models (per-pixel logits, per-pixel labels): ``pixel-pgd``, ``segpgd``, ``cospgd``.

Each is registered as every attack is (``get_attack(name, eps=..., norm=..., steps=...)``) and is called as
``attack(model, images, masks)``; see :mod:`.base` for what they share.
"""
from . import cospgd, pixel_pgd, segpgd  # noqa: F401  (registers the attacks)
from .base import IGNORE_INDEX, PixelLogitsGuard, SegmentationAttack, pixel_cross_entropy
from .cospgd import CosPGD
from .pixel_pgd import PixelPGD
from .segpgd import SegPGD

__all__ = ["IGNORE_INDEX", "CosPGD", "PixelLogitsGuard", "PixelPGD", "SegPGD", "SegmentationAttack",
           "pixel_cross_entropy"]
