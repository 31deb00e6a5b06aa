"""Uniform noise: a non-adversarial baseline row (RPC-Attention paper, "Noise").

Each input value gets independent noise uniform in [-eps, eps], then the image is clamped into the valid
box (``clip=True``) or left as is (``clip=False``). The paper's row is cleverhans' ``noise(x)``: eps 0.3 in
normalized units, no clipping, whatever the budget of the other rows.
Norm: Linf. No model queries at all (the model is only used to find the device).
"""
from __future__ import annotations

import torch

from .base import Attack, register_attack


@register_attack("noise")
class UniformNoise(Attack):
    gradient_based = False
    norms = ("Linf",)

    def __init__(self, eps: float | None = None, norm: str = "Linf", space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)

    def perturb(self, model, x, y):
        return self.box.clamp(x + torch.empty_like(x).uniform_(-self.eps, self.eps))
