"""``pixel-pgd``: PGD on the mean per-pixel cross-entropy, the standard segmentation baseline.

Source: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018, with the
per-pixel cross-entropy averaged over the scored pixels as the loss (as SegPGD and CosPGD compare against).
Norms Linf / L2; defaults steps=10, alpha=2.5*eps/steps, random start; ignored pixels carry no loss.
"""
from __future__ import annotations

import torch

from ..base import register_attack
from .base import SegmentationAttack, pixel_cross_entropy


@register_attack("pixel-pgd")
class PixelPGD(SegmentationAttack):
    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor, step: int) -> torch.Tensor:
        scored = (masks != self.ignore_index).sum().clamp_min(1)
        return pixel_cross_entropy(logits, masks, self.ignore_index).sum() / scored
