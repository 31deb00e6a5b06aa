"""The paper-shaped tables: clean, attacks (+ worst case), corruptions, shifts, OOD, comparison, checks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..evalspec import THREAT_DEFAULTS, eps_label as format_eps, threat_of, threat_text, top5_reason
from .compute import (
    BOOT_SEED, N_BOOT, NAN, acc_stats, corruption_results, finite, ood_result, pairwise, worst_case, worst_groups,
)
from .data import RunData, eps_key, slug
from .headline import headline_table
from .protocol import (
    attack_name, common_lines, dataset_lines, eval_label, incomplete_notes, params_text, patch_label,
    pixel_equivalents,
)
from .render import Table, fmt_ci, fmt_delta, fmt_num, fmt_p, pct
from ..evaluation.ood import describe as describe_protocol, protocol_of

NA = "n/a"  # not applicable (as opposed to None = missing result)


def _acc_cells(r: dict) -> tuple[str | None, str | None]:
    if not r["complete"]:
        return None, None
    return fmt_ci(r["top1"], r["top1_lo"], r["top1_hi"]), fmt_ci(r["top5"], r["top5_lo"], r["top5_hi"])


def _acc_record(data: RunData, m: str, e: str, **extra) -> dict:
    r = data.agg_row(m, e)
    ok = bool(r["complete"])
    rec = {"model": data.name(m), "model_key": m, "eval_key": e, "evaluation": eval_label(data.info(e)),
           "dataset": r["dataset"], **extra, "n": int(r["n"]), "n_expected": int(r["n_expected"]),
           "complete": ok, "complete_pct": data.complete_pct(m, e)}
    for t in ("top1", "top1_lo", "top1_hi", "top5", "top5_lo", "top5_hi"):
        rec[f"{t}_pct"] = pct(r[t]) if ok else NAN
    return rec


def _complete_text(data: RunData, m: str, e: str) -> str:
    r = data.agg_row(m, e)
    if r["complete"]:
        return "yes"
    return "not run" if r["n"] == 0 else f"{data.complete_pct(m, e):.0f}% (partial)"


# ------------------------------------------------------------------------------------------ (a) clean
def clean_table(data: RunData) -> Table | None:
    ev = data.evals_of("clean")
    if ev.empty or not data.model_keys:
        return None
    multi = len(ev) > 1
    columns = ["Model"] + (["Evaluation"] if multi else []) + ["Top-1 (%)", "Top-5 (%)", "n", "Complete"]
    rows, tidy = [], []
    for e in ev["eval_key"]:
        for m in data.model_keys:
            t1, t5 = _acc_cells(data.agg_row(m, e))
            r = data.agg_row(m, e)
            rows.append([data.name(m)] + ([eval_label(data.info(e))] if multi else [])
                        + [t1, t5, str(r["n"]), _complete_text(data, m, e)])
            tidy.append(_acc_record(data, m, e))
    protocol = dataset_lines(data, ev) + common_lines(data)
    return Table("clean", "Clean accuracy", columns, rows, pd.DataFrame(tidy), protocol)


# ---------------------------------------------------------------------------------------- (d) attacks
def _top5_reason(data: RunData, e: str) -> str | None:
    """Why this attack's top-5 means nothing (``evalspec.top5_reason``, on the parameters as it ran)."""
    info = data.info(e)
    resolved = info.get("resolved")
    return top5_reason(str(info["name"]), resolved if isinstance(resolved, dict) else info["params"])


def _no_top5(rec: dict, cells: list) -> None:
    """Top-5 of this row is not top-5 robustness: 'n/a' in the table, NaN in the tidy CSV."""
    cells[-1] = NA
    for t in ("top5", "top5_lo", "top5_hi"):
        rec[f"{t}_pct"] = NAN


def _eps_cell(params: dict) -> str:
    """eps as shown in the attack table; '(norm.)' marks a budget in normalized input units."""
    eps = params.get("eps")
    if eps is None:
        return NA
    return format_eps(eps, params.get("norm")) + (" (norm.)" if params.get("space") == "normalized" else "")


