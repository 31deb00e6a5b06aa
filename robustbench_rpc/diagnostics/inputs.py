"""The inputs diagnostics compare: clean images, the same images attacked, the same images corrupted.

``diagnose_inputs(model, x, y, ...)`` runs the diagnostics on each input kind and returns rows with
``input`` (clean | attack | corruption), ``input_detail`` (e.g. 'pgd eps=4/255 steps=10', 'fog s3'),
the model's top-1 accuracy on that input (``accuracy``) and the number of images (``n``).
Adversarial images are crafted against the model's normal (fused) forward, as in an evaluation.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..evalspec import EvalSpec, attack_label, attack_params, unit_seed
from .base import run_diagnostics
from .. import attacks
from ..corruptions import CorruptedDataset

INPUT_KINDS = ("clean", "attack", "corruption")


def attacked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, params: dict[str, Any],
             seed: int = 0, batch_size: int = 128) -> torch.Tensor:
    """``x`` attacked with the registered attack ``name`` (suite parameters: eps as float, alpha_rel ok)."""
    spec = EvalSpec("attack", name, "diagnostics", dict(params))
    device = next(model.parameters()).device
    out = []
    for u, i in enumerate(range(0, len(x), batch_size)):
        attack = attacks.get_attack(name, seed=unit_seed(seed, spec.key, u), **attack_params(spec, None))
        out.append(attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).detach().cpu())
    return torch.cat(out)


def corrupted(dataset, corruption: str, severity: int, seed: int = 0) -> torch.Tensor:
    ds = CorruptedDataset(dataset, corruption, severity, seed=seed)
    return torch.stack([ds[i][0] for i in range(len(ds))])


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    hits = sum(int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))


def diagnose_inputs(model: nn.Module, dataset, *, names: Iterable[str] | None = None,
                    attack: tuple[str, dict[str, Any]] | None = None,
                    corruption: tuple[str, int] | None = None, batch_size: int = 128, seed: int = 0,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Diagnostics of ``model`` on ``dataset`` (items (image [0, 1], label, sample_id)) clean, and on the
    same images attacked (``attack = (name, params)``) and corrupted (``corruption = (name, severity)``)."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    inputs = [("clean", "clean", x)]
    if attack is not None:
        inputs.append(("attack", attack_label(*attack), attacked(model, x, y, attack[0], attack[1], seed, batch_size)))
    if corruption is not None:
        inputs.append(("corruption", f"{corruption[0]} s{corruption[1]}",
                       corrupted(dataset, corruption[0], int(corruption[1]), seed)))
    rows, axes = [], []
    for kind, detail, xi in inputs:
        acc = _accuracy(model, xi, y, batch_size)
        r, a = run_diagnostics(model, xi, names, batch_size)
        extra = {"input": kind, "input_detail": detail, "accuracy": acc, "n": len(xi)}
        rows += [{**extra, **row} for row in r]
        axes += [{**extra, **row} for row in a]
    return rows, axes
