"""Numbers behind the tables and plots, computed from stored per-sample outcomes via ``metrics``.

Rule kept everywhere: a statistic is computed only from complete (model, evaluation) pairs; anything
depending on an incomplete pair is missing (NaN / None), never a number from a partial sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics
from ..evalspec import THREAT_DEFAULTS, eps_label as format_eps, threat_of
from .data import RunData, eps_key, is_imagenet, paired
from .protocol import eval_label
from ..data.robustbench import IMAGENET_SUBSET, alexnet_imagenet_c

NAN = float("nan")


# ----------------------------------------------------------------------------------------- worst case
@dataclass
class WorstGroup:
    dataset: str
    norm: str
    eps: float
    eval_keys: list[str]
    threat: tuple = tuple(THREAT_DEFAULTS.values())

    @property
    def label(self) -> str:
        space = " (normalized eps)" if self.threat[0] == "normalized" else ""
        return f"worst case over {len(self.eval_keys)} attacks {self.norm} eps={format_eps(self.eps, self.norm)}{space}"


def worst_groups(data: RunData) -> list[WorstGroup]:
    """Attack evaluations grouped by (dataset, norm, eps, threat model); groups of two or more attacks."""
    groups: dict[tuple, list[str]] = {}
    for _, row in data.evals_of("attack").iterrows():
        p = data.info(row["eval_key"])["params"]
        key = (row["dataset"], str(p.get("norm", "?")), eps_key(p.get("eps")), threat_of(p))
        groups.setdefault(key, []).append(row["eval_key"])
    return [WorstGroup(d, n, e, keys, t) for (d, n, e, t), keys in groups.items() if len(keys) >= 2]


def worst_case(data: RunData, model_key: str, group: WorstGroup) -> tuple[pd.DataFrame | None, str]:
    """Per-sample AND of correct1 (and of correct5) over every attack of the group; (None, why) when an
    attack is incomplete or the attacks were run on different samples."""
    frames = []
    for e in group.eval_keys:
        if not data.complete(model_key, e):
            return None, "incomplete"
        frames.append(data.outcomes(model_key, e))
    idx = frames[0].index
    if any(not f.index.equals(idx) for f in frames[1:]):
        return None, "attacks evaluated on different sample ids"
    out = pd.DataFrame({
        "correct1": np.logical_and.reduce([f["correct1"].to_numpy().astype(bool) for f in frames]),
        "correct5": np.logical_and.reduce([f["correct5"].to_numpy().astype(bool) for f in frames]),
        "confidence": np.nan}, index=idx)
    return out, ""


def acc_stats(correct) -> tuple[float, float, float]:
    c = np.asarray(correct).astype(bool)
    if c.size == 0:
        return NAN, NAN, NAN
    return metrics.accuracy_ci(c)


# ----------------------------------------------------------------------------------------- pairwise
@dataclass
class Item:
    """One row of a model comparison: a stored evaluation, or a worst case over attacks."""
    label: str
    kind: str
    dataset: str
    eval_key: str | None = None
    group: WorstGroup | None = None

    def outcomes(self, data: RunData, model_key: str) -> pd.DataFrame | None:
        if self.group is not None:
            return worst_case(data, model_key, self.group)[0]
        return data.outcomes(model_key, self.eval_key) if data.complete(model_key, self.eval_key) else None


def comparison_items(data: RunData) -> list[Item]:
    items = []
    for _, row in data.evals.iterrows():
        if row["kind"] == "ood":  # labels of OOD samples are not classes: no accuracy to compare
            continue
        items.append(Item(eval_label(data.info(row["eval_key"])), row["kind"], row["dataset"],
                          eval_key=row["eval_key"]))
    items += [Item(g.label, "attack (worst case)", g.dataset, group=g) for g in worst_groups(data)]
    return items


def pairwise(data: RunData, a: str, b: str) -> pd.DataFrame:
    """Per comparison item: accuracies of a and b (fractions, Wilson CI), paired delta a - b with
    Newcombe CI, McNemar test, n paired samples. Items where either side is incomplete are NaN."""
    records = []
    for it in comparison_items(data):
        rec = {"evaluation": it.label, "kind": it.kind, "dataset": it.dataset, "eval_key": it.eval_key,
               "n": 0, "complete": False}
        oa, ob = it.outcomes(data, a), it.outcomes(data, b)
        for k in ("acc_a", "acc_a_lo", "acc_a_hi", "acc_b", "acc_b_lo", "acc_b_hi", "delta", "delta_lo",
                  "delta_hi", "p_value"):
            rec[k] = NAN
        rec["n01"] = rec["n10"] = None
        rec["note"] = ""
        if oa is not None and ob is not None:
            ca, cb, n, n_union = paired(oa, ob)
            if n:
                rec.update(n=n, complete=True)
                rec["acc_a"], rec["acc_a_lo"], rec["acc_a_hi"] = acc_stats(ca)
                rec["acc_b"], rec["acc_b_lo"], rec["acc_b_hi"] = acc_stats(cb)
                rec["delta"], rec["delta_lo"], rec["delta_hi"] = metrics.paired_delta_ci(ca, cb)
                test = metrics.mcnemar(ca, cb)
                rec.update(p_value=test["p_value"], n01=test["n01"], n10=test["n10"])
                if n != n_union:
                    rec["note"] = f"paired on the {n} of {n_union} sample ids both models have"
        else:
            rec["note"] = "incomplete"
        records.append(rec)
    return pd.DataFrame.from_records(records)


# ----------------------------------------------------------------------------------------- corruption
@dataclass
class CorruptionResult:
    dataset: str
    corruptions: list[str]
    severities: list[int]
    # per model: corruption -> list of per-severity errors (None when that corruption is incomplete)
    errors: dict[str, dict[str, list[float] | None]]
    in_mce: list[str]              # corruptions entering the means
    baseline_label: str
    baseline: dict[str, float | list[float]] | None
    baseline_clean: float | None
    clean_eval: str | None
    clean_note: str
    rows: list[dict]               # per model headline numbers (fractions)
    notes: list[str]
    # corruption -> [(severity, eval_key)] sorted by severity
    eval_keys: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # corruption -> why its normalized CE is an unstable ratio (reference error too small)
    unstable: dict[str, str] = field(default_factory=dict)


def _corruption_of(info: dict) -> str:
    return str(info["params"].get("corruption", info["name"]))


def find_clean_eval(data: RunData, corruption_evals: pd.DataFrame) -> tuple[str | None, str]:
    """The clean evaluation a corruption dataset is measured against (for relative mCE): params
    ``clean_eval_key`` if given, else the one clean evaluation of the same base dataset ('cifar10-c' ->
    'cifar10', 'imagenet-c' -> 'imagenet' or 'imagenet-val'); never a guess across datasets."""
    clean = data.evals_of("clean")
    for k in corruption_evals["eval_key"]:
        ck = data.info(k)["params"].get("clean_eval_key")
        if ck:
            return (ck, "") if ck in set(clean["eval_key"]) else (None, f"clean_eval_key {ck!r} is not a clean evaluation")
    dataset = str(corruption_evals.iloc[0]["dataset"]).lower()
    base = dataset
    for suffix in ("-c", "_c", "-corrupted", "c"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = base.rstrip("-_")
    names = clean["dataset"].str.lower()
    hits = clean[names == base]
    if hits.empty:  # e.g. 'imagenet-c' -> clean dataset 'imagenet-val'
        hits = clean[names.str.startswith(base + "-") | names.str.startswith(base + "_")]
    if len(hits) == 1:
        return str(hits.iloc[0]["eval_key"]), ""
    return None, (f"no unique clean evaluation of dataset {base!r} for {dataset!r} (set params.clean_eval_key); "
                  "relative mCE not computed")


def _errors_by_corruption(data: RunData, m: str, by_c: dict[str, list[tuple[int, str]]]) -> dict:
    out = {}
    for c, sev_keys in by_c.items():
        if all(data.complete(m, e) for _, e in sev_keys):
            out[c] = [1.0 - float(data.agg_row(m, e)["top1"]) for _, e in sev_keys]
        else:
            out[c] = None
    return out


def corruption_results(data: RunData) -> list[CorruptionResult]:
    """Per corruption dataset: errors, CE, mCE (with bootstrap CIs in ``row['ce_ci']`` and
    ``row['mce_ci']``) and the corruptions whose CE is unstable. Cached on ``data``."""
    if "corruption_results" not in data._cache:
        data._cache["corruption_results"] = _corruption_results(data)
    return data._cache["corruption_results"]


def _corruption_results(data: RunData) -> list[CorruptionResult]:
    ev = data.evals_of("corruption")
    results = []
    for dataset in dict.fromkeys(ev["dataset"]):
        group = ev[ev["dataset"] == dataset]
        by_c: dict[str, list[tuple[int, str]]] = {}
        for k in group["eval_key"]:
            info = data.info(k)
            by_c.setdefault(_corruption_of(info), []).append((int(info["params"].get("severity", 0)), k))
        for c in by_c:
            by_c[c].sort()
        severities = sorted({s for v in by_c.values() for s, _ in v})
        errors = {m: _errors_by_corruption(data, m, by_c) for m in data.model_keys}
        notes: list[str] = []
        clean_eval, clean_note = find_clean_eval(data, group)
        if clean_note:
            notes.append(clean_note)
        if is_imagenet(dataset):
            in_mce, baseline, baseline_clean, label = _alexnet_baseline(data, group, by_c, severities, notes)
        else:
            in_mce, baseline, baseline_clean, label = _reference_baseline(data, dataset, by_c, errors, clean_eval,
                                                                          notes)
        rows = [_corruption_row(data, m, errors[m], by_c, in_mce, baseline, baseline_clean, clean_eval, notes)
                for m in data.model_keys]
        res = CorruptionResult(dataset, list(by_c), severities, errors, in_mce, label, baseline,
                               baseline_clean, clean_eval, clean_note, rows, notes, by_c)
        if baseline is not None:
            _ce_intervals(data, res)
        results.append(res)
    return results


def _on_robustbench_ids(data: RunData, group: pd.DataFrame) -> bool:
    """Whether a corruption dataset's images are exactly RobustBench's 5,000 ImageNet ids (its list)."""
    subsets = [data.info(k).get("subset") or {} for k in group["eval_key"]]
    return bool(subsets) and all(s.get("method") == "file" and str(s.get("file")) == IMAGENET_SUBSET
                                 and s.get("entries") == 5000 for s in subsets)


def _alexnet_baseline(data: RunData, group: pd.DataFrame, by_c: dict, severities: list[int],
                      notes: list[str]) -> tuple[list[str], dict | None, float | None, str]:
    """ImageNet-C: AlexNet's errors; on RobustBench's 5,000 ids its per-severity rows on those same images
    (RobustBench's mCE), else Hendrycks & Dietterich's full-set errors."""
    extra = [c for c in by_c if c not in metrics.ALEXNET_ERRORS]
    if extra:
        notes.append(f"not in the mCE (no AlexNet baseline): {', '.join(extra)}")
    if _on_robustbench_ids(data, group):
        rows = alexnet_imagenet_c()
        in_mce = [c for c in by_c if c not in extra and all((c, s) in rows for s, _ in by_c[c])]
        baseline = {c: [1.0 - rows[(c, s)] for s, _ in by_c[c]] for c in in_mce}
        label = "AlexNet on RobustBench's 5,000 ImageNet-C ids (its unaggregated_results.csv)"
    else:
        in_mce = [c for c in by_c if c in metrics.ALEXNET_ERRORS]
        baseline = {c: metrics.ALEXNET_ERRORS[c] for c in in_mce}
        label = "AlexNet (Hendrycks & Dietterich, 2019)"
        if severities != [1, 2, 3, 4, 5]:
            notes.append(f"the AlexNet baseline averages severities 1-5; this run used severities "
                         f"{severities}, so normalized numbers are not comparable to published mCE")
    missing15 = [c for c in metrics.IMAGENET_C_CORRUPTIONS if c not in by_c]
    if missing15:
        notes.append(f"{len(missing15)} of the 15 ImageNet-C corruptions were not evaluated "
                     f"({', '.join(missing15)}): the mCE is over {len(in_mce)} corruptions")
    return in_mce, baseline, metrics.ALEXNET_CLEAN_ERROR, label


def _reference_baseline(data: RunData, dataset: str, by_c: dict, errors: dict, clean_eval: str | None,
                        notes: list[str]) -> tuple[list[str], dict | None, float | None, str]:
    """Other corrupted sets: the run's reference model is the baseline (when it completed them)."""
    in_mce, ref = list(by_c), data.reference_key
    baseline, baseline_clean = None, None
    if ref is None:
        notes.append("normalized and relative mCE need a reference model; " + data.reference_note)
        return in_mce, None, None, "none (" + data.reference_note + ")"
    ref_err = errors[ref]
    if all(ref_err[c] is not None for c in in_mce):
        baseline = {c: ref_err[c] for c in in_mce}
    else:
        notes.append(f"reference model {data.name(ref)} is incomplete on {dataset}: normalized mCE missing")
    if clean_eval and data.complete(ref, clean_eval):
        baseline_clean = 1.0 - float(data.agg_row(ref, clean_eval)["top1"])
    return in_mce, baseline, baseline_clean, f"reference model {data.name(ref)} of this run"


def _corruption_row(data: RunData, m: str, err: dict, by_c: dict, in_mce: list[str], baseline: dict | None,
                    baseline_clean: float | None, clean_eval: str | None, notes: list[str]) -> dict:
    """One model's CE per corruption, mCE (normalized, unnormalized, relative) over ``in_mce``."""
    row = {"model_key": m, "mce": NAN, "unnormalized_mce": NAN, "relative_mce": NAN, "ce": {}, "ce_ci": {},
           "mce_ci": (NAN, NAN)}
    for c in by_c:
        if err[c] is not None and baseline is not None and c in baseline:
            row["ce"][c] = metrics.corruption_errors({c: err[c]}, {c: baseline[c]})[c]
    if not (in_mce and all(err[c] is not None for c in in_mce)):
        return row
    sel = {c: err[c] for c in in_mce}
    row["unnormalized_mce"] = metrics.unnormalized_mce(sel)
    if baseline is None:
        return row
    row["mce"] = metrics.mce(sel, baseline)
    clean_err = 1.0 - float(data.agg_row(m, clean_eval)["top1"]) if clean_eval and data.complete(m, clean_eval) else None
    if clean_err is not None and baseline_clean is not None:
        try:
            row["relative_mce"] = metrics.relative_mce(sel, clean_err, baseline, baseline_clean)
        except ValueError as exc:
            notes.append(f"relative mCE of {data.name(m)} undefined: {exc}")
    return row


# ------------------------------------------------------------------------------ CE confidence intervals
#: a CE ratio err / err_ref is flagged unstable when the reference's error is below this fraction ...
CE_MIN_REF_ERROR = 0.05
#: ... or when the reference made fewer errors than this (summed over the severities)
CE_MIN_REF_ERRORS = 10
N_BOOT = 1000
BOOT_SEED = 0


def _boot_counts(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """(draws, n) resampling counts of a nonparametric bootstrap over n items."""
    idx = rng.integers(0, n, size=(draws, n)) + (np.arange(draws) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float64)


def _pct_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval without interpolation (so an infinite draw gives an infinite bound)."""
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return NAN, NAN
    a = (1.0 - confidence) / 2
    return float(np.quantile(draws, a, method="lower")), float(np.quantile(draws, 1 - a, method="higher"))


def _per_sample_errors(data: RunData, m: str, keys: list[tuple[int, str]]) -> pd.Series:
    """Per sample id: top-1 error averaged over the given severities (ids present in all of them)."""
    frames = [1.0 - data.outcomes(m, e)["correct1"].astype(float) for _, e in keys]
    return pd.concat(frames, axis=1, join="inner").mean(axis=1)


def _ce_intervals(data: RunData, res: CorruptionResult, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> None:
    """95% percentile-bootstrap CIs of CE_c and mCE, resampling images (the same draw for every
    corruption, severity and for the reference model, which saw the same images), and the
    corruptions whose reference error is too small for a stable ratio."""
    ref = None if is_imagenet(res.dataset) else data.reference_key
    cs = [c for c in res.in_mce if c in res.baseline]
    if ref is not None:
        for c in cs:
            keys = res.eval_keys[c]
            n_err = sum(int(round((1.0 - float(data.agg_row(ref, e)["top1"])) * int(data.agg_row(ref, e)["n"])))
                        for _, e in keys)
            n_img = sum(int(data.agg_row(ref, e)["n"]) for _, e in keys)
            err = float(np.mean(res.baseline[c]))
            if err < CE_MIN_REF_ERROR or n_err < CE_MIN_REF_ERRORS:
                res.unstable[c] = (f"reference error {100 * err:.1f}% ({n_err} errors in {n_img} corrupted "
                                   f"images) is below {100 * CE_MIN_REF_ERROR:.0f}% or {CE_MIN_REF_ERRORS} errors: "
                                   "CE = err / err_ref is an unstable ratio")
    for m, row in zip(data.model_keys, res.rows):
        have = [c for c in cs if c in row["ce"]]
        if not have:
            continue
        a = pd.concat({c: _per_sample_errors(data, m, res.eval_keys[c]) for c in have}, axis=1, join="inner")
        if ref is not None:
            b = pd.concat({c: _per_sample_errors(data, ref, res.eval_keys[c]) for c in have}, axis=1, join="inner")
            ids = a.index.intersection(b.index)
            a, b = a.loc[ids], b.loc[ids]
        n = len(a)
        if n == 0:
            continue
        rng = np.random.default_rng(seed)
        av = a.to_numpy()
        bv = b.to_numpy() if ref is not None else None
        ce_draws = []
        chunk = max(1, min(n_boot, 2_000_000 // n))
        for start in range(0, n_boot, chunk):
            w = _boot_counts(rng, n, min(chunk, n_boot - start))
            a_star = w @ av / n
            if bv is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    ce_draws.append(a_star / (w @ bv / n))
            else:  # a fixed published baseline: CE scales with the model's own mean error
                point = np.array([row["ce"][c] for c in have])
                mean_a = av.mean(axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ce_draws.append(np.where(mean_a > 0, a_star / mean_a, 1.0) * point)
        draws = np.vstack(ce_draws)  # (n_boot, len(have))
        if ref is not None and m == ref:
            draws = np.where(np.isnan(draws), 1.0, draws)  # 0/0: the reference against itself
        for j, c in enumerate(have):
            row["ce_ci"][c] = _pct_interval(draws[:, j])
        if finite(row["mce"]) and set(have) == set(res.in_mce):
            row["mce_ci"] = _pct_interval(draws.mean(axis=1))


def severity_curve(data: RunData, res: CorruptionResult, model_key: str) -> pd.DataFrame:
    """Accuracy per severity averaged over the corruptions whose every severity is complete, with a
    pooled Wilson interval (treats images as independent). Columns: severity, acc, lo, hi, k, n."""
    ev = data.evals_of("corruption")
    ev = ev[ev["dataset"] == res.dataset]
    done = [c for c in res.corruptions if res.errors[model_key][c] is not None]
    records = []
    for sev in res.severities:
        accs, k, n = [], 0, 0
        for e in ev["eval_key"]:
            info = data.info(e)
            if _corruption_of(info) in done and int(info["params"].get("severity", 0)) == sev:
                r = data.agg_row(model_key, e)
                accs.append(float(r["top1"]))
                k += int(round(float(r["top1"]) * r["n"]))
                n += int(r["n"])
        if n:
            lo, hi = metrics.wilson_interval(k, n)
            records.append({"severity": sev, "acc": float(np.mean(accs)), "lo": lo, "hi": hi, "k": k, "n": n})
    return pd.DataFrame.from_records(records, columns=["severity", "acc", "lo", "hi", "k", "n"])


# ------------------------------------------------------------------------------------------------ ood
def ood_result(data: RunData, model_key: str, eval_key: str) -> tuple[dict | None, str]:
    """AUPR / AUROC / FPR95 (+ ``aupr_lo``, ``aupr_hi``: 95% bootstrap CI) of one model on one OOD
    evaluation, or (None, why). Cached on ``data``."""
    key = ("ood_result", model_key, eval_key)
    if key not in data._cache:
        data._cache[key] = _ood_result(data, model_key, eval_key)
    return data._cache[key]


def _ood_result(data: RunData, model_key: str, eval_key: str) -> tuple[dict | None, str]:
    info = data.info(eval_key)
    in_key = info["params"].get("in_eval_key")
    if not in_key:
        return None, "params.in_eval_key not set"
    if in_key not in set(data.evals["eval_key"]):
        return None, f"in_eval_key {in_key!r} is not a stored evaluation"
    out_mask = info["params"].get("class_mask")
    in_mask = data.info(in_key)["params"].get("class_mask")
    if out_mask != in_mask:  # the two confidences must come from the same softmax
        return None, (f"in- and out-of-distribution confidences use different class masks "
                      f"({in_mask or 'none'} vs {out_mask or 'none'})")
    if not data.complete(model_key, eval_key) or not data.complete(model_key, in_key):
        return None, "incomplete"
    conf_in = data.outcomes(model_key, in_key)["confidence"].to_numpy()
    conf_out = data.outcomes(model_key, eval_key)["confidence"].to_numpy()
    res = metrics.ood_metrics(conf_in, conf_out)
    res["aupr_lo"], res["aupr_hi"] = _aupr_interval(conf_in, conf_out)
    return res, ""


def _aupr_interval(conf_in: np.ndarray, conf_out: np.ndarray, n_boot: int = N_BOOT,
                   seed: int = BOOT_SEED) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the AUPR, resampling in- and out-of-distribution samples
    separately (the OOD base rate stays fixed)."""
    conf_in = np.asarray(conf_in, dtype=np.float64)
    conf_out = np.asarray(conf_out, dtype=np.float64)
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(conf_out.size), np.zeros(conf_in.size)]
    draws = np.empty(n_boot)
    for i in range(n_boot):
        s_out = conf_out[rng.integers(0, conf_out.size, conf_out.size)]
        s_in = conf_in[rng.integers(0, conf_in.size, conf_in.size)]
        draws[i] = metrics._average_precision(y, -np.concatenate([s_out, s_in]))
    return _pct_interval(draws)


def finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))
