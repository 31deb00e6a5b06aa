"""FAB: Fast Adaptive Boundary attack (Linf, L2, L1), minimum-norm, standalone.

Source: Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack",
ICML 2020 (arXiv:1907.02044). Runs the reference implementation ``pyautoattack.fab_pt.FABAttack_PT``, the one
AutoAttack runs as its fab / fab-t components, here on its own and also without a budget.
Each step projects onto the linearized decision boundary of the closest class (in the chosen norm), biased
back towards the clean image (alpha_max, beta) with an overshoot eta; random restarts start within
``restart_eps`` of the image. Defaults as AutoAttack's fab: n_iter=100, n_restarts=1, alpha_max=0.1, eta=1.05,
beta=0.9; ``targeted=True`` is fab-t (``n_target_classes`` = 9, capped by the classes). restart_eps defaults to
the library's (Linf 0.3, L2 1.0, L1 5.0) when eps is None, else eps (AutoAttack's setting).

eps: None (default) runs the library's minimum-norm search (``attack_single_run``, each restart and target
class) and keeps each sample's smallest adversarial; a sample never broken comes back unchanged. With a
number it runs the library's ``perturb`` exactly as AutoAttack does: an adversarial larger than eps does not
count and that sample comes back unchanged.
"""
from __future__ import annotations

import torch

from .base import ConnectedInput, GradientAttack, register_attack
from .budget import lp_norms
from .square import library_seed


@register_attack("fab")
class FAB(GradientAttack):
    norms = ("Linf", "L2", "L1")
    eps_required = False
    minimum_norm = True  # its stored rows hold each sample's minimal norm (none for a sample it never broke)

    def __init__(self, eps: float | None = None, norm: str = "Linf", n_iter: int = 100, n_restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, targeted: bool = False,
                 n_target_classes: int = 9, restart_eps: float | None = None, space: str = "pixel",
                 clip: bool = True, labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._require_pixel_box()
        if not isinstance(targeted, bool):
            raise ValueError(f"targeted of attack 'fab' must be True or False, got {targeted!r}")
        self._record(n_iter=self._positive_int("n_iter", n_iter),
                     n_restarts=self._positive_int("n_restarts", n_restarts),
                     alpha_max=self._positive_float("alpha_max", alpha_max), eta=self._positive_float("eta", eta),
                     beta=self._positive_float("beta", beta), targeted=targeted,
                     n_target_classes=self._positive_int("n_target_classes", n_target_classes),
                     restart_eps=None if restart_eps is None else self._positive_float("restart_eps", restart_eps))

    def _library(self, model, n_classes: int, device):
        from pyautoattack.fab_pt import FABAttack_PT

        restart_eps = self.restart_eps if self.restart_eps is not None else self.eps
        return FABAttack_PT(ConnectedInput(model), norm=self.norm, n_restarts=self.n_restarts, n_iter=self.n_iter,
                            eps=restart_eps, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                            seed=library_seed(), targeted=self.targeted, device=device,
                            n_target_classes=max(1, min(self.n_target_classes, n_classes - 1)))

    def perturb(self, model, x, y):
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        atk = self._library(model, n_classes, x.device)
        if self.eps is not None:
            return x.clone() if self.eps == 0 else atk.perturb(x, y).to(x.dtype)
        best, best_norm = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
        torch.manual_seed(atk.seed)  # as the library's perturb: its restarts draw from the global RNG
        targets = range(2, atk.n_target_classes + 2) if self.targeted else [None]
        for target in targets:
            atk.target_class = target
            for restart in range(self.n_restarts):
                with torch.no_grad():
                    adv = atk.attack_single_run(x, y, use_rand_start=restart > 0,
                                                is_targeted=target is not None).to(x.dtype)
                    fooled = model(adv).argmax(dim=1) != y
                norm = torch.where(fooled, lp_norms(adv - x, self.norm).float(), float("inf"))
                better = norm < best_norm
                best = torch.where(better.reshape(-1, *([1] * (x.dim() - 1))), adv, best)
                best_norm = torch.where(better, norm, best_norm)
        return best
