"""The headline table: one row per model, the paper's table shape, first in the report."""
from __future__ import annotations

import pandas as pd

from .. import metrics
from ..evalspec import eps_label as format_eps, is_adaptive, threat_of, threat_text
from .compute import NAN, WorstGroup, acc_stats, corruption_results, finite, ood_result, worst_case, worst_groups
from .data import RunData, eps_key, slug
from .protocol import attack_display, eval_label, patch_label, threat_suffix
from .render import Table, fmt_ci, fmt_delta, fmt_num, pct
from ..evaluation.ood import protocol_of


def _headline_clean_evals(data: RunData) -> list[str]:
    """Clean evaluations shown in the headline: all but the class-masked in-distribution sets of an OOD
    protocol (e.g. the 200 ImageNet-O classes), which are not a model's clean accuracy."""
    masked_in = {data.info(e)["params"].get("in_eval_key") for e in data.evals_of("ood")["eval_key"]
                 if data.info(e)["params"].get("class_mask")}
    return [e for e in data.evals_of("clean")["eval_key"] if e not in masked_in]


#: one headline column: (header, source table, getter(model key) -> (text, value, lo, hi), eval key or None)
Column = tuple


def _acc_getter(data: RunData, e: str):
    def get(m):
        r = data.agg_row(m, e)
        if not r["complete"]:
            return None, NAN, NAN, NAN
        return fmt_ci(r["top1"], r["top1_lo"], r["top1_hi"]), r["top1"], r["top1_lo"], r["top1_hi"]
    return get


def _worst_getter(data: RunData, g):
    def get(m):
        wc, _ = worst_case(data, m, g)
        if wc is None:
            return None, NAN, NAN, NAN
        a = acc_stats(wc["correct1"])
        return fmt_ci(*a), *a
    return get


def _group(data: RunData, keys: list[str]) -> WorstGroup:
    """The worst case over ``keys`` (attacks of one budget)."""
    info = data.info(keys[0])
    p = info["params"]
    return WorstGroup(info["dataset"], str(p.get("norm", "?")), eps_key(p.get("eps")), keys, threat_of(p))


def _outcomes_of(data: RunData, m: str, keys: list[str]):
    """Per-sample top-1 of one attack or the worst case over several (None when incomplete)."""
    if len(keys) == 1:
        return data.outcomes(m, keys[0])["correct1"] if data.complete(m, keys[0]) else None
    wc, _ = worst_case(data, m, _group(data, keys))
    return None if wc is None else wc["correct1"]


def _gap_getter(data: RunData, standard: list[str], every: list[str]):
    """Adaptive minus standard worst case, paired on the same samples, with Newcombe's 95% CI."""
    def get(m):
        s, a = _outcomes_of(data, m, standard), _outcomes_of(data, m, every)
        if s is None or a is None or not s.index.equals(a.index):
            return None, NAN, NAN, NAN
        d, lo, hi = metrics.paired_delta_ci(a.to_numpy().astype(bool), s.to_numpy().astype(bool))
        return fmt_delta(d, lo, hi), d, lo, hi
    return get


def adaptive_columns(data: RunData, where: str, keys: list[str]) -> list[Column]:
    """Standard worst case, adaptive worst case (standard + adaptive attacks) and their paired difference at
    one budget; [] when the budget has no adaptive attack or no standard one."""
    standard = [k for k in keys if not is_adaptive(data.info(k)["name"], data.info(k)["params"])]
    if len(standard) in (0, len(keys)):
        return []
    names = lambda ks: ", ".join(dict.fromkeys(attack_display(data.info(k)["name"]) for k in ks))  # noqa: E731
    std_get = _acc_getter(data, standard[0]) if len(standard) == 1 else _worst_getter(data, _group(data, standard))
    return [(f"Standard {where} (worst of {names(standard)})", "attacks", std_get, None),
            (f"Adaptive {where} (worst of {names(keys)})", "attacks", _worst_getter(data, _group(data, keys)), None),
            (f"Adaptive - standard {where} (pp)", "attacks", _gap_getter(data, standard, keys), None)]


def adaptively_evaluated(data: RunData, m: str) -> bool:
    """Whether model ``m`` has a complete adaptive attack evaluation (``evalspec.is_adaptive``)."""
    return any(is_adaptive(data.info(e)["name"], data.info(e)["params"]) and data.complete(m, e)
               for e in data.evals_of("attack")["eval_key"])


