"""Adversarial attacks: ``get_attack(name, **params)(model, images, labels) -> adversarial images``.

Models take [0, 1] images (they normalize inside) and return (B, C) logits; ``eps`` is in pixel units,
or in the model's normalized input with ``space="normalized"`` (see ``base.Attack``).
Every attack is a plug-in of the ``attack`` registry (``register_attack``); ``list_attacks()`` shows
them. See ``evaluate`` (recomputed per-sample outcomes), ``presets`` (named attack lists) and ``checks``
(trust checks: monotonicity, large eps, gradient masking, differentiability, stochasticity) and
``adaptive`` (bpda, transfer, model_dynamics and the adaptive-evaluation checks).
"""
# registers the attacks
from . import apgd, autoattack, cw, cw_cleverhans, fgsm, noise, pgd, sld, spsa, square  # noqa: F401
from .autoattack import AutoAttack, FewClassesWarning
from .base import (
    ATTACKS, Attack, GradientAttack, ModelOutputError, attack_class, get_attack, is_gradient_based, list_attacks,
    register_attack,
)
from .budget import NORMS, budget_violations, lp_norms, project  # noqa: F401  (for the harness, by module)
from .checks import (
    CheckResult, EOTModel, check_differentiability, check_gradient_masking, check_large_eps, check_monotone_in_eps,
    detect_stochastic,
)
from .cw import CW
from .cw_cleverhans import CWCleverhans
from .evaluate import AttackOutcomes, BudgetError, attack_outcomes, worst_case
from .fgsm import FGSM
from .noise import UniformNoise
from .pgd import PGD
from .presets import PRESETS, eps_grid, get_preset, list_presets, register_preset
from .apgd import APGD
from . import ddn, fab, fmn  # noqa: F401,E402  (registers the minimum-norm attacks)
from . import adversarial_patch, patch_fool  # noqa: F401,E402  (registers the patch attacks)
from .ddn import DDN
from .fab import FAB
from .fmn import FMN
from . import adaptive  # noqa: E402  (registers bpda and transfer; imports the attacks above)
from .adaptive import (
    BPDA, Transfer, check_adaptive_gap, check_eps_zero_identity, check_softmax_output, model_dynamics,
)
from .sld import SparseL1Descent
from .spsa import SPSA
from .square import Square
from . import segmentation  # noqa: F401,E402  (registers the segmentation attacks: pixel-pgd, segpgd, cospgd)

#: the public API: attacks by name (registry, presets, the classes), running them and their outcomes, and the
#: errors a caller catches. The trust checks (``checks``, ``adaptive.checks``), budget helpers (``budget``) and
#: ``model_dynamics`` are imported above for the harness, and are reached through their modules.
__all__ = [
    "ATTACKS", "PRESETS", "APGD", "BPDA", "CW", "CWCleverhans", "DDN", "FAB", "FGSM", "FMN", "PGD", "SPSA",
    "SparseL1Descent", "Square", "Transfer", "UniformNoise", "AutoAttack", "Attack", "GradientAttack",
    "AttackOutcomes", "EOTModel",
    "BudgetError", "FewClassesWarning", "ModelOutputError", "attack_class", "attack_outcomes", "eps_grid",
    "get_attack", "get_preset", "list_attacks", "list_presets", "register_attack", "register_preset", "worst_case",
]
