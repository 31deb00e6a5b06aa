"""AutoAttack: the parameter-free ensemble APGD-CE, APGD-T, FAB-T, Square (standard version).

Source: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690). Components come from the reference
implementation ``pyautoattack`` by default (``impl="pyautoattack"``) or from torchattacks
(``impl="torchattacks"``). The cascade is the reference one: each component attacks only the points
still classified correctly, and a point's adversarial image is the first one that fools the model.
Norms: Linf, L2.

Versions (settings equal to the reference ``AutoAttack._set_version`` for Linf/L2):

* ``standard``: apgd-ce (1 restart), apgd-t (1 restart per target), fab-t, square (5000 queries);
* ``plus``: apgd-ce, apgd-dlr (5 restarts), fab (5 restarts), square, apgd-t, fab-t;
* ``rand``: apgd-ce, apgd-dlr with EOT over 20 samples (for randomized defenses);
* ``custom``: ``attacks_to_run`` (any of apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square) with the
  standard settings. ``n_iter`` (APGD/FAB iterations, default 100), ``n_queries`` (Square),
  ``n_restarts`` and ``eot_iter`` override any version, e.g. a fast reduced AutoAttack on CPU:
  ``get_attack("autoattack", eps=8/255, version="custom", attacks_to_run=["apgd-ce", "square"],
  n_iter=10, n_queries=100)``.

Number of classes C (read from the model's logits): targeted attacks use ``min(9, C - 1)`` target
classes (or ``n_target_classes`` if smaller). The DLR losses need C >= 4 (targeted DLR uses the 4th
largest logit; untargeted the 3rd). For C < 4, ``on_few_classes="fallback"`` (default) replaces
apgd-dlr and apgd-t by apgd-ce (listed once) and emits a ``FewClassesWarning``;
``on_few_classes="error"`` raises ``ValueError`` instead.
"""
from __future__ import annotations

import warnings

import torch

from .base import ConnectedInput, GradientAttack, register_attack
from .budget import project
from .square import IMPLS, library_seed

COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand", "custom")
DLR_BASED = ("apgd-dlr", "apgd-t")
MIN_CLASSES_DLR = 4

_VERSION_SETTINGS = {
    # attacks, apgd restarts, fab restarts, eot_iter
    "standard": (("apgd-ce", "apgd-t", "fab-t", "square"), 1, 1, 1),
    "plus": (("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"), 5, 5, 1),
    "rand": (("apgd-ce", "apgd-dlr"), 1, 1, 20),
    "custom": ((), 1, 1, 1),
}


class FewClassesWarning(UserWarning):
    """AutoAttack replaced DLR-based components because the model has fewer than 4 classes."""


