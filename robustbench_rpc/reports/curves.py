"""Robust accuracy as a function of eps, from per-sample minimal perturbation norms of a set of attacks.

A minimum-norm attack (``fmn``, ``ddn``, ``fab``, ``cw`` without eps) gives, per sample, the smallest
perturbation it found that flips the prediction: 0 for a sample misclassified clean, ``inf`` for a sample it
never broke (never a number it did not measure). Over a set of attacks the per-sample best is the minimum;
robust accuracy at eps is the share of samples whose best minimal norm exceeds eps (foolbox's "one run gives
the whole curve"). This module computes, from those per-sample arrays:

* ``curve``: robust accuracy at each eps with Wilson 95 % intervals;
* ``median_norm``: the median of the per-sample best (``inf`` if half the samples were never broken) with a
  percentile-bootstrap interval;
* ``optimality``: AttackBench's optimality of one attack against the set's per-sample best
  (attackbench/AttackBench ``analysis/utils.py`` ``eval_optimality``: 1 - (area - best area) /
  (clean accuracy * max distance - best area), areas under the robust-accuracy curves by the trapezoid rule,
  the attack's distances clipped at the best's largest); never-broken samples sit at that largest distance;
* ``not_tight``: samples a fixed-budget attack broke at eps although the curve says they survive beyond eps
  (the minimum-norm attacks were not tight there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..metrics import wilson_interval


def _norms(values, name: str = "minimal norms") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 or inf (never broken); got NaN or a negative value")
    return arr


def per_sample_best(norms_by_attack: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The per-sample minimum over attacks (inf where no attack broke the sample)."""
    if not norms_by_attack:
        raise ValueError("per_sample_best needs at least one attack's minimal norms")
    arrays = {name: _norms(v, f"minimal norms of '{name}'") for name, v in norms_by_attack.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"the attacks' minimal norms cover different numbers of samples: {sorted(sizes)}")
    return np.minimum.reduce(list(arrays.values()))


@dataclass(frozen=True)
class CurvePoint:
    eps: float
    robust_accuracy: float
    lo: float
    hi: float
    n: int


def curve(best: Sequence[float], eps_grid: Sequence[float], confidence: float = 0.95) -> list[CurvePoint]:
    """Robust accuracy at each eps: the share of samples whose minimal norm is larger than eps."""
    best = _norms(best)
    n = best.size
    points = []
    for eps in eps_grid:
        k = int(np.sum(best > float(eps)))
        lo, hi = wilson_interval(k, n, confidence)
        points.append(CurvePoint(float(eps), k / n if n else float("nan"), lo, hi, n))
    return points


def median_norm(best: Sequence[float], n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> tuple[float, float, float]:
    """(median, lo, hi) of the per-sample minimal norm with a percentile-bootstrap interval; never-broken
    samples count as infinitely far. The median is the lower middle value (an observed norm, never an average
    with inf), in the sample and in each resample; the interval's ends are order statistics of the resampled
    medians (no interpolation, which inf would turn into NaN)."""
    best = _norms(best)
    if best.size == 0:
        raise ValueError("median_norm: no samples")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    mid = (best.size - 1) // 2
    rng = np.random.default_rng(seed)
    resampled = np.sort(best[rng.integers(0, best.size, size=(n_boot, best.size))], axis=1)[:, mid]
    resampled.sort()
    alpha = 1 - confidence
    lo = resampled[int(np.floor(alpha / 2 * (n_boot - 1)))]
    hi = resampled[int(np.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return float(np.sort(best)[mid]), float(lo), float(hi)


def _area(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    values, counts = np.unique(distances, return_counts=True)
    robust = 1 - counts.cumsum() / distances.size
    return values, robust, float(np.trapezoid(robust, values))


def optimality(attack: Sequence[float], best: Sequence[float]) -> float:
    """AttackBench's optimality of ``attack`` against the set's per-sample ``best`` (1: as good as the best)."""
    attack, best = _norms(attack), _norms(best)
    if attack.size != best.size:
        raise ValueError(f"optimality: {attack.size} minimal norms for the attack, {best.size} for the best")
    finite = best[np.isfinite(best)]
    if finite.size == 0 or finite.max() == 0:
        return float("nan")  # nothing broken by any attack: no curve to compare
    max_dist = float(finite.max())
    best = np.minimum(best, max_dist)
    _, _, best_area = _area(best)
    clean_acc = np.count_nonzero(best) / best.size
    _, _, area = _area(np.minimum(attack, max_dist))
    denominator = clean_acc * max_dist - best_area
    if denominator <= 0:
        return float("nan")
    return float(1 - (area - best_area) / denominator)


def not_tight(best: Sequence[float], fixed_budget_broken: Sequence[bool], eps: float) -> np.ndarray:
    """Indices of samples a fixed-budget attack broke at ``eps`` (clean-correct, misclassified after it) whose
    minimal norm over the set is larger than ``eps``: there the minimum-norm attacks were not tight."""
    best = _norms(best)
    broken = np.asarray(fixed_budget_broken, dtype=bool).reshape(-1)
    if broken.size != best.size:
        raise ValueError(f"not_tight: {broken.size} fixed-budget outcomes for {best.size} samples")
    return np.flatnonzero(broken & (best > float(eps)))


def minimal_norms_from_rows(norm: Sequence[float], clean_correct: Sequence[bool],
                            adv_correct: Sequence[bool]) -> np.ndarray:
    """Per-sample minimal norm from a minimum-norm attack's stored rows: 0 if misclassified clean, the stored
    perturbation norm if the attack broke it, inf if it never did."""
    norm = np.asarray(norm, dtype=np.float64)
    clean = np.asarray(clean_correct, dtype=bool)
    adv = np.asarray(adv_correct, dtype=bool)
    return np.where(~clean, 0.0, np.where(adv, np.inf, norm))
