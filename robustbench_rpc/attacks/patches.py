"""Patch threat models: a ViT's patch grid, pixel masks of chosen patches, the patch budget check, and an
attention probe that reads each block's attention probabilities during an ordinary forward.

The patch budget is checked from the images alone, never from the attack's bookkeeping: a patch attack
declares ``patch_budget = PatchBudget(patch_size, max_patches, boxes)``; ``patch_problems`` counts, per
sample, the grid cells (``patch_size`` squares aligned on the model's patch grid) in which any value changed
(at most ``max_patches``), or, with fixed ``boxes`` (top, left, height, width), refuses any change outside
them. ``attacks.evaluate.check_threat_model`` runs it for every attack that declares one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class PatchBudget:
    """What a patch attack may change: at most ``max_patches`` grid cells of ``patch_size`` pixels, or (with
    ``boxes``) only the pixels inside those (top, left, height, width) boxes."""

    patch_size: int
    max_patches: int
    boxes: tuple[tuple[int, int, int, int], ...] | None = None


def vit_geometry(model: nn.Module) -> tuple[int, int]:
    """(patch size in pixels, number of prefix tokens such as CLS) of the ViT at or under ``model``: its timm
    ``PatchEmbed``'s ``patch_size`` and the ViT's ``num_prefix_tokens`` (0 when it has none)."""
    size, prefix = None, 0
    for module in model.modules():
        if size is None and hasattr(module, "patch_size") and hasattr(module, "proj"):
            ps = module.patch_size
            size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        if hasattr(module, "num_prefix_tokens") and hasattr(module, "blocks"):
            prefix = int(module.num_prefix_tokens)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no patch embedding (a module with patch_size and proj): "
                         "give the attack patch_size=...")
    return size, prefix


def grid_shape(x: torch.Tensor, patch_size: int) -> tuple[int, int]:
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"images of {h}x{w} pixels do not tile into patches of {patch_size} pixels")
    return h // patch_size, w // patch_size


def patch_mask(x: torch.Tensor, patch_size: int, index: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float mask, 1 on the patches ``index`` (B, k) (row-major grid indices) of each sample."""
    rows, cols = grid_shape(x, patch_size)
    cells = torch.zeros(x.shape[0], rows * cols, device=x.device, dtype=x.dtype)
    cells.scatter_(1, index.to(x.device).long(), 1.0)
    cells = cells.reshape(x.shape[0], 1, rows, cols)
    return cells.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def box_mask(x: torch.Tensor, boxes) -> torch.Tensor:
    """(1, 1, H, W) float mask, 1 inside the (top, left, height, width) boxes."""
    mask = torch.zeros(1, 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
    for top, left, height, width in boxes:
        mask[..., top:top + height, left:left + width] = 1.0
    return mask


def changed(x: torch.Tensor, x_adv: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """(B, 1, H, W) bool: a value of the pixel moved by more than ``tol`` (0: any change at all)."""
    return ((x_adv - x).abs() > tol).any(dim=1, keepdim=True)


def changed_cells(x: torch.Tensor, x_adv: torch.Tensor, patch_size: int, tol: float = 0.0) -> torch.Tensor:
    """Per sample, how many grid cells hold any changed value."""
    diff = changed(x, x_adv, tol).float()
    cells = F.max_pool2d(diff, kernel_size=patch_size, stride=patch_size)
    return cells.flatten(1).sum(dim=1).long()


class FirstFooling:
    """Per sample, the first image of an optimization path the model misclassified (``see`` each iterate with
    the logits the attack computed on it anyway); ``images(last)`` returns those, and ``last`` for the samples
    never fooled. What APGD and AutoAttack return; the patch attacks' references return their last iterate."""

    def __init__(self, x: torch.Tensor):
        self.kept = torch.zeros_like(x)
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def see(self, images: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        new = (logits.detach().argmax(dim=1) != y).to(self.found.device) & ~self.found
        if new.any():
            self.kept[new] = images.detach()[new].to(self.kept.dtype)
            self.found |= new

    def images(self, last: torch.Tensor) -> torch.Tensor:
        return torch.where(self.found.view(-1, *([1] * (last.dim() - 1))), self.kept, last)


def patch_problems(x: torch.Tensor, x_adv: torch.Tensor, budget: PatchBudget, tol: float = 0.0) -> list[str]:
    """What breaks the patch budget (empty when it holds), measured from the images. ``tol``: a change up to it
    is rounding, not a change (an attack working in normalized units returns every pixel through the round
    trip ``z * std + mean``)."""
    total = x.shape[0]
    if budget.boxes is not None:
        outside = (changed(x, x_adv, tol) & (box_mask(x, budget.boxes) == 0)).flatten(1).any(dim=1)
        if outside.any():
            return [f"changed pixels outside its patches {list(budget.boxes)} for {int(outside.sum())} of "
                    f"{total} samples"]
        return []
    try:
        counts = changed_cells(x, x_adv, budget.patch_size, tol)
    except ValueError as e:
        return [str(e)]
    over = counts > budget.max_patches
    if over.any():
        return [f"changed {int(counts.max())} patches of {budget.patch_size} pixels where {budget.max_patches} "
                f"are allowed, for {int(over.sum())} of {total} samples"]
    return []


class AttentionProbe:
    """Each block's attention probabilities (B, heads, N, N), recorded during the model's own forward.

    Symmetric-family modules (SymViT, RPC; they expose ``keys_values``) attend with softmax(K K^T * scale);
    for RPC the keys are PAP's final iterate (``pursue`` is wrapped to see it). timm's softmax ``Attention``
    (``qkv``, ``q_norm``, ``k_norm``) gets softmax(Q K^T * scale) from its input. The probabilities are
    computed explicitly from those tensors, so they stay in the autograd graph of the input.
    """

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if self._kind(m) is not None]
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no attention module whose probabilities can be read "
                             "(symmetric/RPC attention or timm's Attention)")
        self.maps: list[torch.Tensor | None] = [None] * len(self.modules)

    @staticmethod
    def _kind(m: nn.Module) -> str | None:
        if hasattr(m, "keys_values") and hasattr(m, "scale"):
            return "pursue" if hasattr(m, "pursue") else "symmetric"
        if all(hasattr(m, a) for a in ("qkv", "num_heads", "scale")) and not hasattr(m, "keys_values"):
            return "qkv"
        return None

    def _symmetric_map(self, i: int, module: nn.Module, k: torch.Tensor) -> None:
        self.maps[i] = ((k * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    @contextlib.contextmanager
    def recording(self) -> Iterator["AttentionProbe"]:
        undo = []
        for i, m in enumerate(self.modules):
            kind = self._kind(m)
            if kind == "pursue":
                original = m.pursue

                def pursue(k, attend, _i=i, _m=m, _orig=original):
                    def seen(k2):
                        self._symmetric_map(_i, _m, k2)  # the last call is PAP's final iterate
                        return attend(k2)
                    return _orig(k, seen)
                m.pursue = pursue
                undo.append(lambda _m=m: _m.__dict__.pop("pursue", None))
            elif kind == "symmetric":
                original = m.mix

                def mix(k, v, _i=i, _m=m, _orig=original):
                    self._symmetric_map(_i, _m, k)
                    return _orig(k, v)
                m.mix = mix
                undo.append(lambda _m=m: _m.__dict__.pop("mix", None))
            else:
                def hook(mod, args, _i=i):
                    x = args[0]
                    b, n, c = x.shape
                    qkv = mod.qkv(x).reshape(b, n, 3, mod.num_heads, c // mod.num_heads).permute(2, 0, 3, 1, 4)
                    q, k = qkv[0], qkv[1]
                    q = mod.q_norm(q) if hasattr(mod, "q_norm") else q
                    k = mod.k_norm(k) if hasattr(mod, "k_norm") else k
                    self.maps[_i] = ((q * mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                undo.append(m.register_forward_pre_hook(hook).remove)
        try:
            yield self
        finally:
            for u in undo:
                u()