def _attack_row_cells(data: RunData, e: str, norm: str, tidy: list[dict]) -> tuple[list, list]:
    """(head, cells) of one attack evaluation's row; its tidy records appended to ``tidy``."""
    p = data.info(e)["params"]
    steps = p.get("steps", p.get("n_iter", p.get("n_queries")))
    head = [attack_name(data.info(e)), norm, _eps_cell(p), str(steps) if steps is not None else NA]
    cells: list = []
    no_top5 = _top5_reason(data, e)
    for m in data.model_keys:
        cells += list(_acc_cells(data.agg_row(m, e)))
        tidy.append(_acc_record(data, m, e, attack=data.info(e)["name"], norm=norm, eps=p.get("eps"),
                                eps_text=format_eps(p.get("eps")), steps=p.get("steps"), worst_case=False))
        if no_top5:
            _no_top5(tidy[-1], cells)
    return head, cells


def _worst_row_cells(data: RunData, g, dataset: str, norm: str, eps: float, tidy: list[dict],
                     notes: list[str]) -> tuple[list, list]:
    """(head, cells) of one worst-case group's row (per-sample AND over its attacks)."""
    head = [f"worst case ({len(g.eval_keys)} attacks)", norm, _eps_cell({"eps": eps, "space": g.threat[0]}), NA]
    cells: list = []
    stats = ("top1", "top1_lo", "top1_hi", "top5", "top5_lo", "top5_hi")
    for m in data.model_keys:
        wc, why = worst_case(data, m, g)
        rec = {"model": data.name(m), "model_key": m, "eval_key": None, "evaluation": g.label,
               "dataset": dataset, "attack": "worst_case", "norm": norm, "eps": eps,
               "eps_text": format_eps(eps), "steps": None, "worst_case": True, "n": 0 if wc is None else len(wc),
               "n_expected": int(data.agg_row(m, g.eval_keys[0])["n_expected"]), "complete": wc is not None,
               "complete_pct": 100.0 if wc is not None else NAN}
        if wc is None:
            cells += [None, None]
            if why != "incomplete":
                notes.append(f"worst case of {data.name(m)} at {norm} eps={format_eps(eps)}: {why}")
            rec.update({f"{t}_pct": NAN for t in stats})
        else:
            a1, a5 = acc_stats(wc["correct1"]), acc_stats(wc["correct5"])
            cells += [fmt_ci(*a1), fmt_ci(*a5)]
            rec.update({f"{t}_pct": pct(v) for t, v in zip(stats, (*a1, *a5))})
            if any(_top5_reason(data, k) for k in g.eval_keys):
                _no_top5(rec, cells)
        tidy.append(rec)
    return head, cells


def _attack_protocol(data: RunData, ev: pd.DataFrame) -> list[str]:
    """One protocol line per attack and threat model, the worst-case rule and where top-5 is n/a."""
    protocol = dataset_lines(data, ev)
    groups: dict[tuple, list[dict]] = {}
    for k in ev["eval_key"]:
        p = data.info(k)["params"]
        groups.setdefault((data.info(k)["name"], threat_of(p)), []).append(p)
    for (name, _), ps in groups.items():
        eps_list = ", ".join(dict.fromkeys("none (a patch's pixels are free)" if patch_label(name, p)
                                           else format_eps(p.get("eps")) for p in ps))
        norms = ", ".join(dict.fromkeys(str(p.get("norm", "?")) for p in ps))
        steps = ", ".join(dict.fromkeys(str(p.get("steps")) for p in ps if p.get("steps") is not None)) or NA
        others = params_text(ps[0], skip=("eps", "norm", "steps", *THREAT_DEFAULTS))
        equivalents = [e for p in ps for e in pixel_equivalents(data, p)]
        protocol.append(f"Attack {name}: norm {norms}; eps {eps_list}; {threat_text(ps[0])}"
                        + "".join(f"; {e}" for e in equivalents) + f"; steps {steps}; {others}")
    protocol.append("Worst case: per sample, correct only if correct under every attack at the same "
                    "dataset, norm and eps (AND over attacks); shown when all those attacks are complete")
    reasons: dict[str, list[str]] = {}
    for k in ev["eval_key"]:
        why = _top5_reason(data, k)
        if why:
            reasons.setdefault(why, []).append(str(data.info(k)["name"]))
    for why, names in reasons.items():
        protocol.append(f"Top-5 n/a under {', '.join(dict.fromkeys(names))} (and any worst case including them): {why}, "
                        "so its images say nothing about top-5 robustness")
    return protocol + common_lines(data)


