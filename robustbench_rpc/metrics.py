"""Numbers computed from per-sample outcomes: accuracy with confidence intervals, corruption errors
(mCE, relative mCE), out-of-distribution detection (AUPR / AUROC / FPR95), calibration (ECE) and paired
model comparison (McNemar, CI on the accuracy difference).

Everything here is plain numpy/scipy on arrays of per-sample values, so reports can rebuild every
number from the store.

Conventions
-----------
- Errors and accuracies are fractions in [0, 1], never percentages.
- ``correct`` arrays are booleans (or 0/1) per sample.
- Corruption errors: ``errors`` maps a corruption name to its top-1 error averaged over the severities
  evaluated (a sequence of per-severity errors is also accepted and averaged).  Hendrycks & Dietterich
  (ICLR 2019) define ``CE_c = sum_s E_{s,c} / sum_s E_{s,c}^{AlexNet}``; with the same severities on
  both sides the sums' ratio equals the ratio of the averages, which is what is computed here.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

# --------------------------------------------------------------------------------------------------
# ImageNet-C constants
# --------------------------------------------------------------------------------------------------

IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 ImageNet-C corruptions that enter the mCE, in the paper's order."""

IMAGENET_C_EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out ("validation") corruptions of ImageNet-C; no AlexNet baseline, not in the mCE."""

ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
"""AlexNet top-1 error on each ImageNet-C corruption, averaged over severities 1-5 (the mCE baseline)."""

ALEXNET_CLEAN_ERROR: float = 0.4348
"""AlexNet top-1 error on clean ImageNet val, the baseline of the relative mCE.

