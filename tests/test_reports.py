"""Reports are built from results.sqlite only: tables, plots, HTML, comparisons, missing-not-zero."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from robustbench_rpc import metrics
from robustbench_rpc.reports import build_report, compare_models
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.store.rows import stable_key

N = 120          # samples per evaluation
UNIT = 40        # samples per unit
EPS = (1 / 255, 4 / 255, 8 / 255)


def _outcomes(rng, n, acc, ood=False):
    label = np.full(n, -1) if ood else rng.integers(0, 10, n)
    c1 = (rng.random(n) < acc) & ~ood
    c5 = c1 | ((rng.random(n) < 0.5) & ~ood)
    pred = np.where(c1, label, (np.maximum(label, 0) + 1) % 10)
    conf = np.where(c1, rng.uniform(0.5, 1.0, n), rng.uniform(0.1, 0.7, n))
    return {"sample_id": np.arange(n), "label": label, "pred": pred, "correct1": c1, "correct5": c5,
            "confidence": conf}


def _write(store, m, e, rows, n_units=None, extra=None):
    n = len(rows["sample_id"])
    units = range(math.ceil(n / UNIT)) if n_units is None else range(n_units)
    for u in units:
        sl = slice(u * UNIT, (u + 1) * UNIT)
        chunk = {k: np.asarray(v)[sl] for k, v in rows.items()}
        if extra:
            chunk.update({k: np.asarray(v)[sl] for k, v in extra.items()})
        store.write_unit(m, e, u, chunk)


def build_run(run_dir, corruption_dataset="cifar10-c", reference=True, seed=0):
    """2 models (one reference) x evaluations of every kind; the 'rpc' model is partial on one shift."""
    rng = np.random.default_rng(seed)
    store = ResultsStore(run_dir / "results.sqlite")
    models = {}
    for name, ref, base in (("vit_baseline", reference, 0.80), ("rpc_vit", False, 0.78)):
        info = {"name": name, "spec": f"{name}:ckpt/{name}.safetensors", "arch": "vit_tiny",
                "checkpoint": f"ckpt/{name}.safetensors", "checkpoint_sha256": "ab" * 32,
                "attention": {"type": "rpc" if "rpc" in name else "softmax", "iters": 4},
                "num_params": 5_000_000, "num_classes": 10, "reference": ref}
        key = stable_key({"name": name, "attention": info["attention"]})
        store.register_model(key, info)
        models[name] = (key, base)
    evals = {}

    def reg(kind, name, dataset, params, n=N):
        info = {"kind": kind, "name": name, "dataset": dataset, "params": params, "n_samples": n,
                "dataset_size": 10000}
        key = stable_key({k: info[k] for k in ("kind", "name", "dataset", "params")})
        store.register_evaluation(key, info)
        evals[(kind, name, dataset, stable_key(params))] = key
        return key

    clean = reg("clean", "cifar10", "cifar10", {})
    attacks = {(a, eps): reg("attack", a, "cifar10", {"eps": eps, "norm": "Linf", "steps": st})
               for a, st in (("pgd", 10), ("fgsm", 1)) for eps in EPS}
    corr = {(c, s): reg("corruption", c, corruption_dataset,
                        {"corruption": c, "severity": s, "source": "imagecorruptions",
                         "severity_table": "hendrycks2019"})
            for c in ("gaussian_noise", "fog") for s in (1, 3)}
    ood = reg("ood", "svhn", "svhn", {"in_eval_key": clean})
    shift = reg("shift", "cifar10.1", "cifar10.1", {})
    partial = reg("shift", "cifar10-r", "cifar10-r", {})
    for name, (m, base) in models.items():
        clean_rows = _outcomes(rng, N, base)
        _write(store, m, clean, clean_rows)
        for (a, eps), e in attacks.items():
            acc = base * (1 - eps * 255 / 10) * (0.9 if a == "pgd" else 1.0)
            rows = _outcomes(rng, N, acc)
            _write(store, m, e, rows, extra={"clean_correct1": clean_rows["correct1"],
                                               "linf": np.full(N, eps), "l2": rng.uniform(0, 1, N)})
        for (c, s), e in corr.items():
            _write(store, m, e, _outcomes(rng, N, base - 0.1 * s - (0.05 if "rpc" in name else 0.0)))
        _write(store, m, ood, _outcomes(rng, N, 0.0, ood=True))
        _write(store, m, shift, _outcomes(rng, N, base - 0.1))
        _write(store, m, partial, _outcomes(rng, N, base - 0.3), n_units=1 if "rpc" in name else None)
    store.write_check(None, None, "determinism", "pass", "unit 0 reproduced bit-exactly", {"units": [0]})
    store.write_check(models["rpc_vit"][0], partial, "coverage", "warn", "partial evaluation", {})
    store.set_meta("suite", {"name": "test-suite", "seed": 0,
                             "reference_model": "vit_baseline" if reference else None})
    store.set_meta("manifest", {"timestamp": "2026-01-01T00:00:00+00:00", "seeds": {"run": 0},
                                "git": {"commit": "deadbeef", "dirty": False}, "device": {"name": "cpu"},
                                "versions": {"torch": "2.x"},
                                "checkpoints": {"vit_baseline": {"path": "x", "sha256": "ab" * 32}},
                                "sample_ids": {"cifar10": {"n": N, "sha256": "cd" * 32}}})
    store.close()
    return {"models": {k: v[0] for k, v in models.items()}, "clean": clean, "attacks": attacks,
            "corr": corr, "ood": ood, "shift": shift, "partial": partial}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    keys = build_run(run_dir)
    paths = build_report(run_dir)
    return run_dir, keys, paths


def _samples(run_dir):
    with ResultsStore(run_dir / "results.sqlite", readonly=True) as s:
        return s.samples()


def test_report_writes_every_format(run):
    run_dir, _, paths = run
    assert isinstance(paths["report"], str) and "Headline results" in paths["report"]
    for name in ("clean", "attacks", "corruptions_cifar10_c", "shift", "ood", "comparison", "checks"):
        for ext in ("csv", "md", "tex"):
            assert paths[f"tables/{name}.{ext}"].is_file(), (name, ext)
    for name in ("attack_acc_vs_eps_cifar10_linf", "corruption_ce_cifar10_c",
                 "corruption_acc_vs_severity_cifar10_c", "deltas_vs_reference"):
        for ext in ("png", "svg"):
            p = paths[f"plots/{name}.{ext}"]
            assert p.is_file() and p.stat().st_size > 1000
    assert paths["plots/attack_acc_vs_eps_cifar10_linf.png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["index.html"].is_file() and paths["report.md"].is_file()
    tex = paths["tables/attacks.tex"].read_text()
    assert "\\caption{" in tex and "\\toprule" in tex and "8/255" in tex


def test_clean_table_matches_hand_counts_with_ci(run):
    run_dir, keys, paths = run
    df = pd.read_csv(paths["tables/clean.csv"])
    s = _samples(run_dir)
    for name, m in keys["models"].items():
        c = s[(s.model_key == m) & (s.eval_key == keys["clean"])]["correct1"]
        row = df[df.model_key == m].iloc[0]
        assert row.top1_pct == pytest.approx(100 * c.mean())
        lo, hi = metrics.wilson_interval(int(c.sum()), len(c))
        assert (row.top1_lo_pct, row.top1_hi_pct) == pytest.approx((100 * lo, 100 * hi))
        md = paths["tables/clean.md"].read_text()
        assert f"{100 * c.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in md


def test_partial_evaluation_is_missing_not_zero(run):
    run_dir, keys, paths = run
    rpc, base = keys["models"]["rpc_vit"], keys["models"]["vit_baseline"]
    df = pd.read_csv(paths["tables/shift.csv"])
    part = df[(df.model_key == rpc) & (df.eval_key == keys["partial"])].iloc[0]
    assert math.isnan(part.top1_pct) and not part.complete
    assert part.complete_pct == pytest.approx(100 * UNIT / N)
    done = df[(df.model_key == base) & (df.eval_key == keys["partial"])].iloc[0]
    assert done.complete and done.top1_pct > 0
    md = paths["tables/shift.md"].read_text()
    rpc_line = next(line for line in md.splitlines() if line.startswith("| rpc_vit"))
    assert rpc_line.rstrip(" |").endswith("—") and "0.0 [" not in rpc_line
    assert "33% complete" in md
    tex_line = next(line for line in paths["tables/shift.tex"].read_text().splitlines()
                    if line.startswith("rpc"))
    assert tex_line.rstrip(" \\").endswith("--")
    # the partial pair is missing in the comparison too, never a delta computed from 40 samples
    cmp = pd.read_csv(paths["tables/comparison.csv"])
    row = cmp[cmp.eval_key == keys["partial"]].iloc[0]
    assert not row.complete and math.isnan(row.delta_pp)


def test_worst_case_row_is_per_sample_and(run):
    run_dir, keys, paths = run
    df = pd.read_csv(paths["tables/attacks.csv"])
    s = _samples(run_dir)
    for eps in EPS:
        for m in keys["models"].values():
            per = [s[(s.model_key == m) & (s.eval_key == keys["attacks"][(a, eps)])].set_index("sample_id")
                   for a in ("pgd", "fgsm")]
            c1 = (per[0]["correct1"] & per[1]["correct1"]).astype(bool)
            c5 = (per[0]["correct5"] & per[1]["correct5"]).astype(bool)
            row = df[(df.model_key == m) & df.worst_case & np.isclose(df.eps, eps)].iloc[0]
            assert row.top1_pct == pytest.approx(100 * c1.mean())
            assert row.top5_pct == pytest.approx(100 * c5.mean())
            assert row.n == N
            # worst case is never above any single attack
            assert row.top1_pct <= min(100 * p["correct1"].mean() for p in per) + 1e-9
    md = paths["tables/attacks.md"].read_text()
    assert md.count("worst case (2 attacks)") == len(EPS)
    assert "1/255" in md and "4/255" in md


def _hand_errors(s, keys, m):
    out = {}
    for c in ("gaussian_noise", "fog"):
        out[c] = [1 - s[(s.model_key == m) & (s.eval_key == keys["corr"][(c, sev)])]["correct1"].mean()
                  for sev in (1, 3)]
    return out


def test_mce_uses_reference_model_for_non_imagenet(run):
    run_dir, keys, paths = run
    df = pd.read_csv(paths["tables/corruptions_cifar10_c.csv"])
    s = _samples(run_dir)
    ref, rpc = keys["models"]["vit_baseline"], keys["models"]["rpc_vit"]
    e_ref, e_rpc = _hand_errors(s, keys, ref), _hand_errors(s, keys, rpc)
    ce = {c: np.mean(e_rpc[c]) / np.mean(e_ref[c]) for c in e_ref}
    row = df[df.model_key == rpc].iloc[0]
    assert row.mce_normalized_pct == pytest.approx(100 * np.mean(list(ce.values())))
    assert row.ce_norm_pct_fog == pytest.approx(100 * ce["fog"])
    assert row.mean_ce_unnormalized_pct == pytest.approx(100 * np.mean([np.mean(v) for v in e_rpc.values()]))
    clean = {m: 1 - s[(s.model_key == m) & (s.eval_key == keys["clean"])]["correct1"].mean() for m in (ref, rpc)}
    rel = np.mean([(np.mean(e_rpc[c]) - clean[rpc]) / (np.mean(e_ref[c]) - clean[ref]) for c in e_ref])
    assert row.relative_mce_pct == pytest.approx(100 * rel)
    assert df[df.model_key == ref].iloc[0].mce_normalized_pct == pytest.approx(100.0)
    md = paths["tables/corruptions_cifar10_c.md"].read_text()
    assert "mCE, normalized" in md and "mean CE, unnormalized" in md
    assert "reference model vit_baseline of this run" in md and "Severities: 1, 3" in md


def test_mce_uses_alexnet_for_imagenet(tmp_path):
    keys = build_run(tmp_path, corruption_dataset="imagenet-c")
    paths = build_report(tmp_path)
    df = pd.read_csv(paths["tables/corruptions_imagenet_c.csv"])
    s = _samples(tmp_path)
    for m in keys["models"].values():
        e = _hand_errors(s, keys, m)
        want = np.mean([np.mean(e[c]) / metrics.ALEXNET_ERRORS[c] for c in e])
        assert df[df.model_key == m].iloc[0].mce_normalized_pct == pytest.approx(100 * want)
    md = paths["tables/corruptions_imagenet_c.md"].read_text()
    assert "AlexNet" in md and "not comparable to published mCE" in md


def test_ood_uses_in_eval_confidences(run):
    run_dir, keys, paths = run
    df = pd.read_csv(paths["tables/ood.csv"])
    s = _samples(run_dir)
    m = keys["models"]["rpc_vit"]
    want = metrics.ood_metrics(s[(s.model_key == m) & (s.eval_key == keys["clean"])]["confidence"],
                               s[(s.model_key == m) & (s.eval_key == keys["ood"])]["confidence"])
    row = df[df.model_key == m].iloc[0]
    assert row.aupr_pct == pytest.approx(100 * want["aupr"])
    assert row.fpr95_pct == pytest.approx(100 * want["fpr95"])


def test_html_is_self_contained(run):
    run_dir, _, paths = run
    text = paths["index.html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text and "<script" not in text
    assert text.count("data:image/png;base64,") == 4
    assert "deadbeef" in text and "Trust checks" in text and "unit 0 reproduced" in text
    assert "Protocol" in text and "10000" in text


def test_compare_models(run):
    run_dir, keys, _ = run
    df = compare_models(run_dir, "rpc_vit", "vit_baseline")
    s = _samples(run_dir)
    a = s[(s.model_key == keys["models"]["rpc_vit"]) & (s.eval_key == keys["clean"])]["correct1"].to_numpy()
    b = s[(s.model_key == keys["models"]["vit_baseline"]) & (s.eval_key == keys["clean"])]["correct1"].to_numpy()
    row = df[df.eval_key == keys["clean"]].iloc[0]
    d, lo, hi = metrics.paired_delta_ci(a, b)
    assert (row.delta_pp, row.delta_lo_pp, row.delta_hi_pp) == pytest.approx((100 * d, 100 * lo, 100 * hi))
    assert row.p_value == pytest.approx(metrics.mcnemar(a, b)["p_value"])
    assert row.n == N and row.complete
    assert (df.kind == "attack (worst case)").sum() == len(EPS)
    assert keys["ood"] not in set(df.eval_key)
    same = compare_models(run_dir, keys["models"]["rpc_vit"], "rpc_vit")  # key or name
    assert (same.loc[same.complete, "delta_pp"] == 0).all()
    with pytest.raises(KeyError, match="available: vit_baseline"):
        compare_models(run_dir, "rpc_vitt", "vit_baseline")


def test_report_without_reference_or_attacks_skips_cleanly(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m1", {"name": "only_model"})
    store.register_evaluation("e1", {"kind": "clean", "name": "cifar10", "dataset": "cifar10", "n_samples": 10})
    store.write_unit("m1", "e1", 0, _outcomes(np.random.default_rng(1), 10, 0.5))
    store.close()
    out = tmp_path / "report"
    paths = build_report(tmp_path, out)
    assert not any(k.startswith("plots/") for k in paths)
    assert "tables/comparison.csv" not in paths and paths["tables/clean.md"].parent == out / "tables"
    assert "No trust checks were recorded" in paths["tables/checks.md"].read_text()
    assert (out / "index.html").is_file()
    # a rebuild removes files the earlier build wrote but this one does not
    stale = out / "plots" / "old.png"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    build_report(tmp_path, out)
    assert stale.exists()  # not ours: kept


def test_rebuild_removes_files_of_the_previous_build(run, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "out"
    first = build_report(run_dir, out)
    assert first["plots/deltas_vs_reference.png"].is_file()
    small = tmp_path / "small"
    small.mkdir()
    store = ResultsStore(small / "results.sqlite")
    store.register_model("m1", {"name": "only_model"})
    store.register_evaluation("e1", {"kind": "clean", "name": "cifar10", "dataset": "cifar10", "n_samples": 10})
    store.close()
    second = build_report(small, out)
    assert not (out / "plots" / "deltas_vs_reference.png").exists()
    assert not (out / "tables" / "attacks.csv").exists()
    assert second["tables/clean.csv"].is_file()
    # nothing was written: every accuracy is missing, none is 0
    assert pd.read_csv(second["tables/clean.csv"]).top1_pct.isna().all()
    assert "not run" in second["tables/clean.md"].read_text()


def test_report_requires_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        build_report(tmp_path)


def test_reference_from_suite_meta_or_none(tmp_path):
    keys = build_run(tmp_path, reference=False)  # nobody flagged reference, suite names none
    paths = build_report(tmp_path)
    df = pd.read_csv(paths["tables/corruptions_cifar10_c.csv"])
    assert df.mce_normalized_pct.isna().all() and df.mean_ce_unnormalized_pct.notna().all()
    assert "tables/comparison.csv" not in paths
    assert "need a reference model" in paths["tables/corruptions_cifar10_c.md"].read_text()
    with ResultsStore(tmp_path / "results.sqlite") as s:
        s.set_meta("suite", {"name": "test-suite", "reference_model": "rpc_vit"})
    paths = build_report(tmp_path)
    df = pd.read_csv(paths["tables/corruptions_cifar10_c.csv"])
    assert df[df.model_key == keys["models"]["rpc_vit"]].mce_normalized_pct.iloc[0] == pytest.approx(100.0)
    assert paths["tables/comparison.csv"].is_file()
    assert paths["html"] == paths["index.html"] and paths["summary"] == paths["report"]


# ------------------------------------------------------------------------- the report leads with the answer
def _section_ids(html_text):
    return re.findall(r'<section[^>]*\bid="([^"]+)"', html_text)


def test_headline_is_first_one_row_per_model_and_equals_the_detailed_tables(run):
    run_dir, keys, paths = run
    html_text = paths["index.html"].read_text()
    assert _section_ids(html_text)[0] == "headline"
    md = paths["report.md"].read_text()
    assert md.index("## Headline results") < md.index("## Clean accuracy") < md.index("## Trust checks") \
        < md.index("## Run manifest")
    head = pd.read_csv(paths["tables/headline.csv"])
    want_cols = ["Clean", "Robust 1/255 (worst of PGD, FGSM)", "Robust 4/255 (worst of PGD, FGSM)",
                 "Robust 8/255 (worst of PGD, FGSM)", "mCE", "cifar10.1", "cifar10-r", "AUPR svhn"]
    assert list(dict.fromkeys(head.column)) == want_cols
    headline_md = paths["tables/headline.md"].read_text().splitlines()
    assert headline_md[2] == "| Model | " + " | ".join(want_cols) + " |"
    assert sum(line.startswith("| vit_baseline") or line.startswith("| rpc_vit") for line in headline_md) == 2
    clean = pd.read_csv(paths["tables/clean.csv"])
    attacks = pd.read_csv(paths["tables/attacks.csv"])
    corr = pd.read_csv(paths["tables/corruptions_cifar10_c.csv"])
    ood = pd.read_csv(paths["tables/ood.csv"])
    shift = pd.read_csv(paths["tables/shift.csv"])
    for m in keys["models"].values():
        h = head[head.model_key == m].set_index("column")
        assert len(h) == len(want_cols)  # one row per model: one value per column
        assert h.loc["Clean", "value_pct"] == pytest.approx(clean[clean.model_key == m].top1_pct.iloc[0])
        for eps in EPS:
            row = attacks[(attacks.model_key == m) & attacks.worst_case & np.isclose(attacks.eps, eps)].iloc[0]
            col = h.loc[f"Robust {round(eps * 255)}/255 (worst of PGD, FGSM)"]
            assert (col.value_pct, col.lo_pct, col.hi_pct) == pytest.approx((row.top1_pct, row.top1_lo_pct,
                                                                             row.top1_hi_pct))
        c = corr[corr.model_key == m].iloc[0]
        assert (h.loc["mCE", "value_pct"], h.loc["mCE", "lo_pct"], h.loc["mCE", "hi_pct"]) == pytest.approx(
            (c.mce_normalized_pct, c.mce_normalized_lo_pct, c.mce_normalized_hi_pct))
        o = ood[ood.model_key == m].iloc[0]
        assert (h.loc["AUPR svhn", "value_pct"], h.loc["AUPR svhn", "lo_pct"]) == pytest.approx((o.aupr_pct,
                                                                                                o.aupr_lo_pct))
        for name, e in (("cifar10.1", keys["shift"]), ("cifar10-r", keys["partial"])):
            s = shift[(shift.model_key == m) & (shift.eval_key == e)].iloc[0]
            v = h.loc[name, "value_pct"]
            assert (math.isnan(v) and math.isnan(s.top1_pct)) or v == pytest.approx(s.top1_pct)
    # the same cell text as the detailed Markdown tables (clean top-1 of each model)
    clean_md = paths["tables/clean.md"].read_text()
    for line in headline_md:
        if line.startswith("| vit_baseline"):
            assert line.split(" | ")[1] in clean_md
    # partial pair: missing in the headline as well, never 0
    rpc_line = next(line for line in headline_md if line.startswith("| rpc_vit"))
    assert "—" in rpc_line


def test_contents_list_is_in_page_order(run):
    _, _, paths = run
    html_text = paths["index.html"].read_text()
    nav = re.search(r'<nav class="toc">(.*?)</nav>', html_text, re.S).group(1)
    toc = re.findall(r'href="#([^"]+)"', nav)
    sections = _section_ids(html_text)
    assert toc == sections
    assert sections[0] == "headline" and sections[-2:] == ["checks", "manifest"]
    assert sections.index("attack_acc_vs_eps_cifar10_linf") == sections.index("attacks") + 1
    assert html_text.index('<nav class="toc">') < html_text.index('<section')
    md = paths["report.md"].read_text()
    md_toc = re.findall(r"^\s*- \[[^\]]+\]\(#([^)]+)\)", md, re.M)
    assert md_toc == re.findall(r'^<a id="([^"]+)"></a>', md, re.M) == sections


def test_headline_states_the_threat_model_and_never_merges_two(tmp_path):
    """An eps in normalized units and a plain-accuracy evaluation get their own, labelled columns."""
    rng = np.random.default_rng(3)
    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m1", {"name": "model_a", "reference": True})
    store.register_evaluation("c", {"kind": "clean", "name": "clean", "dataset": "d", "params": {}, "n_samples": N})
    store.write_unit("m1", "c", 0, _outcomes(rng, N, 0.9))
    for key, params in (("pix", {"eps": 4 / 255, "norm": "Linf", "steps": 10}),
                        ("nrm", {"eps": 4 / 255, "norm": "Linf", "steps": 10, "space": "normalized"}),
                        ("pln", {"eps": 4 / 255, "norm": "Linf", "steps": 10, "accuracy": "plain"})):
        store.register_evaluation(key, {"kind": "attack", "name": "pgd", "dataset": "d", "params": params,
                                        "n_samples": N})
        store.write_unit("m1", key, 0, _outcomes(rng, N, 0.4))
    store.close()
    paths = build_report(tmp_path)
    head = pd.read_csv(paths["tables/headline.csv"])
    assert set(head.column) == {"Clean", "PGD-10 4/255", "PGD-10 4/255 (norm.)", "PGD-10 4/255 (plain acc.)"}
    md = paths["tables/headline.md"].read_text()
    assert "Threat model of 4/255 (norm.): eps in normalized input units" in md
    assert "Threat model of 4/255 (plain acc.):" in md and "plain accuracy" in md
    assert "Threat model of 4/255: eps in pixel units" in md
    assert "worst of" not in md  # three threat models: no worst case across them


def _plots_of(run_dir, tmp_path):
    from robustbench_rpc.reports.data import RunData
    from robustbench_rpc.reports.plots import all_plots

    data = RunData.load(run_dir)
    try:
        return all_plots(data, tmp_path / "plots", keep=True)
    finally:
        data.close()


def _single_budget_run(tmp_path):
    rng = np.random.default_rng(5)
    store = ResultsStore(tmp_path / "results.sqlite")
    for m, acc in (("m1", 0.9), ("m2", 0.8)):
        store.register_model(m, {"name": f"model_{m}"})
    store.register_evaluation("c", {"kind": "clean", "name": "clean", "dataset": "d", "params": {}, "n_samples": N})
    evals = [("c", None)]
    for eps in (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255):
        key = f"pgd{eps:.5f}"
        store.register_evaluation(key, {"kind": "attack", "name": "pgd", "dataset": "d", "n_samples": N,
                                        "params": {"eps": eps, "norm": "Linf", "steps": 10}})
        evals.append((key, eps))
    store.register_evaluation("sq", {"kind": "attack", "name": "square", "dataset": "d", "n_samples": N,
                                     "params": {"eps": 8 / 255, "norm": "Linf"}})
    evals.append(("sq", 8 / 255))
    for m, acc in (("m1", 0.9), ("m2", 0.8)):
        for key, eps in evals:
            store.write_unit(m, key, 0, _outcomes(rng, N, acc * (1 - 20 * (eps or 0))))
    store.close()
    return tmp_path


def test_single_budget_attack_is_drawn_as_points(tmp_path):
    run_dir = _single_budget_run(tmp_path)
    plot = next(p for p in _plots_of(run_dir, tmp_path) if p.name == "attack_acc_vs_eps_d_linf")
    axes = {ax.get_title(): ax for ax in plot.fig.axes}
    assert set(axes) == {"pgd", "square", "worst case of pgd + square at 8/255"}
    sq = [ln for ln in axes["square"].get_lines() if len(ln.get_xdata())]
    assert sq and all(ln.get_linestyle() == "None" for ln in sq)  # no line anywhere (error-bar caps included)
    points = [ln for ln in sq if ln.get_marker() == "o"]
    assert len(points) == 4 and all(len(ln.get_xdata()) == 1 for ln in points)  # 2 models x (8/255, clean)
    assert any(ln.get_linestyle() == "-" and len(ln.get_xdata()) == 6 for ln in axes["pgd"].get_lines())
    # the worst case exists at one budget only: points too
    wc = [ln for ln in axes["worst case of pgd + square at 8/255"].get_lines() if len(ln.get_xdata())]
    assert all(ln.get_linestyle() == "None" for ln in wc)
    # panels wrap into a grid of at most 3 columns; eps labelled k/255
    assert max(ax.get_subplotspec().colspan.stop for ax in plot.fig.axes) <= 3
    assert [t.get_text() for t in axes["pgd"].get_xticklabels()] == ["0", "1/255", "2/255", "4/255", "8/255",
                                                                     "16/255"]
    svg = plot.svg.read_text()
    assert "16/255" in svg
    import matplotlib.pyplot as plt
    plt.close("all")


def test_plot_tick_labels_do_not_overlap(run, tmp_path):
    import matplotlib.pyplot as plt
    from robustbench_rpc.reports.plots import declutter_ticks, tick_label_overlaps

    run_dir, _, _ = run
    plots = _plots_of(run_dir, tmp_path) + [p for p in _plots_of(_single_budget_run(tmp_path / "s"), tmp_path / "s")]
    assert len(plots) >= 5
    for p in plots:
        assert tick_label_overlaps(p.fig) == [], p.name
    # the check sees a real collision, and declutter_ticks resolves it
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(12))
    ax.set_xticklabels([f"label_{i}" for i in range(12)])
    assert tick_label_overlaps(fig)
    declutter_ticks(fig)
    assert tick_label_overlaps(fig) == []
    plt.close("all")


def test_ce_warning_when_reference_error_is_tiny(tmp_path):
    """Reference error 1% on fog (1 error in 120 images): CE = err/err_ref is flagged everywhere."""
    rng = np.random.default_rng(7)
    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("ref", {"name": "ref_model", "reference": True})
    store.register_model("m2", {"name": "other_model"})
    store.register_evaluation("c", {"kind": "clean", "name": "clean", "dataset": "d", "params": {}, "n_samples": N})
    for c in ("fog", "snow"):
        store.register_evaluation(c, {"kind": "corruption", "name": c, "dataset": "d-c", "n_samples": N,
                                      "params": {"corruption": c, "severity": 3}})
    ids = np.arange(N)
    for m in ("ref", "m2"):
        store.write_unit(m, "c", 0, _outcomes(rng, N, 0.95))
        for c in ("fog", "snow"):
            rows = _outcomes(rng, N, 0.5)
            if m == "ref" and c == "fog":
                rows["correct1"] = ids != 0  # one error
            if m == "m2" and c == "fog":
                rows["correct1"] = ids >= 6  # six errors
            rows["correct5"] = rows["correct5"] | rows["correct1"]  # top-1 correct is top-5 correct (the store checks)
            store.write_unit(m, c, 0, rows)
    store.close()
    paths = build_report(tmp_path)
    df = pd.read_csv(paths["tables/corruptions_d_c.csv"]).set_index("model_key")
    assert bool(df.loc["m2", "ce_unstable_fog"]) and not bool(df.loc["m2", "ce_unstable_snow"])
    assert df.loc["m2", "ce_norm_pct_fog"] == pytest.approx(600.0)
    assert df.loc["m2", "ce_norm_lo_pct_fog"] <= 600.0 <= df.loc["m2", "ce_norm_hi_pct_fog"]
    assert df.loc["ref", "ce_norm_lo_pct_fog"] == df.loc["ref", "ce_norm_hi_pct_fog"] == 100.0
    md = paths["tables/corruptions_d_c.md"].read_text()
    assert "WARNING: CE of fog is unstable" in md and "reference error 0.8% (1 errors in 120" in md
    other = next(line for line in md.splitlines() if line.startswith("| other_model"))
    ref = next(line for line in md.splitlines() if line.startswith("| ref_model"))
    assert " !" in other and " !" not in ref  # the reference's own CE is 100 by definition
    assert "CE ratios unstable" in paths["tables/headline.md"].read_text()
    plot = next(p for p in _plots_of(tmp_path, tmp_path / "p") if p.name == "corruption_ce_d_c")
    warned = [ax.get_xlabel() for ax in plot.fig.axes if "unstable" in ax.get_xlabel()]
    assert warned and "fog" in warned[0] and "snow" not in warned[0]
    assert "fog (!)" in [t.get_text() for t in plot.fig.axes[-1].get_xticklabels()]
    import matplotlib.pyplot as plt
    plt.close("all")


def test_console_ends_with_trust_checks_and_report_path(run, capsys):
    from robustbench_rpc.cli.commands import main

    run_dir, _, _ = run
    assert main(["report", str(run_dir)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-1] == f"report: {run_dir / 'index.html'}"
    assert lines[-3] == "trust checks: 2 checks: 1 pass, 1 warn"
    assert lines[-2] == "  WARN coverage (rpc_vit): partial evaluation"
    page = (run_dir / "index.html").read_text()
    assert 'Trust checks: <span class="bad">2 checks: 1 pass, 1 warn; not passed: warn coverage</span>' in page


def test_tables_left_align_text_and_keep_the_first_column_in_view(run):
    _, _, paths = run
    html_text = paths["index.html"].read_text()
    assert "position:sticky;left:0" in html_text and ".tbl{overflow-x:auto" in html_text
    attacks = re.search(r'<section id="attacks">.*?</section>', html_text, re.S).group(0)
    head = re.findall(r"<th([^>]*)>([^<]*)</th>", attacks)
    assert head[0] == ("", "Attack") and head[1] == ("", "Norm")          # text: left (default)
    assert head[-1][0] == ' class="num"'                                  # numbers: right
    assert '<div class="tbl"><table>' in attacks


def test_mce_on_robustbench_ids_uses_alexnets_rows_on_those_images(tmp_path):
    """On RobustBench's 5,000 ImageNet-C ids the run's own mCE is RobustBench's (AlexNet's per-severity
    accuracies on the same images), not Hendrycks & Dietterich's full-set AlexNet errors."""
    from robustbench_rpc.data.robustbench import alexnet_imagenet_c
    from robustbench_rpc.metrics import robustbench_corruption_scores
    from robustbench_rpc.reports.compute import corruption_results
    from robustbench_rpc.reports.data import RunData

    rng = np.random.default_rng(3)
    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m1", {"name": "only_model", "reference": True})
    subset = {"method": "file", "file": "robustbench-imagenet-5000", "entries": 5000}
    acc = {}
    for c in ("gaussian_noise", "fog"):
        for s in (1, 2, 3, 4, 5):
            key = f"{c}{s}"
            store.register_evaluation(key, {"kind": "corruption", "name": c, "dataset": "imagenet-c", "n_samples": 40,
                                            "subset": subset, "params": {"corruption": c, "severity": s,
                                                                         "source": "imagenet-c"}})
            rows = _outcomes(rng, 40, 0.3 + 0.1 * s)
            _write(store, "m1", key, rows)
            acc[(c, s)] = float(np.mean(rows["correct1"]))
    store.close()
    data = RunData.load(tmp_path)
    try:
        (res,) = corruption_results(data)
        want = robustbench_corruption_scores(acc, alexnet_imagenet_c())["corruptions_mce"]
        assert res.rows[0]["mce"] == pytest.approx(want, rel=1e-12)
        assert "RobustBench" in res.baseline_label
    finally:
        data.close()


