"""Patch-Fool: replace one (or k) of a ViT's patches by an optimized patch, with an attention-aware loss.

Source: Fu, Zhang, Wu, Chen, Lin, "Patch-Fool: Are Vision Transformers Always Robust Against Adversarial
Perturbations?", ICLR 2022 (arXiv:2203.08392), and its code GATECH-EIC/Patch-Fool (``main.py``), whose
defaults these are. Per sample:

* patch selection (``select="attention"``, the reference's ``Attn``): the patches receiving the most attention
  in block ``select_layer`` (averaged over heads and queries; prefix tokens such as CLS dropped);
  ``select="random"`` draws them from the seeded RNG;
* the chosen patches are replaced by a free patch (values anywhere in the valid box, initialised uniformly at
  random), optimized by Adam (lr 0.05 in pixel units: the reference's 0.22 on ImageNet-normalized inputs,
  std ~0.226), StepLR (every 10 steps x 0.95), 250 steps, ascending the batch-mean cross-entropy;
* ``loss="attention"`` (the reference's default ``Attention`` mode) adds, for blocks 1 .. depth//2 - 1, the
  gradient of the attention loss: the mean over queries of log(head-averaged attention to the first chosen
  patch), weighted by 0.002; where that gradient points against the cross-entropy's (negative cosine) its
  component along the cross-entropy gradient is removed first (PCGrad, Yu et al. 2020, as the paper's eq. 5:
  g_a - (g_a . g_ce / ||g_ce||^2) g_ce; the reference code divides by ||g_ce|| once). ``loss="ce"``: plain CE.
* ``eps`` (the reference's ``mild_l_inf``; None by default): the patch stays within eps (Linf) of the clean
  patch instead of replacing it.

Returned images (``return_best=True``): per sample, the first iterate the model misclassified (each step's
forward already tells, and one forward more looks at the last iterate), else the last iterate. The reference
evaluates its last iterate only (``return_best=False``), which loses samples the attack had broken on its way:
the silent successes of Pintor et al.'s indicators, found on the shipped micro models (1 to 3 of 7-29 unbroken
samples per evaluation at 50 steps). Budget: only the chosen patches change
(``patch_budget``: at most ``n_patches`` cells of the model's patch grid, checked on the returned images).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .base import GradientAttack, register_attack
from .patches import AttentionProbe, FirstFooling, PatchBudget, grid_shape, patch_mask, vit_geometry

SELECTS = ("attention", "random")
LOSSES = ("attention", "ce")


def pcgrad(g_attn: torch.Tensor, g_ce: torch.Tensor) -> torch.Tensor:
    """Per sample: remove g_attn's component along g_ce where the two point apart (negative cosine)."""
    a, c = g_attn.flatten(1), g_ce.flatten(1)
    dot = (a * c).sum(dim=1)
    conflict = (dot < 0)[:, None]
    projected = a - (dot / c.square().sum(dim=1).clamp_min(1e-30))[:, None] * c
    return torch.where(conflict, projected, a).reshape(g_attn.shape)