The paper reports 43.5 %; torchvision's AlexNet weights report acc@1 = 56.522 %, i.e. 0.43478.
"""


def _mean_error(value, name: str) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"no error values given for corruption '{name}'")
    err = float(arr.mean())
    if not (0.0 <= err <= 1.0) or math.isnan(err):
        raise ValueError(f"error for corruption '{name}' must be a fraction in [0, 1], got {err!r}")
    return err


def _check_baseline(errors: Mapping, baseline: Mapping, what: str = "baseline") -> None:
    missing = [c for c in errors if c not in baseline]
    if missing:
        raise KeyError(
            f"corruptions missing from the {what}: {', '.join(sorted(missing))}. "
            f"The {what} has: {', '.join(sorted(baseline))}. Pass a baseline that covers them "
            f"(the AlexNet baseline covers only the 15 ImageNet-C corruptions)."
        )


def corruption_errors(errors: Mapping[str, float | Sequence[float]],
                      baseline: Mapping[str, float | Sequence[float]] | None = None) -> dict[str, float]:
    """Corruption Error per corruption: ``CE_c = E_c / E_c^baseline`` (baseline: AlexNet by default).

    ``errors`` maps corruption -> error averaged over severities (or a sequence of per-severity errors,
    averaged here).  Raises ``KeyError`` naming every corruption absent from the baseline.
    """
    baseline = ALEXNET_ERRORS if baseline is None else baseline
    if not errors:
        raise ValueError("no corruption errors given")
    _check_baseline(errors, baseline)
    out = {}
    for name, value in errors.items():
        base = _mean_error(baseline[name], name)
        if base <= 0:
            raise ValueError(f"baseline error for '{name}' is {base}; CE is undefined")
        out[name] = _mean_error(value, name) / base
    return out


def mce(errors: Mapping[str, float | Sequence[float]],
        baseline: Mapping[str, float | Sequence[float]] | None = None) -> float:
    """Mean Corruption Error: the mean of :func:`corruption_errors` over the corruptions given.

    With the default AlexNet baseline and all 15 corruptions this is the ImageNet-C mCE (as a fraction;
    multiply by 100 for the usual percentage).
    """
    ces = corruption_errors(errors, baseline)
    return float(np.mean(list(ces.values())))


def relative_mce(errors: Mapping[str, float | Sequence[float]], clean_error: float,
                 baseline_errors: Mapping[str, float | Sequence[float]] | None = None,
                 baseline_clean_error: float | None = None) -> float:
    """Relative mCE: mean over corruptions of ``(E_c - E_clean) / (E_c^base - E_clean^base)``."""
    baseline_errors = ALEXNET_ERRORS if baseline_errors is None else baseline_errors
    baseline_clean_error = ALEXNET_CLEAN_ERROR if baseline_clean_error is None else baseline_clean_error
    if not errors:
        raise ValueError("no corruption errors given")
    _check_baseline(errors, baseline_errors)
    clean = _mean_error(clean_error, "clean")
    base_clean = _mean_error(baseline_clean_error, "baseline clean")
    values = []
    for name, value in errors.items():
        denom = _mean_error(baseline_errors[name], name) - base_clean
        if denom == 0:
            raise ValueError(f"baseline error for '{name}' equals the baseline clean error; "
                             "relative CE is undefined")
        values.append((_mean_error(value, name) - clean) / denom)
    return float(np.mean(values))


def unnormalized_mce(errors: Mapping[str, float | Sequence[float]]) -> float:
    """Plain mean of the corruption errors (no baseline), as used for CIFAR-10-C style reports."""
    if not errors:
        raise ValueError("no corruption errors given")
    return float(np.mean([_mean_error(v, k) for k, v in errors.items()]))


def robustbench_corruption_scores(accuracy: Mapping[tuple[str, int], float],
                                  baseline: Mapping[tuple[str, int], float] | None = None) -> dict[str, float]:
    """RobustBench's corruption numbers (``robustbench/eval.py::corruptions_evaluation``) from accuracies
    per ``(corruption, severity)``: ``corruptions_acc`` = the plain mean of those accuracies and, with a
    ``baseline`` (AlexNet's accuracies per (corruption, severity), e.g.
    ``data.robustbench.alexnet_imagenet_c()``), ``corruptions_mce`` = mean over corruptions of
    ``mean_s(1 - acc) / mean_s(1 - acc_baseline)``. Fractions; a corruption whose severities the
    baseline lacks raises ``KeyError`` naming it."""
    if not accuracy:
        raise ValueError("no corruption accuracies given")
    out = {"corruptions_acc": float(np.mean([float(v) for v in accuracy.values()]))}
    if baseline is None:
        return out
    by_c: dict[str, list[int]] = {}
    for c, s in accuracy:
        by_c.setdefault(c, []).append(int(s))
    missing = sorted(f"{c} s{s}" for c, ss in by_c.items() for s in ss if (c, s) not in baseline)
    if missing:
        raise KeyError(f"the mCE baseline has no accuracy for {', '.join(missing[:5])}"
                       f"{' ...' if len(missing) > 5 else ''}")
    ratios = []
    for c, ss in by_c.items():
        base = float(np.mean([1.0 - baseline[(c, s)] for s in ss]))
        if base <= 0:
            raise ValueError(f"baseline error for '{c}' is {base}; CE is undefined")
        ratios.append(float(np.mean([1.0 - accuracy[(c, s)] for s in ss])) / base)
    out["corruptions_mce"] = float(np.mean(ratios))
    return out


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sort ascending, multiply the
    i-th smallest by (m - i), take the running maximum, cap at 1. Controls the family-wise error rate."""
    p = np.asarray(list(p_values), dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="mergesort")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(v) for v in out]