@register_attack("autoattack")
class AutoAttack(GradientAttack):
    norms = ("Linf", "L2")

    def __init__(self, eps: float | None = None, norm: str = "Linf", version: str = "standard",
                 attacks_to_run: list[str] | None = None, impl: str = "pyautoattack", n_iter: int = 100,
                 n_queries: int = 5000, n_restarts: int | None = None, eot_iter: int | None = None,
                 n_target_classes: int = 9, on_few_classes: str = "fallback", space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        self._require_pixel_box()
        if version not in VERSIONS:
            raise ValueError(f"version of attack 'autoattack' must be one of {', '.join(VERSIONS)}, got {version!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl of attack 'autoattack' must be one of {', '.join(IMPLS)}, got {impl!r}")
        if on_few_classes not in ("fallback", "error"):
            raise ValueError(f"on_few_classes of attack 'autoattack' must be 'fallback' or 'error', "
                             f"got {on_few_classes!r}")
        if version == "custom":
            if not attacks_to_run:
                raise ValueError("attack 'autoattack' with version='custom' needs attacks_to_run "
                                 f"(a list of {', '.join(COMPONENTS)})")
            bad = [a for a in attacks_to_run if a not in COMPONENTS]
            if bad:
                raise ValueError(f"attacks_to_run of attack 'autoattack' has unknown components {bad}; "
                                 f"known: {', '.join(COMPONENTS)}")
            attacks = list(dict.fromkeys(attacks_to_run))
        elif attacks_to_run is not None:
            raise ValueError(f"attacks_to_run is only used with version='custom' (got version={version!r})")
        else:
            attacks = list(_VERSION_SETTINGS[version][0])
        _, apgd_restarts, fab_restarts, eot = _VERSION_SETTINGS[version]
        if n_restarts is not None:
            apgd_restarts = fab_restarts = self._positive_int("n_restarts", n_restarts)
        eot = eot if eot_iter is None else self._positive_int("eot_iter", eot_iter)
        self.attacks = attacks  # the components this version runs (before class-count adaptation)
        self._record(version=version, attacks_to_run=list(attacks_to_run) if attacks_to_run else None, impl=impl,
                     n_iter=self._positive_int("n_iter", n_iter), n_queries=self._positive_int("n_queries", n_queries),
                     n_restarts=n_restarts, eot_iter=eot_iter,
                     n_target_classes=self._positive_int("n_target_classes", n_target_classes),
                     on_few_classes=on_few_classes)
        self._apgd_restarts, self._fab_restarts, self._eot = apgd_restarts, fab_restarts, eot
        self.last_plan: dict | None = None  # set by each call: n_classes, attacks run, n_target_classes

    # -- class-count adaptation ------------------------------------------------------------------------
    def plan(self, n_classes: int) -> tuple[list[str], int]:
        """(components to run, number of target classes) for a model with ``n_classes`` classes."""
        n_targets = max(1, min(self.n_target_classes, n_classes - 1))
        attacks = list(self.attacks)
        if n_classes < MIN_CLASSES_DLR and any(a in DLR_BASED for a in attacks):
            used = [a for a in attacks if a in DLR_BASED]
            if self.on_few_classes == "error":
                raise ValueError(
                    f"AutoAttack components {used} use the DLR loss, which needs at least {MIN_CLASSES_DLR} "
                    f"classes; the model has {n_classes}. Use on_few_classes='fallback' (CE variants) or "
                    f"version='custom' without DLR-based attacks.")
            attacks = list(dict.fromkeys("apgd-ce" if a in DLR_BASED else a for a in attacks))
            warnings.warn(f"AutoAttack: the model has {n_classes} classes (< {MIN_CLASSES_DLR}); replaced DLR-based "
                          f"{used} by apgd-ce, running {attacks}", FewClassesWarning, stacklevel=3)
        return attacks, n_targets

    # -- components ------------------------------------------------------------------------------------
    def _component(self, name: str, model, n_classes: int, n_targets: int, seed: int, device):
        common = dict(norm=self.norm, eps=self.eps)
        model = ConnectedInput(model)  # a model that cuts the input's graph gets zero gradients, not a crash
        if self.impl == "pyautoattack":
            from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
            from pyautoattack.fab_pt import FABAttack_PT
            from pyautoattack.square import SquareAttack

            if name in ("apgd-ce", "apgd-dlr"):
                return APGDAttack(model, n_iter=self.n_iter, n_restarts=self._apgd_restarts, seed=seed,
                                  loss=name[5:], eot_iter=self._eot, rho=0.75, device=device, **common).perturb
            if name == "apgd-t":
                return APGDAttack_targeted(model, n_iter=self.n_iter, n_restarts=1, seed=seed, eot_iter=self._eot,
                                           rho=0.75, n_target_classes=n_targets, device=device, **common).perturb
            if name in ("fab", "fab-t"):
                return FABAttack_PT(model, n_restarts=1 if name == "fab-t" else self._fab_restarts,
                                    n_iter=self.n_iter, seed=seed, targeted=name == "fab-t", device=device,
                                    n_target_classes=n_targets, **common).perturb
            return SquareAttack(model, n_queries=self.n_queries, p_init=0.8, n_restarts=1, seed=seed,
                                resc_schedule=False, device=device, **common).perturb
        import torchattacks

        if name in ("apgd-ce", "apgd-dlr"):
            atk = torchattacks.APGD(model, steps=self.n_iter, n_restarts=self._apgd_restarts, seed=seed,
                                    loss=name[5:], eot_iter=self._eot, rho=0.75, **common)
        elif name == "apgd-t":
            atk = torchattacks.APGDT(model, steps=self.n_iter, n_restarts=1, seed=seed, eot_iter=self._eot,
                                     rho=0.75, n_classes=n_classes, **common)
            atk.n_target_classes = n_targets
        elif name in ("fab", "fab-t"):
            atk = torchattacks.FAB(model, steps=self.n_iter, n_restarts=1 if name == "fab-t" else self._fab_restarts,
                                   seed=seed, multi_targeted=name == "fab-t", n_classes=n_classes, **common)
            atk.n_target_classes = n_targets
        else:
            atk = torchattacks.Square(model, n_queries=self.n_queries, n_restarts=1, p_init=0.8,
                                      resc_schedule=False, seed=seed, **common)
        return atk

    def perturb(self, model, x, y):
        with torch.no_grad():
            logits = model(x)
        n_classes = logits.shape[1]
        attacks, n_targets = self.plan(n_classes)
        self.last_plan = {"n_classes": n_classes, "attacks": attacks, "n_target_classes": n_targets}
        seed = library_seed()
        adv = x.clone()
        robust = logits.argmax(1) == y
        if self.eps == 0:
            return adv
        for name in attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            run = self._component(name, model, n_classes, n_targets, seed, x.device)
            xa = run(x[idx].clone(), y[idx].clone()).detach().to(x.dtype)
            xa = project(x[idx], xa, self.eps, self.norm)
            with torch.no_grad():
                fooled = model(xa).argmax(1) != y[idx]
            adv[idx[fooled]] = xa[fooled]
            robust[idx[fooled]] = False
        return adv
