"""Models take images in [0, 1] and normalize in their first layer (RobustBench's convention).

Attacks and evaluations therefore always speak pixel space: eps=4/255 means 4 grey levels, whatever the
model's mean/std. The mean/std come from the model's own data config, never retyped by hand.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``model(normalize(x))`` for x in [0, 1]; exposes the wrapped model as ``.model``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 data_config: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.data_config = dict(data_config or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        return self.model((x - mean) / std)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or self.data_config.get("num_classes") or 0)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config.get("input_size", (3, 224, 224)))