def bootstrap_rank_intervals(correct: np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                             seed: int = 0) -> list[tuple[int, int]]:
    """Rank intervals of models from paired per-sample outcomes ``correct`` (models x samples, 0/1): resample
    the samples with replacement ``n_boot`` times, rank the models by accuracy in each resample (1 = best,
    ties share the best rank), and return each model's percentile interval of ranks. The resampled samples
    are the same for every model (a paired bootstrap), as in Hall & Miller's ranking bootstrap."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"correct must be models x samples with at least one sample, got shape {c.shape}")
    _z(confidence)
    rng = np.random.default_rng(seed)
    k, n = c.shape
    ranks = np.empty((n_boot, k))
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(stop - start)])
        acc = counts @ c.T / n  # (draws, models)
        ranks[start:stop] = 1 + (acc[:, None, :] > acc[:, :, None]).sum(axis=2)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(ranks, [alpha / 2, 1 - alpha / 2], axis=0, method="inverted_cdf")
    return [(int(a), int(b)) for a, b in zip(lo, hi)]


# --------------------------------------------------------------------------------------------------
# Out-of-distribution detection (ImageNet-O protocol)
# --------------------------------------------------------------------------------------------------

def _binary_curve(y_true: np.ndarray, score: np.ndarray):
    """Cumulative true/false positives at each distinct threshold, scores sorted descending."""
    order = np.argsort(-score, kind="mergesort")
    score, y_true = score[order], y_true[order]
    distinct = np.where(np.diff(score))[0]
    idx = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[idx].astype(np.float64)
    fps = (idx + 1 - tps).astype(np.float64)
    return tps, fps


def _average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    tps, fps = _binary_curve(y_true, score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def _auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    # Mann-Whitney U with average ranks for ties.
    ranks = stats.rankdata(score)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    u = ranks[y_true.astype(bool)].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _fpr_at_tpr(y_true: np.ndarray, score: np.ndarray, tpr_level: float) -> float:
    tps, fps = _binary_curve(y_true, score)
    tpr = tps / tps[-1]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.zeros_like(fps)
    i = int(np.searchsorted(tpr, tpr_level - 1e-12, side="left"))
    return float(fpr[min(i, len(fpr) - 1)])


def ood_metrics(conf_in, conf_out, tpr_level: float = 0.95) -> dict[str, float]:
    """OOD-detection metrics with OOD as the positive class and anomaly score ``-confidence``.

    ``conf_in`` / ``conf_out``: confidence (max softmax probability) on in-distribution and
    out-of-distribution samples.  Returns

    - ``aupr``: average precision (step-wise, as scikit-learn's ``average_precision_score``) of
      detecting OOD samples - the ImageNet-O headline number;
    - ``auroc``: area under the ROC curve (ties count one half);
    - ``fpr95``: the fraction of in-distribution samples flagged as OOD at the highest threshold that
      still flags at least ``tpr_level`` (95 %) of the OOD samples;
    - ``n_in``, ``n_out``, ``base_rate`` (fraction of OOD samples: the AUPR of a random detector).

    Checked against the RPC-Attention paper's ``Robust/calibration_tools.py`` ``get_measures(out_score,
    in_score)``: ``aupr`` and ``auroc`` equal scikit-learn's ``average_precision_score`` and
    ``roc_auc_score`` there (tests/test_imagenet_o.py compares them end to end).  ``fpr95`` is NOT the
    paper's ``fpr_and_fdr_at_recall``: that one takes the threshold whose recall is *nearest* 0.95
    (possibly below it; among equal recalls the lowest threshold), this one the highest threshold with
    recall >= 0.95, so the two can differ (often, with tied scores).  Which in-distribution set
    and class mask feed ``conf_in`` / ``conf_out`` is the protocol's business (:mod:`robustbench_rpc.evaluation.ood`).
    """
    conf_in = np.asarray(conf_in, dtype=np.float64).ravel()
    conf_out = np.asarray(conf_out, dtype=np.float64).ravel()
    if conf_in.size == 0 or conf_out.size == 0:
        raise ValueError(f"need both in- and out-of-distribution samples, got {conf_in.size} and "
                         f"{conf_out.size}")
    if not (np.all(np.isfinite(conf_in)) and np.all(np.isfinite(conf_out))):
        raise ValueError("confidences must be finite")
    score = -np.concatenate([conf_out, conf_in])
    y = np.r_[np.ones(conf_out.size), np.zeros(conf_in.size)]
    return {
        "aupr": _average_precision(y, score),
        "auroc": _auroc(y, score),
        "fpr95": _fpr_at_tpr(y, score, tpr_level),
        "n_in": int(conf_in.size),
        "n_out": int(conf_out.size),
        "base_rate": float(conf_out.size / y.size),
    }


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------

def ece(confidences, correct, n_bins: int = 15) -> float:
    """Expected Calibration Error with ``n_bins`` equal-width bins ``(k/n, (k+1)/n]``.

    ``ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``.  A confidence of exactly 0 goes to the first bin.
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != corr.shape:
        raise ValueError(f"confidences and correct differ in length: {conf.size} vs {corr.size}")
    if conf.size == 0:
        raise ValueError("no samples")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs(corr[m].mean() - conf[m].mean())
    return float(total / conf.size)


# --------------------------------------------------------------------------------------------------
# Confidence intervals and paired comparison
# --------------------------------------------------------------------------------------------------

