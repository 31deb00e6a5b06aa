"""Adversarial attacks: ``get_attack(name, **params)(model, images, labels) -> adversarial images``.

Models take [0, 1] images (they normalize inside) and return (B, C) logits; ``eps`` is in pixel units,
or in the model's normalized input with ``space="normalized"`` (see ``base.Attack``).
Every attack is a plug-in of the ``attack`` registry (``register_attack``); ``list_attacks()`` shows
them. See ``evaluate`` (recomputed per-sample outcomes), ``presets`` (named attack lists) and ``checks``
(trust checks: monotonicity, large eps, gradient masking, differentiability, stochasticity) and
``adaptive`` (bpda, transfer, model_dynamics and the adaptive-evaluation checks).
"""
from . import apgd, autoattack, cw, cw_cleverhans, fgsm, noise, pgd, sld, spsa, square  # noqa: F401  (registers the attacks)
from .autoattack import AutoAttack, FewClassesWarning
from .base import (
    ATTACKS,
    Attack,
    GradientAttack,
    ModelOutputError,
    attack_class,
    get_attack,
    is_gradient_based,
    list_attacks,
    register_attack,
)
from .budget import NORMS, budget_violations, lp_norms, project
from .checks import (
    CheckResult,
    EOTModel,
    check_differentiability,
    check_gradient_masking,
    check_large_eps,
    check_monotone_in_eps,
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
from . import adaptive  # noqa: E402  (registers bpda and transfer; imports the attacks above)
from .adaptive import (BPDA, Transfer, check_adaptive_gap, check_eps_zero_identity, check_softmax_output,
                       model_dynamics)
from .sld import SparseL1Descent
from .spsa import SPSA
from .square import Square

__all__ = [
    "APGD", "BPDA", "Transfer", "check_adaptive_gap", "check_eps_zero_identity", "check_softmax_output",
    "model_dynamics",
    "ATTACKS", "NORMS", "PRESETS", "CW", "CWCleverhans", "FGSM", "PGD", "SPSA", "Attack", "AttackOutcomes", "AutoAttack",
    "BudgetError", "CheckResult", "EOTModel", "FewClassesWarning", "GradientAttack", "ModelOutputError",
    "SparseL1Descent", "Square", "UniformNoise", "attack_class", "attack_outcomes", "budget_violations",
    "check_differentiability", "check_gradient_masking", "check_large_eps", "check_monotone_in_eps",
    "detect_stochastic", "eps_grid", "get_attack", "get_preset", "is_gradient_based", "list_attacks",
    "list_presets", "lp_norms", "project", "register_attack", "register_preset", "worst_case",
]
