"""``segpgd``: SegPGD, PGD whose per-pixel loss shifts from correctly to wrongly classified pixels.

Source: Gu, Zhao, Tresp & Torr, "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and
Boosting Segmentation Robustness", ECCV 2022 (arXiv:2207.12391). At iteration t = 1..T the loss is

    L_t = [(1 - lambda_t) * sum_{correct pixels} CE + lambda_t * sum_{wrong pixels} CE] / (H * W),
    lambda_t = (t - 1) / (2 T),

so early steps push the pixels still correct, later steps keep the fooled ones fooled. Checked against the
CosPGD authors' implementation (shashankskagnihotri/cospgd ``segpgd_scale``: lambda = iteration / (2 *
iterations) with 0-based iterations, the same weights, the sum over pixels divided by H * W). "Correct" is the
current iterate's argmax; ignored pixels carry no loss. Norms Linf / L2; defaults as ``pixel-pgd``.
"""
from __future__ import annotations

import torch

from ..base import register_attack
from .base import SegmentationAttack, pixel_cross_entropy


@register_attack("segpgd")
class SegPGD(SegmentationAttack):
    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor, step: int) -> torch.Tensor:
        lam = step / (2 * self.steps)  # (t - 1) / (2 T) for t = step + 1
        ce = pixel_cross_entropy(logits, masks, self.ignore_index)
        correct = logits.detach().argmax(dim=1) == masks
        weights = torch.where(correct, 1.0 - lam, lam)
        return (weights * ce).sum() / (masks.shape[-2] * masks.shape[-1])