def attack_table(data: RunData) -> Table | None:
    ev = data.evals_of("attack")
    if ev.empty or not data.model_keys:
        return None
    multi_ds = ev["dataset"].nunique() > 1
    entries = []  # (sort key, row spec)
    for order, e in enumerate(ev["eval_key"]):
        p = data.info(e)["params"]
        entries.append(((ev.iloc[order]["dataset"], str(p.get("norm", "?")), threat_of(p), eps_key(p.get("eps")),
                         0, order), ("eval", e)))
    for g in worst_groups(data):
        entries.append(((g.dataset, g.norm, g.threat, g.eps, 1, 0), ("worst", g)))
    entries.sort(key=lambda t: (t[0][0], t[0][1], str(t[0][2]), *t[0][3:]))
    columns = (["Dataset"] if multi_ds else []) + ["Attack", "Norm", "eps", "Steps"]
    for m in data.model_keys:
        columns += [f"{data.name(m)} top-1 (%)", f"{data.name(m)} top-5 (%)"]
    rows, tidy, notes = [], [], []
    for (dataset, norm, _, eps, _, _), (what, obj) in entries:
        head, cells = (_attack_row_cells(data, obj, norm, tidy) if what == "eval"
                       else _worst_row_cells(data, obj, dataset, norm, eps, tidy, notes))
        rows.append(([dataset] if multi_ds else []) + head + cells)
    pairs = [(m, e) for e in ev["eval_key"] for m in data.model_keys]
    notes = incomplete_notes(data, pairs) + notes
    return Table("attacks", "Accuracy under attack", columns, rows, pd.DataFrame(tidy), _attack_protocol(data, ev),
                 notes)


# ------------------------------------------------------------------------------------ (b) corruptions
def corruption_tables(data: RunData) -> list[Table]:
    tables = []
    ev_all = data.evals_of("corruption")
    for res in corruption_results(data):
        ev = ev_all[ev_all["dataset"] == res.dataset]
        s = slug(res.dataset)
        columns = ["Model", "mCE, normalized (%)", "mean CE, unnormalized (%)", "relative mCE (%)"]
        columns += [f"{c} CE norm. (%)" for c in res.corruptions] + ["Complete"]
        rows, tidy = [], []
        for m, row in zip(data.model_keys, res.rows):
            done = sum(data.complete(m, e) for e in ev["eval_key"])
            cells = [data.name(m), fmt_ci(row["mce"], *row["mce_ci"]) if finite(row["mce_ci"][0]) else fmt_num(row["mce"]),
                     fmt_num(row["unnormalized_mce"]), fmt_num(row["relative_mce"])]
            for c in res.corruptions:
                applicable = res.baseline is not None and c in res.baseline or res.baseline is None and c in res.in_mce
                if not applicable:
                    cells.append(NA)
                    continue
                ce = row["ce"].get(c)
                ci = row["ce_ci"].get(c)
                text = fmt_ci(ce, *ci) if ci is not None else fmt_num(ce)
                flag = c in res.unstable and m != data.reference_key  # the reference's own CE is 100 by definition
                cells.append(None if text is None else text + (" !" if flag else ""))
            cells.append("yes" if done == len(ev) else f"{done}/{len(ev)} evaluations")
            rows.append(cells)
            rec = {"model": data.name(m), "model_key": m, "dataset": res.dataset,
                   "mce_normalized_pct": pct(row["mce"]), "mce_normalized_lo_pct": pct(row["mce_ci"][0]),
                   "mce_normalized_hi_pct": pct(row["mce_ci"][1]),
                   "mean_ce_unnormalized_pct": pct(row["unnormalized_mce"]),
                   "relative_mce_pct": pct(row["relative_mce"]), "baseline": res.baseline_label,
                   "complete": done == len(ev), "complete_pct": 100.0 * done / len(ev)}
            for c in res.corruptions:
                errs = res.errors[m][c]
                lo, hi = row["ce_ci"].get(c, (NAN, NAN))
                rec[f"ce_norm_pct_{c}"] = pct(row["ce"].get(c, NAN))
                rec[f"ce_norm_lo_pct_{c}"] = pct(lo)
                rec[f"ce_norm_hi_pct_{c}"] = pct(hi)
                rec[f"ce_unstable_{c}"] = c in res.unstable
                rec[f"error_unnorm_pct_{c}"] = pct(float(np.mean(errs))) if errs is not None else NAN
            tidy.append(rec)
        protocol = dataset_lines(data, ev)
        protocol.append(f"Corruptions ({len(res.corruptions)}): {', '.join(res.corruptions)}")
        protocol.append(f"Severities: {', '.join(map(str, res.severities))}")
        params = [data.info(k)["params"] for k in ev["eval_key"]]
        for field in ("source", "severity_table"):
            vals = list(dict.fromkeys(json.dumps(p.get(field), sort_keys=True) for p in params if field in p))
            if vals:
                protocol.append(f"{field.replace('_', ' ').capitalize()}: " + "; ".join(
                    v.strip('"') if len(v) <= 300 else v[:300] + "..." for v in vals))
        protocol += [
            f"Normalized: CE_c = mean_s E(s,c) / mean_s E_baseline(s,c), mCE = mean_c CE_c; baseline: "
            f"{res.baseline_label}",
            f"Unnormalized: mean top-1 error over the {len(res.in_mce)} corruptions of the mCE and their severities",
            "Relative mCE: mean_c (E_c - E_clean) / (E_baseline,c - E_baseline,clean); clean evaluation: "
            + (eval_label(data.info(res.clean_eval)) if res.clean_eval else "none"),
            "Errors in %; incomplete (model, evaluation) pairs make dependent numbers missing",
            f"CE and mCE: value [lo, hi], 95% percentile bootstrap over images ({N_BOOT} resamples, seed "
            f"{BOOT_SEED}; the same images resampled for every corruption, severity and the baseline)",
            data.seeds_text()]
        unstable = [f"WARNING: CE of {c} is unstable (marked !): {why}" for c, why in res.unstable.items()]
        notes = unstable + res.notes + incomplete_notes(data, [(m, e) for e in ev["eval_key"] for m in data.model_keys])
        tables.append(Table(f"corruptions_{s}", f"Corruption robustness on {res.dataset} (lower is better)",
                            columns, rows, pd.DataFrame(tidy), protocol, notes))
        tables.append(_corruption_detail(data, res.dataset, ev, s))
    return tables


