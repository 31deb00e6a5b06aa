"""``cospgd``: CosPGD, PGD whose per-pixel loss is weighted by how well each pixel is still predicted.

Source: Agnihotri, Jung & Keuper, "CosPGD: an efficient white-box adversarial attack for pixel-wise prediction
tasks", ICML 2024 (arXiv:2302.02213). The untargeted loss is

    L = mean over pixels of  cos(softmax(f(x_adv))_i, onehot(y_i)) * CE(f(x_adv)_i, y_i),

the cosine weight taken as a constant (no gradient through it), so pixels already fooled (low similarity to
their label) stop dominating the step. Checked against the authors' ``cospgd_scale``
(shashankskagnihotri/cospgd: softmax over classes, one-hot labels, ``cossim.detach() * loss``). One difference,
stated: their one-hot clamps an ignore label (255) to the last class; here ignored pixels carry no loss, as in
their cross-entropy (``ignore_index=255``). Norms Linf / L2; defaults as ``pixel-pgd``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import register_attack
from .base import SegmentationAttack, pixel_cross_entropy


@register_attack("cospgd")
class CosPGD(SegmentationAttack):
    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor, step: int) -> torch.Tensor:
        scored = masks != self.ignore_index
        probs = logits.detach().float().softmax(dim=1)
        target = F.one_hot(torch.where(scored, masks, 0), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        cos = F.cosine_similarity(probs, target, dim=1) * scored
        ce = pixel_cross_entropy(logits, masks, self.ignore_index)
        return (cos * ce).sum() / scored.sum().clamp_min(1)