@register_attack("patch_fool")
class PatchFool(GradientAttack):
    norms = ("Linf",)
    eps_required = False

    def __init__(self, eps: float | None = None, norm: str = "Linf", n_patches: int = 1, select: str = "attention",
                 select_layer: int | None = None, loss: str = "attention", attention_weight: float = 0.002,
                 steps: int = 250, lr: float = 0.05, lr_step: int = 10, lr_gamma: float = 0.95,
                 patch_size: int | None = None, return_best: bool = True, space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        if select not in SELECTS:
            raise ValueError(f"select of attack 'patch_fool' must be one of {', '.join(SELECTS)}, got {select!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss of attack 'patch_fool' must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not isinstance(return_best, bool):
            raise ValueError(f"return_best of attack 'patch_fool' must be True or False, got {return_best!r}")
        self._record(n_patches=self._positive_int("n_patches", n_patches), select=select,
                     select_layer=self._positive_int("select_layer", select_layer, allow_none=True, minimum=0),
                     loss=loss, attention_weight=self._positive_float("attention_weight", attention_weight,
                                                                       allow_zero=True),
                     steps=self._positive_int("steps", steps), lr=self._positive_float("lr", lr),
                     lr_step=self._positive_int("lr_step", lr_step),
                     lr_gamma=self._positive_float("lr_gamma", lr_gamma),
                     patch_size=self._positive_int("patch_size", patch_size, allow_none=True),
                     return_best=return_best)
        self.patch_budget = PatchBudget(patch_size or 0, self.n_patches)

    def _choose(self, model, probe, x, patch_size, prefix, y):
        rows, cols = grid_shape(x, patch_size)
        if self.n_patches > rows * cols:
            raise ValueError(f"n_patches={self.n_patches} of attack 'patch_fool' exceeds the {rows * cols} patches")
        if self.select == "random":
            return torch.rand(x.shape[0], rows * cols, device=x.device).argsort(dim=1)[:, :self.n_patches]
        with torch.no_grad(), probe.recording():
            model(x)
        layer = self.select_layer if self.select_layer is not None else len(probe.modules) // 3
        if layer >= len(probe.modules):
            raise ValueError(f"select_layer={layer} of attack 'patch_fool': the model has {len(probe.modules)} "
                             "attention blocks")
        received = probe.maps[layer].mean(dim=1).mean(dim=-2)[:, prefix:]  # (B, patches)
        return received.argsort(dim=1, descending=True)[:, :self.n_patches]

    def perturb(self, model, x, y):
        patch_size, prefix = vit_geometry(model) if self.patch_size is None else (self.patch_size, None)
        probe = AttentionProbe(model) if (self.select == "attention" or self.loss == "attention") else None
        if prefix is None:
            prefix = vit_geometry(model)[1] if probe is not None else 0
        self.patch_budget = PatchBudget(patch_size, self.n_patches)
        index = self._choose(model, probe, x, patch_size, prefix, y)
        mask = patch_mask(x, patch_size, index)
        if self.eps is None:
            delta = self.box.clamp(torch.rand_like(x))
        else:
            delta = self.box.clamp(x + (2 * torch.rand_like(x) - 1) * self.eps)
        delta.requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)
        background = x * (1 - mask)
        target = (index[:, 0] + prefix).long()
        attack_layers = range(1, len(probe.modules) // 2) if (probe is not None and self.loss == "attention") else ()
        kept = FirstFooling(x) if self.return_best else None
        for _ in range(self.steps):
            with torch.enable_grad(), (probe.recording() if attack_layers else contextlib.nullcontext()):
                attacked = background + delta * mask
                logits = model(attacked)
                if kept is not None:
                    kept.see(attacked, logits, y)
                ce = F.cross_entropy(logits.float(), y)
                grad = g_ce = torch.autograd.grad(ce, delta, retain_graph=bool(attack_layers))[0]
                for layer in attack_layers:
                    attn = probe.maps[layer].mean(dim=1)  # (B, N, N), averaged over heads
                    to_patch = attn.gather(2, target[:, None, None].expand(-1, attn.shape[1], 1)).squeeze(2)
                    attn_loss = to_patch.clamp_min(1e-30).log().mean()
                    g = torch.autograd.grad(attn_loss, delta, retain_graph=True)[0]
                    grad = grad + pcgrad(g, g_ce) * self.attention_weight
            opt.zero_grad()
            delta.grad = -grad  # ascend
            opt.step()
            sched.step()
            with torch.no_grad():
                if self.eps is not None:
                    delta.copy_(torch.minimum(torch.maximum(delta, x - self.eps), x + self.eps))
                delta.copy_(self.box.clamp(delta))
        final = (background + delta.detach() * mask).detach()
        if kept is None:
            return final
        with torch.no_grad():
            kept.see(final, model(final), y)
        return kept.images(final)