def _corruption_detail(data: RunData, dataset: str, ev: pd.DataFrame, s: str) -> Table:
    columns = ["Corruption", "Severity"] + [f"{data.name(m)} top-1 (%)" for m in data.model_keys]
    keyed = sorted(ev["eval_key"], key=lambda k: (list(dict.fromkeys(
        str(data.info(x)["params"].get("corruption")) for x in ev["eval_key"])).index(
        str(data.info(k)["params"].get("corruption"))), int(data.info(k)["params"].get("severity", 0))))
    rows, tidy = [], []
    for e in keyed:
        p = data.info(e)["params"]
        rows.append([str(p.get("corruption", data.info(e)["name"])), str(p.get("severity", "?"))]
                    + [_acc_cells(data.agg_row(m, e))[0] for m in data.model_keys])
        tidy += [_acc_record(data, m, e, corruption=p.get("corruption"), severity=p.get("severity"))
                 for m in data.model_keys]
    protocol = dataset_lines(data, ev) + common_lines(data)
    return Table(f"corruption_accuracy_{s}", f"Accuracy per corruption and severity on {dataset}", columns,
                 rows, pd.DataFrame(tidy), protocol)


# ---------------------------------------------------------------------------------- (c) shift and OOD
def shift_table(data: RunData) -> Table | None:
    ev = data.evals_of("shift")
    if ev.empty or not data.model_keys:
        return None
    columns = ["Model"] + [f"{eval_label(data.info(e))} top-1 (%)" for e in ev["eval_key"]]
    rows, tidy = [], []
    for m in data.model_keys:
        rows.append([data.name(m)] + [_acc_cells(data.agg_row(m, e))[0] for e in ev["eval_key"]])
        tidy += [_acc_record(data, m, e) for e in ev["eval_key"]]
    notes = incomplete_notes(data, [(m, e) for e in ev["eval_key"] for m in data.model_keys])
    return Table("shift", "Accuracy under distribution shift", columns, rows, pd.DataFrame(tidy),
                 dataset_lines(data, ev) + common_lines(data), notes)


