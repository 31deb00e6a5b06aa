"""Standard training: cross-entropy (with the recipe's label smoothing) on the clean batch."""
from __future__ import annotations

import torch.nn.functional as F

from . import Objective, register_objective


@register_objective("standard")
class Standard(Objective):
    adversarial = False

    def loss(self, model, bare, x, y, epoch):
        with self.autocast():
            logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits
