"""Segmentation metrics as mmsegmentation's ``IoUMetric`` computes them, kept per image so that every number
and every interval can be recomputed from stored counts.

Written from a reading of open-mmlab/mmsegmentation ``mmseg/evaluation/metrics/iou_metric.py``
(``intersect_and_union``, ``total_area_to_metrics``; Apache-2.0, nothing copied). Per image and class:

- pixels whose label is ``ignore_index`` are dropped first (from the prediction too);
- ``intersect`` = pixels predicted c and labelled c, ``pred`` = predicted c, ``label`` = labelled c,
  ``union`` = pred + label - intersect.

Over a dataset the four counts are **summed over images** (never averaged per image), then
``aAcc = sum(intersect) / sum(label)``, per-class ``IoU = intersect / union`` and ``Acc = intersect / label``,
and ``mIoU`` / ``mAcc`` their means over the classes where they are defined: a class absent from both the
predictions and the labels has IoU 0/0 = NaN and is skipped, as mmseg's ``np.nanmean``; a class predicted but
never labelled has IoU 0 (it counts) and Acc NaN (skipped). Values are fractions (mmseg prints percentages
rounded to 2 decimals). Counts are exact integers (``bincount``; mmseg's float ``histc`` gives the same).

Because mIoU is a ratio of dataset-level sums, its uncertainty comes from an image-level bootstrap: resample
images with replacement, sum their counts, recompute (percentile interval, seeded, reproducible); two models
evaluated on the same images are compared with the same resamples (paired).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

METRICS = ("aAcc", "mAcc", "mIoU")
#: index of each count in an areas array (..., 4, num_classes)
INTERSECT, UNION, PRED, LABEL = range(4)


def intersect_and_union(pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, num_classes: int,
                        ignore_index: int = 255) -> np.ndarray:
    """One image's counts: an int64 array (4, num_classes) of intersect, union, pred and label areas.
    ``pred`` holds class indices (argmax of the logits), ``label`` class indices or ``ignore_index``."""
    pred, label = torch.as_tensor(pred), torch.as_tensor(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} does not match label of shape {tuple(label.shape)}")
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class {int(pred.max() if pred.max() >= num_classes else pred.min())} is "
                         f"outside 0..{num_classes - 1}")
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        bad = int(label.max() if label.max() >= num_classes else label.min())
        raise ValueError(f"label {bad} is outside 0..{num_classes - 1} and is not the ignore index {ignore_index}")
    intersect = torch.bincount(pred[pred == label], minlength=num_classes)
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    out = torch.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])
    return out.cpu().numpy().astype(np.int64)


def batch_areas(preds: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Per-image counts (B, 4, num_classes) for predictions (B, H, W) or logits (B, C, H, W)."""
    if preds.dim() == labels.dim() + 1:
        preds = preds.argmax(dim=1)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    return np.stack([intersect_and_union(p, t, num_classes, ignore_index) for p, t in zip(preds, labels)])


def _check(areas: Any) -> np.ndarray:
    a = np.asarray(areas)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != 4 or not len(a):
        raise ValueError(f"expected per-image areas of shape (images >= 1, 4, classes), got {a.shape}")
    return a


def _from_totals(t: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed counts of shape (..., 4, C); vectorised over leading axes (bootstrap resamples)."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN rows: NaN, as mmseg
        inter, union, label = t[..., INTERSECT, :], t[..., UNION, :], t[..., LABEL, :]
        iou = inter / union
        acc = inter / label
        return {"aAcc": inter.sum(-1) / label.sum(-1), "mAcc": np.nanmean(acc, axis=-1),
                "mIoU": np.nanmean(iou, axis=-1), "IoU": iou, "Acc": acc}


def seg_metrics(areas: Any) -> dict[str, Any]:
    """aAcc, mAcc, mIoU (floats) and per-class IoU and Acc (arrays, NaN where undefined) from per-image counts
    (images, 4, C) summed over the images; also ``n_images`` and ``n_pixels`` (labelled pixels scored)."""
    a = _check(areas)
    totals = a.sum(axis=0, dtype=np.float64)
    out = _from_totals(totals)
    res: dict[str, Any] = {k: float(out[k]) for k in METRICS}
    res.update(IoU=out["IoU"], Acc=out["Acc"], n_images=len(a), n_pixels=int(a[:, LABEL].sum()))
    return res


def _resampled(areas: np.ndarray, metric: str, idx: np.ndarray) -> np.ndarray:
    """``metric`` on each resample: rows of ``idx`` are image indices; counts summed by a weights product."""
    n = areas.shape[0]
    weights = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    totals = (weights @ areas.reshape(n, -1).astype(np.float64)).reshape(len(idx), *areas.shape[1:])
    return _from_totals(totals)[metric]


def _draws(n: int, n_boot: int, seed: int, confidence: float):
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def seg_bootstrap(areas: Any, metric: str = "mIoU", *, n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float, float, float]:
    """``(value, lo, hi)``: ``metric`` (aAcc, mAcc or mIoU) and its percentile image-level bootstrap interval;
    the same ``seed`` gives the same interval (resample rows are ``default_rng(seed).integers(0, n, (b, n))``)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    a = _check(areas)
    values = np.concatenate([_resampled(a, metric, idx) for idx in _draws(len(a), n_boot, seed, confidence)])
    return (seg_metrics(a)[metric], *_interval(values, confidence))


def paired_seg_bootstrap(areas_a: Any, areas_b: Any, metric: str = "mIoU", *, n_boot: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(difference, lo, hi)`` of ``metric`` for model A minus model B on the same images (same order): each
    resample takes the same images for both models, so image difficulty cancels."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    a, b = _check(areas_a), _check(areas_b)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same images and classes for both models: {a.shape} vs {b.shape}")
    if not np.array_equal(a[:, LABEL], b[:, LABEL]):
        raise ValueError("paired bootstrap: the two models' label areas differ, so they were not scored on the same "
                         "images in the same order")
    diffs = [_resampled(a, metric, idx) - _resampled(b, metric, idx)
             for idx in _draws(len(a), n_boot, seed, confidence)]
    point = seg_metrics(a)[metric] - seg_metrics(b)[metric]
    return (point, *_interval(np.concatenate(diffs), confidence))


def worst_case_areas(areas_by_attack: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Per image, the counts of the attack that left the fewest pixels correct (intersect summed over classes;
    ties go to the attack named first), and which attack that was per image: the per-image worst case over the
    attacks run. Its aAcc is at most every single attack's; mIoU, a ratio of sums, is computed from these counts
    but is not guaranteed to be the lowest any per-image choice could give."""
    if not areas_by_attack:
        raise ValueError("worst case over no attacks")
    names = list(areas_by_attack)
    stacked = np.stack([_check(areas_by_attack[n]) for n in names])  # (attacks, images, 4, C)
    if any(a.shape != stacked[0].shape for a in stacked):
        raise ValueError("worst case: every attack must be scored on the same images and classes")
    if not all(np.array_equal(a[:, LABEL], stacked[0][:, LABEL]) for a in stacked):
        raise ValueError("worst case: the attacks' label areas differ, so they were not scored on the same images")
    correct = stacked[:, :, INTERSECT].sum(axis=-1)  # (attacks, images)
    pick = correct.argmin(axis=0)  # the first minimum: the earlier attack on ties
    return stacked[pick, np.arange(stacked.shape[1])], [names[i] for i in pick]