def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (no continuity correction).

    ``n == 0`` gives the uninformative interval (0, 1).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _as_bool(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != bool:
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must hold booleans or 0/1 values")
        arr = arr.astype(bool)
    return arr.ravel()


_VECTORISED_STATS = {np.mean: np.mean, np.median: np.median, np.sum: np.sum, np.std: np.std,
                     np.var: np.var}


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(values)``; deterministic for a given ``seed``.

    numpy reductions (mean, median, sum, std, var) are evaluated vectorised in chunks; any other
    callable is called once per resample.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    _z(confidence)
    rng = np.random.default_rng(seed)
    n = v.size
    out = np.empty(n_boot)
    vec = _VECTORISED_STATS.get(stat)
    if vec is not None:
        chunk = max(1, min(n_boot, 4_000_000 // n))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            idx = rng.integers(0, n, size=(stop - start, n))
            out[start:stop] = vec(v[idx], axis=1)
    else:
        for i in range(n_boot):
            out[i] = stat(v[rng.integers(0, n, size=n)])
    alpha = 1.0 - confidence
    lo, hi = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def accuracy_ci(correct, confidence: float = 0.95, method: str = "wilson",
                n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy and its CI: ``(acc, lo, hi)``; ``method`` is ``"wilson"`` or ``"bootstrap"``."""
    c = _as_bool(correct, "correct")
    if c.size == 0:
        raise ValueError("no samples")
    acc = float(c.mean())
    if method == "wilson":
        lo, hi = wilson_interval(int(c.sum()), int(c.size), confidence)
    elif method == "bootstrap":
        lo, hi = bootstrap_ci(c.astype(np.float64), np.mean, n_boot=n_boot, confidence=confidence,
                              seed=seed)
    else:
        raise ValueError(f"unknown CI method '{method}'; use 'wilson' or 'bootstrap'")
    return acc, lo, hi


MCNEMAR_EXACT_BELOW = 25
"""Discordant-pair count below which :func:`mcnemar` uses the exact binomial test."""


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size} "
                         "(align both models on the same sample ids first)")
    return a, b


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of equal accuracy for two models on the same samples.

    ``n01``: samples model A gets wrong and model B right; ``n10``: A right, B wrong.  With
    ``n01 + n10 < 25`` the exact two-sided binomial test (``Binomial(n01+n10, 1/2)``) is used and the
    statistic is ``min(n01, n10)``; otherwise the chi-square statistic with continuity correction
    ``(|n01 - n10| - 1)^2 / (n01 + n10)`` on 1 degree of freedom.  No discordant pairs: p = 1.
    """
    a, b = _paired(correct_a, correct_b)
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    n = n01 + n10
    if n == 0:
        return {"n01": 0, "n10": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if n < MCNEMAR_EXACT_BELOW:
        k = min(n01, n10)
        p = min(1.0, 2.0 * float(stats.binom.cdf(k, n, 0.5)))
        return {"n01": n01, "n10": n10, "statistic": float(k), "p_value": p, "method": "exact"}
    statistic = (abs(n01 - n10) - 1.0) ** 2 / n
    return {"n01": n01, "n10": n10, "statistic": float(statistic),
            "p_value": float(stats.chi2.sf(statistic, df=1)), "method": "chi2_cc"}


def paired_delta_ci(correct_a, correct_b, confidence: float = 0.95) -> tuple[float, float, float]:
    """CI on ``acc_a - acc_b`` for paired samples: ``(delta, lo, hi)``.

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, method 10): Wilson
    intervals of both accuracies combined with the phi correlation of the paired outcomes.  Unlike the
    Wald interval it stays within [-1, 1] and behaves for accuracies near 0 or 1.
    """
    a, b = _paired(correct_a, correct_b)
    n = a.size
    if n == 0:
        raise ValueError("no samples")
    both = int(np.sum(a & b))
    n10 = int(np.sum(a & ~b))
    n01 = int(np.sum(~a & b))
    neither = n - both - n10 - n01
    p1, p2 = (both + n10) / n, (both + n01) / n
    l1, u1 = wilson_interval(both + n10, n, confidence)
    l2, u2 = wilson_interval(both + n01, n, confidence)
    denom = (both + n10) * (n01 + neither) * (both + n01) * (n10 + neither)
    phi = 0.0 if denom == 0 else (both * neither - n10 * n01) / math.sqrt(denom)
    delta = p1 - p2
    d_lo = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    d_hi = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return float(delta), max(-1.0, delta - d_lo), min(1.0, delta + d_hi)


def topk_correct(logits, labels, k: int = 1):
    """Per-sample top-k correctness: True where the label is among the k largest logits.

    Accepts torch tensors (returns a bool tensor on the same device) or numpy arrays (returns a bool
    array).  Labels outside ``[0, num_classes)`` (e.g. -1 for OOD samples) are never correct.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(logits, torch.Tensor):
        labels = torch.as_tensor(labels, device=logits.device)
        k = min(k, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        return (top == labels.unsqueeze(-1)).any(dim=-1)
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    return np.any(top == labels[..., None], axis=-1)