def test_attack_labels_name_what_makes_the_attack():
    """Two APGDs and three BPDAs at one budget (the adaptive preset) read as distinct rows and comparisons;
    tuning parameters (steps, alpha) stay in their own columns."""
    from robustbench_rpc.reports.protocol import attack_name, eval_label

    def info(name, **params):
        return {"kind": "attack", "name": name, "params": {"eps": 1 / 255, "norm": "Linf", **params}}

    labels = [attack_name(info("apgd", loss="ce", n_iter=100)), attack_name(info("apgd", loss="dlr", n_iter=100)),
              attack_name(info("bpda", approximation="symmetric", base="apgd-ce")),
              attack_name(info("bpda", approximation="straight-through", base="apgd-ce")),
              attack_name(info("transfer", surrogate="self:no-pap", base="apgd-ce")), attack_name(info("pgd", steps=10))]
    assert labels == ["apgd loss=ce", "apgd loss=dlr", "bpda approximation=symmetric base=apgd-ce",
                      "bpda approximation=straight-through base=apgd-ce", "transfer surrogate=self:no-pap base=apgd-ce",
                      "pgd"]
    assert eval_label(info("pgd", steps=10)) == "pgd Linf eps=1/255 (10 steps)"
    assert eval_label(info("apgd", loss="dlr")) == "apgd loss=dlr Linf eps=1/255"
