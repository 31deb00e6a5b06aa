"""Adversarial patch: a square patch of given size pasted at given positions, optimized to be misclassified.

Source: Brown, Mane, Roy, Abadi & Gilmer, "Adversarial Patch", arXiv:1712.09665 (2017). As there, the patch
is universal by default (``universal=True``: one patch for every image of the call, i.e. of one evaluation
unit, maximizing the mean loss over them); ``universal=False`` optimizes one patch per image. Brown et al.
also randomize location, rotation and scale (expectation over transformation); here the threat model is fixed
positions, so the patch is pasted at every position of ``positions`` at once (top-left pixel of each copy) and
no rotation or scaling is applied. Untargeted: Adam ascends the cross-entropy of the true label.
Returned (``return_best=True``): the universal patch that fooled the most images of the call among the
iterates (each step's forward already tells; one forward more looks at the last; ties go to the later), and
with ``universal=False`` each image's first fooling patch; ``return_best=False`` returns the last iterate.
Defaults: size=8 pixels, positions=[[0, 0]], steps=100, lr=0.05 (pixel units), patch initialised uniformly at
random in the valid box. Budget: only the pixels inside the pasted copies change (``patch_budget`` boxes,
checked on the returned images). ``eps`` (None by default: the patch's pixels are free) additionally bounds the
pasted pixels within eps (Linf) of the clean ones, through the base class's projection; eps 0 changes nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GradientAttack, register_attack
from .patches import FirstFooling, PatchBudget, box_mask


@register_attack("adversarial_patch")
class AdversarialPatch(GradientAttack):
    norms = ("Linf",)
    eps_required = False

    def __init__(self, eps: float | None = None, norm: str = "Linf", size: int = 8, positions=((0, 0),),
                 universal: bool = True, steps: int = 100, lr: float = 0.05, return_best: bool = True,
                 space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        size = self._positive_int("size", size)
        try:
            spots = tuple((int(r), int(c)) for r, c in positions)
        except (TypeError, ValueError):
            raise ValueError(f"positions of attack 'adversarial_patch' must be a list of [row, col] pixel "
                             f"positions, got {positions!r}") from None
        if not spots or any(r < 0 or c < 0 for r, c in spots):
            raise ValueError(f"positions of attack 'adversarial_patch' must be non-negative [row, col] pairs, "
                             f"got {positions!r}")
        if not isinstance(universal, bool):
            raise ValueError(f"universal of attack 'adversarial_patch' must be True or False, got {universal!r}")
        if not isinstance(return_best, bool):
            raise ValueError(f"return_best of attack 'adversarial_patch' must be True or False, got {return_best!r}")
        self._record(size=size, positions=[list(p) for p in spots], universal=universal,
                     steps=self._positive_int("steps", steps), lr=self._positive_float("lr", lr),
                     return_best=return_best)
        self.patch_budget = PatchBudget(size, len(spots), tuple((r, c, size, size) for r, c in spots))

    def _paste(self, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        out = x
        for r, c in self.positions:
            canvas = F.pad(patch, (c, x.shape[-1] - c - self.size, r, x.shape[-2] - r - self.size))
            one = box_mask(x, [(r, c, self.size, self.size)])
            out = out * (1 - one) + canvas * one
        return out

    def perturb(self, model, x, y):
        h, w = x.shape[-2:]
        if any(r + self.size > h or c + self.size > w for r, c in self.positions):
            raise ValueError(f"attack 'adversarial_patch': a {self.size}-pixel patch at {self.positions} does not fit "
                             f"in {h}x{w} images")
        shape = (1 if self.universal else x.shape[0], x.shape[1], self.size, self.size)
        lo = self.box.lo if self.box.bounded else 0.0
        hi = self.box.hi if self.box.bounded else 1.0
        patch = (lo + torch.rand(shape, device=x.device, dtype=x.dtype) * (hi - lo))
        patch = self.box.clamp(patch.expand(shape)).contiguous()
        patch.requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        full = (x.shape[0], *shape[1:])
        kept = FirstFooling(x) if (self.return_best and not self.universal) else None
        best, best_fooled = None, -1
        for step in range(self.steps + int(self.return_best)):  # a last pass only looks at the last iterate
            look = step == self.steps
            with (torch.no_grad() if look else torch.enable_grad()):
                pasted = self._paste(x, patch.expand(full))
                logits = model(pasted)
                if self.return_best:
                    if kept is not None:
                        kept.see(pasted, logits, y)
                    else:
                        fooled = int((logits.detach().argmax(dim=1) != y).sum())
                        if fooled >= best_fooled:
                            best, best_fooled = patch.detach().clone(), fooled
                if look:
                    break
                loss = F.cross_entropy(logits.float(), y)
                (grad,) = torch.autograd.grad(loss, patch)
            opt.zero_grad()
            patch.grad = -grad  # ascend
            opt.step()
            with torch.no_grad():
                patch.copy_(self.box.clamp(patch))
        last = self._paste(x, patch.detach().expand(full))
        if kept is not None:
            return kept.images(last)
        return self._paste(x, best.expand(full)) if best is not None else last
