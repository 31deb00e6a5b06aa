"""What every segmentation attack shares: per-pixel labels, a model checked to return per-pixel logits, and the
projected-gradient loop. Each attack file holds only its per-pixel loss.

A segmentation attack is called as every attack here, ``attack(model, images, masks) -> adversarial images``,
with ``masks`` of shape (B, H, W) holding class indices or ``ignore_index`` (255: never scored, never attacked),
and a model returning logits (B, C, H, W) at the image's resolution (a Segmenter, or one wrapped in
``models.sliding.SlidingWindow`` for images larger than its window). The base class (``attacks.base.Attack``)
owns eval mode, frozen parameters, the device, seeding, ``space`` / ``clip`` / ``labels`` (``"predicted"`` =
the clean prediction map) and the final projection onto the budget, exactly as for classification.

The loop (Madry et al.'s PGD, as ``attacks/pgd.py``): a uniform random start in the Linf box / the L2 ball, then
``steps`` ascent steps on the attack's loss, signed (Linf) or L2-normalised per image (L2), each projected back
onto the eps ball and the valid box. ``alpha`` defaults to ``2.5 * eps / steps`` for every segmentation attack, so
PGD, SegPGD and CosPGD compared at equal budget and steps also take equal steps.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..base import GradientAttack, ModelOutputError
from ..pgd import projected_step, random_start

IGNORE_INDEX = 255


class PixelLogitsGuard(nn.Module):
    """Checks (shape only, no host sync) that the model returns logits (B, C, H, W) at the input's size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0] \
                or out.shape[-2:] != x.shape[-2:] or out.shape[1] < 2 or not out.is_floating_point():
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(f"a segmentation attack needs per-pixel logits of shape (B, num_classes, H, W) = "
                                   f"({x.shape[0]}, C, {x.shape[-2]}, {x.shape[-1]}); the model returned {got} "
                                   "(a classifier? a model larger images must reach through SlidingWindow?)")
        return out


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel cross-entropy (B, H, W) in float32, 0 on ignored pixels."""
    return F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="none")


class SegmentationAttack(GradientAttack):
    """Projected gradient ascent on a per-pixel loss; subclasses define :meth:`pixel_loss`."""

    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    guard_class: ClassVar[type[nn.Module]] = PixelLogitsGuard
    #: attacks a model's per-pixel output; classification evaluations and tests leave these out
    task: ClassVar[str] = "segmentation"

    def __init__(self, eps: float | None = None, norm: str = "Linf", steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, ignore_index: int = IGNORE_INDEX, space: str = "pixel",
                 clip: bool = True, labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        steps = self._positive_int("steps", steps)
        alpha = 2.5 * self.eps / steps if alpha is None else self._positive_float("alpha", alpha, allow_zero=True)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index of attack '{self.name}' must be an int, got {ignore_index!r}")
        self._record(steps=steps, alpha=alpha, random_start=bool(random_start), ignore_index=ignore_index)

    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor, step: int) -> torch.Tensor:
        """The scalar to ascend at ``step`` (0-based) given logits (B, C, H, W) and masks (B, H, W)."""
        raise NotImplementedError

    def _validate_inputs(self, images: torch.Tensor, labels: torch.Tensor):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
            raise TypeError("images must be a floating-point tensor in [0, 1] of shape (B, C, H, W)")
        masks = torch.as_tensor(labels)
        if masks.is_floating_point():
            raise TypeError(f"masks for attack '{self.name}' must hold integer class indices")
        if masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"attack '{self.name}' needs masks of shape (B, H, W) = ({images.shape[0]}, "
                             f"{images.shape[-2]}, {images.shape[-1]}), got {tuple(masks.shape)}")
        if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise ValueError("images must lie in [0, 1] (models normalize inside; eps is in pixel units)")
        x = images.detach()
        return (x if x.dtype in (torch.float32, torch.float64) else x.float()), masks.detach().long()

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        return random_start(x, self.eps, self.norm, self.box) if self.random_start else x.clone()

    def _step(self, x: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return projected_step(x, adv, grad, self.alpha, self.eps, self.norm, self.box)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = self._start(x)
        for step in range(self.steps):
            adv_in = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                with self.autocast(x.device):
                    logits = model(adv_in)
                loss = self.pixel_loss(logits, y, step)
                grad = torch.autograd.grad(loss, adv_in, allow_unused=True)[0] if loss.requires_grad else None
            adv = self._step(x, adv, torch.zeros_like(x) if grad is None else grad.detach())
        return adv
