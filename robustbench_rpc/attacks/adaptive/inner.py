"""The inner ("base") attack an adaptive attack runs: a registered gradient attack and its arguments.

``bpda`` and ``transfer`` both take ``base`` (a registered gradient-based attack name, or the AutoAttack
component names ``apgd-ce`` / ``apgd-dlr`` for ``apgd`` with that loss) and ``base_args`` (its own
parameters). The threat model (eps, norm, space, clip) is the outer attack's and may not be set in
``base_args``: the budget the evaluation records is the one the base attack runs under.
"""
from __future__ import annotations

from typing import Any

from ..base import ATTACKS, get_attack

#: AutoAttack's component names, accepted as bases
ALIASES = {"apgd-ce": ("apgd", {"loss": "ce"}), "apgd-dlr": ("apgd", {"loss": "dlr"})}
#: owned by the outer attack (its threat model, seed, batching), never by base_args
OUTER_KEYS = ("eps", "norm", "space", "clip", "labels", "seed", "batch_size", "progress")


def resolve_base(outer: str, base: Any, base_args: Any) -> tuple[str, dict[str, Any]]:
    """(registered name, its arguments) of ``base``; one-line ValueErrors naming the outer attack."""
    if not isinstance(base, str) or not base:
        raise ValueError(f"base of attack '{outer}' must be an attack name (e.g. 'pgd', 'apgd-ce'), got {base!r}")
    if base_args is None:
        base_args = {}
    if not isinstance(base_args, dict):
        raise ValueError(f"base_args of attack '{outer}' must be a table of the base attack's parameters, "
                         f"got {base_args!r}")
    clash = sorted(set(base_args) & set(OUTER_KEYS))
    if clash:
        raise ValueError(f"base_args of attack '{outer}' may not set {', '.join(clash)}: the threat model, seed and "
                         f"batching are the '{outer}' attack's own parameters")
    name, preset = ALIASES.get(base, (base, {}))
    if name in ("bpda", "transfer"):
        raise ValueError(f"base of attack '{outer}' must be a plain gradient attack, not '{name}'")
    try:
        factory = ATTACKS.get(name)
    except KeyError as err:
        raise ValueError(f"base of attack '{outer}': {err.args[0] if err.args else err}") from None
    if not getattr(factory, "gradient_based", True):
        raise ValueError(f"base of attack '{outer}' must use gradients; '{name}' is gradient-free (run it on the "
                         "target directly)")
    args = {**preset, **base_args}
    if preset and args.get("loss") != preset["loss"]:
        raise ValueError(f"base '{base}' of attack '{outer}' fixes loss={preset['loss']!r}; base_args sets "
                         f"loss={args['loss']!r}")
    return name, args


def build_base(outer: str, name: str, args: dict[str, Any], threat: dict[str, Any]):
    """The base attack, built under the outer attack's threat model (``ValueError`` names the outer attack)."""
    try:
        return get_attack(name, **threat, **args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"base '{name}' of attack '{outer}': {err}") from None


def resolved_args(inner) -> dict[str, Any]:
    """The base attack's every parameter as it runs, less those the outer attack owns: what ``base_args``
    records (rebuilding from it gives the same attack)."""
    return {k: v for k, v in inner.params.items() if k not in OUTER_KEYS}
