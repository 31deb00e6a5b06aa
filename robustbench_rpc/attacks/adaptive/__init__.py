"""Adaptive evaluation: attacks adapted to models whose forward optimizes, and the checks that
say whether a robustness number survived them.

* ``dynamics``: ``model_dynamics(model)`` -> static / dynamic, declared or detected (AutoAttack's
  ``check_dynamic``);
* ``bpda``: the ``bpda`` attack (Athalye et al. 2018), through the backward approximations models declare
  (``robustbench_rpc.adaptive_protocol``);
* ``transfer``: the ``transfer`` attack, crafted on a surrogate (``MODEL[:CHECKPOINT]`` or ``self:no-pap``);
* ``checks``: ``softmax_output``, ``eps_zero_identity``, ``adaptive_gap``.

The stronger white-box attacks are plain registered attacks (``apgd`` with more iterations and restarts,
``square`` with AutoAttack standard's 5000 queries); the ``adaptive`` preset (``attacks.presets``) combines
all of them for one budget.
"""
from . import bpda, transfer  # noqa: F401  (registers the attacks)
from .bpda import BPDA, BPDAForwardError
from .checks import check_adaptive_gap, check_eps_zero_identity, check_softmax_output
from .dynamics import detect_autograd_calls, model_dynamics
from .transfer import SELF_NO_PAP, Transfer, load_surrogate, without_pap

__all__ = [
    "BPDA", "BPDAForwardError", "SELF_NO_PAP", "Transfer", "check_adaptive_gap", "check_eps_zero_identity",
    "check_softmax_output", "detect_autograd_calls", "load_surrogate", "model_dynamics", "without_pap",
]