def ood_table(data: RunData) -> Table | None:
    ev = data.evals_of("ood")
    if ev.empty or not data.model_keys:
        return None

    columns = ["Model", "OOD set", "Protocol", "In-distribution", "AUPR (%) [95% CI]", "AUROC (%)", "FPR95 (%)",
               "n in", "n out"]
    rows, tidy, notes, protocols = [], [], [], {}
    for e in ev["eval_key"]:
        info = data.info(e)
        protocol = protocol_of(info["params"])
        name = info["name"] + ("" if "protocol" in info["params"] else ", protocol not recorded")
        protocols.setdefault(protocol, []).append(name)
        in_key = info["params"].get("in_eval_key")
        in_label = eval_label(data.info(in_key)) if in_key in set(data.evals["eval_key"]) else "?"
        for m in data.model_keys:
            res, why = ood_result(data, m, e)
            if res is None and why != "incomplete":
                notes.append(f"{data.name(m)} on {info['name']}: {why}")
            rows.append([data.name(m), info["name"], protocol, in_label]
                        + ([fmt_ci(res["aupr"], res["aupr_lo"], res["aupr_hi"])]
                           + [fmt_num(res[k]) for k in ("auroc", "fpr95")] + [str(res["n_in"]), str(res["n_out"])]
                           if res else [None] * 5))
            tidy.append({"model": data.name(m), "model_key": m, "eval_key": e, "ood_set": info["name"],
                         "dataset": info["dataset"], "protocol": protocol, "in_eval_key": in_key,
                         **{f"{k}_pct": pct(res[k]) if res else NAN
                            for k in ("aupr", "aupr_lo", "aupr_hi", "auroc", "fpr95")},
                         "n_in": res["n_in"] if res else None, "n_out": res["n_out"] if res else None,
                         "complete": res is not None})
    pairs = [(m, k) for e in ev["eval_key"] for m in data.model_keys
             for k in (e, data.info(e)["params"].get("in_eval_key")) if k in set(data.evals["eval_key"])]
    used = data.evals[data.evals["eval_key"].isin({k for _, k in pairs})]  # OOD sets and their in-distribution
    protocol = dataset_lines(data, used) + [
        "OOD detection with anomaly score = -confidence (max softmax probability); OOD is the positive class",
        "AUPR: average precision of detecting OOD samples (higher is better); AUROC (higher is better); "
        "FPR95: fraction of in-distribution samples flagged at 95% OOD recall (lower is better)",
        "In-distribution confidences: the clean evaluation named by params.in_eval_key, same model",
        f"AUPR CI: 95% percentile bootstrap ({N_BOOT} resamples, seed {BOOT_SEED}), in- and out-of-distribution "
        "samples resampled separately"]
    protocol += [f"Protocol {p} ({', '.join(dict.fromkeys(sets))}): {describe_protocol(p)}"
                 for p, sets in protocols.items()]
    protocol.append(data.seeds_text())
    return Table("ood", "Out-of-distribution detection", columns, rows, pd.DataFrame(tidy), protocol,
                 notes + incomplete_notes(data, list(dict.fromkeys(pairs))))


# ----------------------------------------------------------------------------------- (e) comparison
def comparison_table(data: RunData) -> Table | None:
    ref = data.reference_key
    others = [m for m in data.model_keys if m != ref]
    if ref is None or not others:
        return None
    columns = ["Model", "Evaluation", "Dataset", "Model top-1 (%)", f"{data.name(ref)} top-1 (%)",
               "Delta top-1 (pp) [95% CI]", "McNemar p", "n"]
    rows, tidy = [], []
    for m in others:
        df = pairwise(data, m, ref)
        for _, r in df.iterrows():
            ok = bool(r["complete"])
            rows.append([data.name(m), r["evaluation"], r["dataset"],
                         fmt_ci(r["acc_a"], r["acc_a_lo"], r["acc_a_hi"]) if ok else None,
                         fmt_ci(r["acc_b"], r["acc_b_lo"], r["acc_b_hi"]) if ok else None,
                         fmt_delta(r["delta"], r["delta_lo"], r["delta_hi"]) if ok else None,
                         fmt_p(r["p_value"]) if ok else None, str(r["n"]) if ok else None])
            tidy.append({"model": data.name(m), "model_key": m, "reference": data.name(ref), "reference_key": ref,
                         **{k: r[k] for k in ("evaluation", "kind", "dataset", "eval_key", "n", "complete")},
                         **{f"{k}_pct": pct(r[k]) for k in ("acc_a", "acc_a_lo", "acc_a_hi", "acc_b", "acc_b_lo",
                                                            "acc_b_hi")},
                         **{f"{k}_pp": pct(r[k]) for k in ("delta", "delta_lo", "delta_hi")},
                         "p_value": r["p_value"], "n01": r["n01"], "n10": r["n10"], "note": r["note"]})
    notes = [f"{t['model']} on {t['evaluation']}: {t['note']}" for t in tidy if t["note"] and t["note"] != "incomplete"]
    if any(not t["complete"] for t in tidy):
        notes.append("rows where either model is incomplete are shown as missing")
    protocol = [data.reference_note,
                "Delta = model - reference top-1 accuracy on the same sample ids, in percentage points; "
                "95% CI: Newcombe's paired score interval",
                "McNemar test on discordant pairs (exact binomial below 25 discordant pairs, else chi-square "
                "with continuity correction); p-values are not corrected for multiple comparisons",
                "Accuracies: value [lo, hi], 95% Wilson score interval", data.seeds_text()]
    return Table("comparison", f"Pairwise comparison against {data.name(ref)}", columns, rows,
                 pd.DataFrame(tidy), protocol, notes)


