"""Training objectives: a registry, one file per objective, and the L-inf inner maximisation they share.

An objective maps a batch to the loss the optimizer minimises: ``objective.loss(model, bare, x, y, epoch)``
-> ``(loss, logits)``. ``model`` is the module to train (DistributedDataParallel-wrapped on torchrun),
``bare`` the same weights without the wrapper, used for the inner maximisation (input gradients only, no
gradient synchronisation). Images are in [0, 1]; budgets are in pixel units.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from ...registry import Registry

OBJECTIVES: Registry[type["Objective"]] = Registry("objective", name_attr="name")


def register_objective(name: str):
    """Class decorator: ``@register_objective("my-objective")`` makes it a recipe's ``objective.name``."""
    return OBJECTIVES.register(name)


class Objective:
    """Base: holds the recipe's ``[objective]`` table, the label smoothing and the autocast context."""

    name = ""
    adversarial = True

    def __init__(self, params: SimpleNamespace, label_smoothing: float = 0.0,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.p = params
        self.label_smoothing = label_smoothing
        self.autocast = autocast

    def step_size(self, epoch: int) -> float:
        """ARES' step ramp (``robust_training/adversarial_training.py``, ``train_one_epoch``):
        ``attack_step * min(epoch, R) / R`` with 0-based epochs, so epoch 0 trains on the start points alone;
        ``step_ramp_epochs = 0`` keeps the full step size from the first epoch."""
        ramp = self.p.step_ramp_epochs
        return self.p.step_size * (min(epoch, ramp) / ramp if ramp else 1.0)

    def describe(self, epoch: int) -> str:
        return (f"{self.name}: eps {self.p.eps:.5g}, {self.p.steps} steps of {self.step_size(epoch):.5g}"
                if self.adversarial else self.name)

    def loss(self, model: nn.Module, bare: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The inner maximisation runs the model in eval mode, as ARES' ``adv_generator`` and TRADES'
    ``trades_loss`` do (dropout off, normalisation statistics frozen); the training mode is restored."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def linf_ascent(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: torch.Tensor,
                eps: float, alpha: float, steps: int) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps of ``objective`` from ``start``, each projected onto the
    L-inf ball of radius ``eps`` around ``x`` and the [0, 1] box (Madry et al. 2018, eq. 2). Gradients are
    taken with respect to the input only (``torch.autograd.grad``), so no parameter gradient is computed
    or left behind."""
    adv = start.detach()
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(objective(adv), adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), lo), hi)
    return adv.detach()


from . import pgd_at, standard, trades  # noqa: E402,F401  (register the built-in objectives)


def get_objective(name: str) -> type[Objective]:
    return OBJECTIVES.get(name)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


__all__ = ["OBJECTIVES", "Objective", "eval_mode", "get_objective", "linf_ascent", "list_objectives",
           "register_objective"]
