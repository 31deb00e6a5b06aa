"""Per-image statistics kept with their second moment, so a report can give intervals over images and heads.

The registry's ``Accumulator`` keeps, per (layer, head, iteration), the mean over images of each statistic.
The kernel-PCA claims are judged on the spread too (the reproduction study reports mean +- std over images
and heads), so these diagnostics also accumulate ``<metric>_sq``, the mean of its square. From the stored
rows, ``pooled(means, squares)`` gives the mean and the standard deviation over every (image, head) pair of
a group of rows (a layer, a model) without keeping per-image rows.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

SQ = "_sq"


def with_squares(per_head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``per_head`` (metric -> (B, H)) plus ``metric_sq`` for each metric."""
    out = dict(per_head)
    out.update({m + SQ: t.double().pow(2) for m, t in per_head.items()})
    return out


def squared_columns(columns: Iterable[str]) -> tuple[str, ...]:
    cols = tuple(columns)
    return cols + tuple(c + SQ for c in cols)


def pooled(means: Iterable[float], squares: Iterable[float], n_images: int) -> dict[str, float]:
    """Mean, sd and a normal 95 % interval of the mean over all (image, head) pairs of rows that each hold
    the mean and mean square of one head over ``n_images`` images (NaN rows are left out)."""
    pairs = [(m, s) for m, s in zip(means, squares) if not (math.isnan(m) or math.isnan(s))]
    if not pairs:
        return {"mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = sum(m for m, _ in pairs) / len(pairs)
    second = sum(s for _, s in pairs) / len(pairs)
    n = len(pairs) * max(1, int(n_images))
    var = max(0.0, second - mean * mean) * (n / (n - 1) if n > 1 else 1.0)
    sd = math.sqrt(var)
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": n}