# --------------------------------------------------------------------------------------- (f) checks
_STATUS_ORDER = {"fail": 0, "error": 0, "warn": 1, "skip": 2, "info": 3, "pass": 4}


def checks_table(data: RunData) -> Table:
    ck = data.checks.copy()
    columns = ["Status", "Check", "Model", "Evaluation", "Message"]
    rows = []
    if not ck.empty:
        ck["_o"] = ck["status"].map(lambda s: _STATUS_ORDER.get(s, 3))
        ck = ck.sort_values(["_o", "check"], kind="stable").drop(columns="_o")
        for _, r in ck.iterrows():
            ev = r["eval_key"]
            ev = ev if isinstance(ev, str) and ev else None
            mk = r["model_key"] if isinstance(r["model_key"], str) and r["model_key"] else None
            ev_text = eval_label(data.info(ev)) if ev in set(data.evals["eval_key"]) else (ev or "(all)")
            rows.append([r["status"], r["check"], data.name(mk) if mk else "(all)",
                         ev_text, r["message"]])
    tidy = ck.copy()
    if "details" in tidy:
        tidy["details"] = tidy["details"].map(lambda d: json.dumps(d, sort_keys=True))
    counts = ck["status"].value_counts().to_dict() if not ck.empty else {}
    protocol = ["Trust checks recorded by the harness during the run (details in checks.csv)",
                "Status counts: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none")]
    notes = [] if rows else ["No trust checks were recorded for this run."]
    return Table("checks", "Trust checks", columns, rows, tidy, protocol, notes)


# ---------------------------------------------------------------------------------------- headline
def checks_summary(data: RunData) -> tuple[str, list[str]]:
    """(one line of counts, one line per check that did not pass), for the console and the page top.
    The line reads 'all N passed' when every check passed."""
    ck = data.checks
    if ck.empty:
        return "no trust checks recorded", []
    counts = ck["status"].value_counts().to_dict()
    order = sorted(counts, key=lambda k: (_STATUS_ORDER.get(k, 3), k), reverse=True)
    n_pass = counts.get("pass", 0)
    line = (f"all {n_pass} passed" if n_pass == len(ck) else
            f"{len(ck)} checks: " + ", ".join(f"{counts[k]} {k}" for k in order))
    bad = []
    ck = ck.assign(_o=ck["status"].map(lambda s: _STATUS_ORDER.get(s, 3))).sort_values(["_o", "check"], kind="stable")
    for _, r in ck[ck["status"] != "pass"].iterrows():
        mk = r["model_key"] if isinstance(r["model_key"], str) and r["model_key"] else None
        bad.append(f"{str(r['status']).upper()} {r['check']} ({data.name(mk) if mk else 'all models'}): {r['message']}")
    if bad:
        line += "; not passed: " + ", ".join(
            f"{r['status']} {r['check']}" for _, r in ck[ck["status"] != "pass"].iterrows())
    return line, bad


def all_tables(data: RunData) -> list[Table]:
    tables = [headline_table(data), clean_table(data), attack_table(data), *corruption_tables(data), shift_table(data),
              ood_table(data), comparison_table(data), checks_table(data)]
    return [t for t in tables if t is not None]


__all__ = ["all_tables", "headline_table", "checks_summary", "clean_table", "attack_table", "corruption_tables", "shift_table", "ood_table",
           "comparison_table", "checks_table"]
