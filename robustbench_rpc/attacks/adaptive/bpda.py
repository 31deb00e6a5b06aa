"""``bpda``: a gradient attack through the model with its non-differentiable or iterative parts replaced, in
the BACKWARD pass only, by a differentiable approximation the model declares.

Source: Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing
Defenses to Adversarial Examples", ICML 2018 (arXiv:1802.00420), sec. 4.1 (BPDA: forward f(x), backward
of g(x) ~ f(x); e.g. the identity for input quantization, as their bit-depth attack in
anishathalye/obfuscated-gradients ``inputtransformations``).

Which parts and how: the model's modules declare ``bpda_approximations`` (``robustbench_rpc.adaptive_protocol``;
RPC attention declares ``straight-through``, ``no-threshold`` and ``symmetric``, a ``--plugin`` model its
own, e.g. ``identity`` for a quantizer). ``approximation`` names the one used; it is recorded in the
attack's parameters, so every stored evaluation says which. The forward pass must stay the model's: with
``verify_forward`` (default) the first chunk's logits with and without the approximation are compared and
any difference raises :class:`BPDAForwardError`. The final classification (``attack_outcomes``) runs the
unmodified model.

``base``: ``pgd`` (default), ``apgd-ce``, ``apgd-dlr`` or any registered gradient attack; ``base_args`` its
parameters (e.g. ``{"steps": 100, "restarts": 5}``). ``undeclared``: what to do on a model that declares no
module with ``approximation``: ``"error"`` (default) or ``"exact"`` (run the base with exact gradients: the
model has nothing to approximate; the ``adaptive`` preset uses it so one suite runs on RPC and SymViT
alike). ``early_stop`` is passed to a base that takes it (the harness sets it for robust accuracy).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ...adaptive_protocol import approximation_active
from ..base import ATTACKS, GradientAttack, LogitsGuard, register_attack
from .inner import build_base, resolve_base, resolved_args

UNDECLARED = ("error", "exact")


class BPDAForwardError(RuntimeError):
    """A declared BPDA approximation changed the model's forward values (it may change only the backward)."""


@register_attack("bpda")
class BPDA(GradientAttack):
    norms = ("Linf", "L2", "L1")

    def __init__(self, eps: float | None = None, norm: str = "Linf", approximation: str | None = None,
                 base: str = "pgd", base_args: dict[str, Any] | None = None, early_stop: bool = False,
                 undeclared: str = "error", verify_forward: bool = True, space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        if not isinstance(approximation, str) or not approximation:
            raise ValueError("attack 'bpda' needs approximation: the name of a backward approximation the model "
                             "declares (RPC attention: straight-through, no-threshold, symmetric)")
        if undeclared not in UNDECLARED:
            raise ValueError(f"undeclared of attack 'bpda' must be one of {', '.join(UNDECLARED)}, got {undeclared!r}")
        name, args = resolve_base("bpda", base, base_args)
        if "early_stop" in inspect.signature(ATTACKS.get(name)).parameters:
            args.setdefault("early_stop", bool(early_stop))
        # labels stay the outer attack's: it resolves predicted labels once, before the base runs
        self.inner = build_base("bpda", name, args, {"eps": eps, "norm": norm, "space": space, "clip": clip})
        self._record(approximation=approximation, base=base, base_args=resolved_args(self.inner),
                     early_stop=bool(early_stop), undeclared=undeclared, verify_forward=bool(verify_forward))
        self.last_modules: list[str] | None = None  # set by each call: the modules that approximated
        # the base says what the model returns and what labels are (per-pixel for a segmentation base)
        self.guard_class = type(self.inner).guard_class

    def _validate_inputs(self, images, labels):
        return self.inner._validate_inputs(images, labels)

    def perturb(self, model, x, y):
        self.inner.box = self.box  # the base runs in this attack's working space (already entered)
        exact = _deterministic_logits(model, x) if self.verify_forward else None
        guarded = isinstance(model, (LogitsGuard, self.guard_class))
        target = model.model if guarded else model  # module paths as the user's model has them
        with approximation_active(target, self.approximation, required=self.undeclared == "error") as modules:
            self.last_modules = modules
            if exact is not None and modules:
                self._check_forward(model, x, exact, modules)
            return self.inner.perturb(model, x, y)

    @torch.no_grad()
    def _check_forward(self, model, x: torch.Tensor, exact: torch.Tensor, modules: list[str]) -> None:
        approx = model(x)
        if not torch.equal(approx, exact):
            diff = float((approx.float() - exact.float()).abs().max())
            raise BPDAForwardError(
                f"BPDA approximation {self.approximation!r} (declared by {', '.join(modules)}) changes the model's "
                f"forward logits (max |difference| {diff:.3g}); an approximation may change only the backward: "
                "return adaptive_protocol.substitute_backward(exact_value, approximation)")


@torch.no_grad()
def _deterministic_logits(model, x: torch.Tensor) -> torch.Tensor | None:
    """The model's logits on ``x``, or None when two passes differ (a stochastic model: nothing to compare)."""
    first, again = model(x), model(x)
    return first if torch.equal(first, again) else None