def forward_column(data: RunData) -> tuple[list[Column], list[str]]:
    """Static or dynamic per model (model info ``dynamics``); a dynamic model without an adaptive
    evaluation says so."""
    if not any(data.dynamics(m) for m in data.model_keys):
        return [], []

    def get(m):
        kind = data.dynamics(m).get("kind", "unknown")
        if kind == "dynamic" and not adaptively_evaluated(data, m):
            kind = "dynamic, not adaptively evaluated"
        return kind, NAN, NAN, NAN
    line = ("Forward: static, or dynamic when the forward solves an optimization problem or calls autograd (declared "
            "by the model's modules, e.g. RPC with n_iter > 1, or detected as AutoAttack's check_dynamic does); "
            "standard attacks can overstate a dynamic model's robustness, so it counts only beside an adaptive "
            "evaluation (the adaptive preset: bpda, transfer, APGD-CE/DLR with restarts, Square 5000)")
    return [("Forward", "models", get, None)], [line]


def clean_columns(data: RunData) -> list[Column]:
    clean = _headline_clean_evals(data)
    multi_ds = len({data.info(e)["dataset"] for e in clean}) > 1
    return [("Clean" + (f" {data.info(e)['dataset']}" if multi_ds else ""), "clean", _acc_getter(data, e), e)
            for e in clean]


def attack_columns(data: RunData) -> tuple[list[Column], list[str]]:
    """One column per budget (dataset, norm, threat, eps): the attack, or the per-sample worst case when
    several share the budget; AutoAttack in its own columns. Returns (columns, protocol lines)."""
    ev = data.evals_of("attack")
    if ev.empty:
        return [], []
    norms = {str(data.info(k)["params"].get("norm", "?")) for k in ev["eval_key"]}
    a_multi_ds = ev["dataset"].nunique() > 1
    budgets: dict[tuple, list[str]] = {}
    for e in ev["eval_key"]:
        info = data.info(e)
        p = info["params"]
        budgets.setdefault((info["dataset"], str(p.get("norm", "?")), str(threat_of(p)), eps_key(p.get("eps"))),
                           []).append(e)
    groups = {(g.dataset, g.norm, str(g.threat), g.eps): g for g in worst_groups(data)}
    robust_cols, aa_cols, threats = [], [], {}

    def where(dataset, norm, eps, p):
        return ((f"{dataset} " if a_multi_ds else "") + (f"{norm} " if len(norms) > 1 else "")
                + format_eps(eps, norm) + threat_suffix(p))

    for key in sorted(budgets):
        dataset, norm, _, eps = key
        keys = budgets[key]
        p = data.info(keys[0])["params"]
        threats.setdefault(threat_text(p), []).append(where(dataset, norm, eps, p))
        names = [data.info(k)["name"] for k in keys]
        paired_cols = adaptive_columns(data, where(dataset, norm, eps, p), keys)
        if paired_cols:
            robust_cols += paired_cols
        elif len(keys) == 1 and str(names[0]).lower() != "autoattack":
            st = p.get("steps")
            label = attack_display(names[0]) + (f"-{st}" if st is not None and st != 1 else "")
            title = patch_label(str(names[0]), p) or f"{label} {where(dataset, norm, eps, p)}"
            robust_cols.append((title, "attacks", _acc_getter(data, keys[0]), keys[0]))
        elif len(keys) > 1:
            combined = ", ".join(attack_display(n) for n in dict.fromkeys(names))
            robust_cols.append((f"Robust {where(dataset, norm, eps, p)} (worst of {combined})", "attacks",
                                _worst_getter(data, groups[key]), None))
        for k, n in zip(keys, names):  # AutoAttack also on its own, so it can be set beside published numbers
            if str(n).lower() == "autoattack":
                pk = data.info(k)["params"]
                version = pk.get("version")
                tag = f" ({version})" if version and version != "standard" else ""
                aa_cols.append((f"AutoAttack{tag} {where(dataset, norm, eps, pk)}", "attacks", _acc_getter(data, k), k))
    protocol = [f"Threat model of {', '.join(w)}: {sentence}" for sentence, w in threats.items()]
    if groups:
        protocol.append("Robust ... (worst of A, B): per sample, correct only if correct under every listed attack "
                        "at that budget (the worst-case rows of the attack table)")
    if any(c[0].startswith("Adaptive - standard") for c in robust_cols):
        protocol.append("Standard / Adaptive (worst of ...): the per-sample worst case over the standard attacks, and "
                        "over the standard and the adaptive ones (bpda, transfer, attacks with adaptive = true) at that "
                        "budget; Adaptive - standard: their paired difference on the same samples in percentage "
                        "points, with Newcombe's 95% interval (the adaptive_gap trust check tests it, McNemar)")
    return robust_cols + aa_cols, protocol


