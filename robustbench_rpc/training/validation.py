"""Per-epoch validation: clean and PGD accuracy with Wilson 95 % intervals (ARES validates both every epoch).

The validation images (``validation.limit`` of them spread evenly over the classes, or all) are cut into
fixed units of ``validation.batch_size``; ranks take units round-robin and the counts are summed, and each
unit's PGD is seeded from (seed, epoch, unit), so the numbers do not depend on the number of ranks. PGD is
the project's ``pgd`` attack (the one ``run`` evaluates with): L-inf, ``validation.eps``, ``steps``,
``step_size``, uniform random start. PGD accuracy counts images classified correctly both clean and attacked
(robust accuracy, as RobustBench). The attack forks the RNG, so validating never changes the training's
random streams.

Opt-in (``validation.diagnostics = [...]``): the named diagnostics (e.g. ``kpca_reconstruction_terms``,
``projection_loss``: the paper's Figure 1 and the reproduction study's relative errors over training) on the
first ``validation.diagnostics_limit`` (default 64) validation images spread evenly over the classes, the
images ``diagnose --limit`` takes from the same split. Each column is averaged over the rows (layers, heads,
iterations) into ``diag_<column>`` of the epoch's row, so the CSV value equals the mean of that column of
``diagnose`` on the epoch's weights. Every rank computes it alike (no communication, no randomness).
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

import torch

from ..attacks import get_attack
from ..data.subsets import stratified_indices
from ..metrics import wilson_interval
from .ddp import AMP_DTYPES
from ..diagnostics import run_diagnostics


def val_units(labels: list[int], limit: int, batch_size: int) -> list[list[int]]:
    positions = stratified_indices(labels, limit) if limit and limit < len(labels) else list(range(len(labels)))
    return [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]


def unit_seed(seed: int, epoch: int, unit: int) -> int:
    digest = hashlib.blake2b(f"val/{seed}/{epoch}/{unit}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _counts(model, data, units, mine, v, seed, epoch, ranks, amp_dtype) -> tuple[int, int, int]:
    n = clean = robust = 0
    batches = data.val_batches([units[u] for u in mine])
    for u, (x, y) in zip(mine, batches):
        x, y = x.to(ranks.device), y.to(ranks.device)
        with torch.no_grad(), ranks.autocast():
            ok = model(x).argmax(1) == y
        n, clean = n + len(y), clean + int(ok.sum())
        if v.steps:
            attack = get_attack("pgd", eps=v.eps, steps=v.steps, alpha=v.step_size, random_start=True,
                                seed=unit_seed(seed, epoch, u), amp_dtype=amp_dtype, progress=False)
            adv = attack(model, x, y)
            with torch.no_grad(), ranks.autocast():
                robust += int((ok & (model(adv).argmax(1) == y)).sum())
    return n, clean, robust


DIAGNOSTICS_LIMIT = 64
_ROW_KEYS = ("layer", "head", "iteration")


def summarize_diagnostics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``diag_<column>``: each diagnostic column's mean over the rows where it is defined (NaN where it is
    nowhere, e.g. the projection loss of a negative error); the ``_sq`` moments are left out."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if k not in _ROW_KEYS and not k.endswith("_sq") and isinstance(v, (int, float)):
                sums.setdefault(k, [])
                if v == v:
                    sums[k].append(float(v))
    return {f"diag_{k}": sum(v) / len(v) if v else float("nan") for k, v in sums.items()}


def epoch_diagnostics(model: torch.nn.Module, data, recipe) -> dict[str, float]:
    """The recipe's per-epoch diagnostics on the validation images (module docstring); {} when none."""
    v = recipe.validation
    if not getattr(v, "diagnostics", None):
        return {}
    limit = v.diagnostics_limit or DIAGNOSTICS_LIMIT
    (unit,) = val_units(data.val_labels, limit, len(data.val_labels))
    x = torch.cat([xb for xb, _ in data.val_batches([unit])])
    rows, _ = run_diagnostics(getattr(model, "module", model), x, v.diagnostics, batch_size=v.batch_size)
    return summarize_diagnostics(rows)


def validate(model: torch.nn.Module, data, recipe, epoch: int, ranks) -> dict[str, Any]:
    """Clean and PGD accuracy of ``model`` (eval mode) on the validation units, summed over ranks."""
    v = recipe.validation
    t0 = time.perf_counter()
    units = val_units(data.val_labels, v.limit, v.batch_size)
    mine = list(range(ranks.rank, len(units), ranks.world))
    was = model.training
    model.eval()
    try:
        counts = ranks.gather(lambda: _counts(model, data, units, mine, v, recipe.seed, epoch, ranks,
                                              AMP_DTYPES[ranks.amp]), f"validation of epoch {epoch + 1}")
    finally:
        model.train(was)
    n, clean, robust = (sum(c[i] for c in counts) for i in range(3))
    out: dict[str, Any] = {"n_val": n, "clean_acc": clean / n}
    out["clean_lo"], out["clean_hi"] = wilson_interval(clean, n)
    if v.steps:
        out["pgd_acc"] = robust / n
        out["pgd_lo"], out["pgd_hi"] = wilson_interval(robust, n)
    out["val_s"] = time.perf_counter() - t0
    return out
