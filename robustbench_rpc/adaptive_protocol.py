"""What a model declares about itself for adaptive evaluation: a leaf that attention variants, your own
models (``--plugin``) and the adaptive attacks (``attacks.adaptive``) all import.

**Static or dynamic.** A module class may declare ``dynamic`` (a bool, or a property) and ``dynamic_why``
(one sentence): dynamic = its forward solves an optimization problem or calls autograd, the models
RobustBench's eligibility rules exclude from its standardized leaderboard ("an optimization loop") and
AutoAttack's ``check_dynamic`` flags. ``attacks.adaptive.model_dynamics`` reads the declarations and
detects autograd calls at run time for everything else.

**BPDA approximations** (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security",
ICML 2018, sec. 4.1: Backward Pass Differentiable Approximation). A module class declares the
approximations it offers::

    class Quantize(nn.Module):
        bpda_approximations = {"identity": "the rounding's backward is the identity"}
        bpda_backward = None                      # set by the bpda attack while it runs

        def forward(self, x):
            q = torch.round(x * 7) / 7
            return straight_through(q, x) if self.bpda_backward == "identity" else q

While ``approximation_active(model, name)`` is entered (the ``bpda`` attack does it), every module that
declares ``name`` has ``bpda_backward = name``. Its forward must return exactly the values of the
unmodified forward; only the gradient may change. :func:`substitute_backward` is the primitive that
guarantees it: the value of one tensor, the gradient of another.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .registry import did_you_mean


class _Substitute(torch.autograd.Function):
    """Forward: a copy of ``value`` (bit-identical). Backward: the whole gradient goes to ``surrogate``."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
        ctx.surrogate_dtype = surrogate.dtype
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad.to(ctx.surrogate_dtype)


def substitute_backward(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose backward is the backward of ``surrogate`` (BPDA's g(x) ~ f(x)): no
    gradient reaches ``value``'s graph. Shapes must match."""
    if value.shape != surrogate.shape:
        raise ValueError(f"substitute_backward: value has shape {tuple(value.shape)}, surrogate "
                         f"{tuple(surrogate.shape)}; the backward approximation must have the value's shape")
    return _Substitute.apply(value, surrogate)


def straight_through(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity backward to ``x`` (the straight-through estimator, BPDA with g(x) = x)."""
    return substitute_backward(value, x)


class UnknownApproximationError(ValueError):
    """No module of the model declares the BPDA approximation asked for."""


def _approximations_of(module: nn.Module) -> dict[str, str]:
    table = getattr(type(module), "bpda_approximations", None)
    return dict(table) if isinstance(table, dict) else {}


def declared_approximations(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{name: {"description": ..., "modules": [module paths]}}`` over every module of ``model``
    (``""`` is the model itself)."""
    out: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        for name, description in _approximations_of(module).items():
            entry = out.setdefault(name, {"description": description, "modules": []})
            entry["modules"].append(path or "<model>")
    return out


@contextlib.contextmanager
def approximation_active(model: nn.Module, name: str, *, required: bool = True) -> Iterator[list[str]]:
    """Within the block, every module declaring ``name`` runs its backward approximation (yields their
    paths). ``required``: no module declaring it raises :class:`UnknownApproximationError` (with the
    names declared); otherwise the block runs with exact gradients and yields ``[]``."""
    targets = [(path or "<model>", m) for path, m in model.named_modules() if name in _approximations_of(m)]
    if not targets and required:
        declared = sorted(declared_approximations(model))
        hint = did_you_mean(name, declared, n=2, cutoff=0.5)
        what = f"declared: {', '.join(declared)}" if declared else (
            "it declares none (a module class declares them in bpda_approximations, see "
            "robustbench_rpc.adaptive_protocol)")
        raise UnknownApproximationError(f"no module of {type(model).__name__} declares the BPDA approximation "
                                        f"{name!r};{hint} {what}")
    previous = [(m, m.__dict__.get("bpda_backward")) for _, m in targets]
    for _, m in targets:
        m.bpda_backward = name
    try:
        yield [p for p, _ in targets]
    finally:
        for m, before in previous:
            m.bpda_backward = before


def declared_dynamics(model: nn.Module) -> list[dict[str, Any]]:
    """One row per module whose class declares ``dynamic``: ``{"module", "class", "dynamic", "why"}``."""
    rows = []
    for path, m in model.named_modules():
        if not hasattr(type(m), "dynamic"):
            continue
        flag = getattr(m, "dynamic")
        if not isinstance(flag, bool):
            raise TypeError(f"{type(m).__name__}.dynamic must be a bool (static False, dynamic True), got {flag!r}")
        rows.append({"module": path or "<model>", "class": type(m).__name__, "dynamic": flag,
                     "why": str(getattr(m, "dynamic_why", "") or "")})
    return rows