def corruption_columns(data: RunData) -> tuple[list[Column], list[str]]:
    cols, protocol = [], []
    results = corruption_results(data)
    for res in results:
        normalized = res.baseline is not None
        header = ("mCE" if normalized else "mean CE, unnormalized") + (f" {res.dataset}" if len(results) > 1 else "")

        def get(m, res=res, normalized=normalized):
            row = res.rows[data.model_keys.index(m)]
            if not normalized:
                return fmt_num(row["unnormalized_mce"]), row["unnormalized_mce"], NAN, NAN
            if not finite(row["mce"]):
                return None, NAN, NAN, NAN
            lo, hi = row["mce_ci"]
            return (fmt_ci(row["mce"], lo, hi) if finite(lo) else fmt_num(row["mce"])), row["mce"], lo, hi
        cols.append((header, f"corruptions_{slug(res.dataset)}", get, None))
        protocol.append(f"{header}: lower is better; baseline {res.baseline_label}; "
                        f"{len(res.in_mce)} corruptions, severities {', '.join(map(str, res.severities))}"
                        + (f"; {len(res.unstable)} CE ratios unstable (reference error too small, see the corruption "
                           "table)" if res.unstable else ""))
    return cols, protocol


def shift_and_ood_columns(data: RunData) -> tuple[list[Column], list[str]]:
    cols = [(eval_label(data.info(e)), "shift", _acc_getter(data, e), e) for e in data.evals_of("shift")["eval_key"]]
    protocol = []
    for e in data.evals_of("ood")["eval_key"]:
        info = data.info(e)

        def get(m, e=e):
            res, _ = ood_result(data, m, e)
            if res is None:
                return None, NAN, NAN, NAN
            return fmt_ci(res["aupr"], res["aupr_lo"], res["aupr_hi"]), res["aupr"], res["aupr_lo"], res["aupr_hi"]
        cols.append((f"AUPR {info['name']}", "ood", get, e))
        protocol.append(f"AUPR {info['name']}: OOD detection with -max softmax as the score, protocol "
                        f"{protocol_of(info['params'])}; higher is better")
    return cols, protocol


def headline_table(data: RunData) -> Table | None:
    """The paper's table shape, first in the report: one row per model; columns clean top-1, robust
    top-1 at each attack budget (the attack, or the per-sample worst case when several attacks share the
    budget), AutoAttack, mCE, shift top-1 and OOD AUPR, every cell with its 95% CI. Each cell is the
    same number as in the detailed table it comes from (named in the tidy CSV's ``source``)."""
    if not data.model_keys:
        return None
    cols, protocol = forward_column(data)
    cols = cols + clean_columns(data)
    for build in (attack_columns, corruption_columns, shift_and_ood_columns):
        more, lines = build(data)
        cols += more
        protocol += lines
    if not cols:
        return None
    columns = ["Model"] + [h for h, *_ in cols]
    rows, tidy = [], []
    unvetted = [m for m in data.model_keys
                if data.dynamics(m).get("kind") == "dynamic" and not adaptively_evaluated(data, m)]
    for m in data.model_keys:
        row = [data.name(m) + (" †" if m in unvetted else "")]
        for (h, src, get, e) in cols:
            text, v, lo, hi = get(m)
            row.append(text)
            tidy.append({"model": data.name(m), "model_key": m, "column": h, "source": src,
                         "eval_key": e, "value_pct": pct(v), "lo_pct": pct(lo), "hi_pct": pct(hi)})
        rows.append(row)
    protocol = ["All numbers in %, as value [lo, hi]: top-1 accuracies with the 95% Wilson interval, mCE and AUPR "
                "with 95% bootstrap intervals; each number is the one in the detailed table below"] \
        + protocol + [data.reference_note, data.seeds_text()]
    notes = ["— marks a missing or incomplete result (never 0)"] if any(v is None for r in rows for v in r) else []
    if unvetted:
        notes.append("† dynamic model, not adaptively evaluated: its robust accuracy comes from standard attacks only "
                     "and may overstate its robustness (run the adaptive preset)")
    return Table("headline", "Headline results", columns, rows, pd.DataFrame(tidy), protocol, notes, lead=True)
