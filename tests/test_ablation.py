"""[sweep] model grids, kind = "diagnostics" evaluations in suites, and their report section."""
import json

import pandas as pd
import pytest

from robustbench_rpc.evaluation.harness import run
from robustbench_rpc.reports import build_report
from robustbench_rpc.evaluation.plan import ModelSpec, RunConfig, sweep_models
from robustbench_rpc.evalspec import SuiteError
from robustbench_rpc.evaluation.suite import expand, load_suite, suite_from_dict
from tiny_runs import suite_text


def test_packaged_ablation_suite_expands_to_the_grid():
    suite = load_suite("rpc-ablation")
    evals = expand(suite, "digits32")
    assert [e.kind for e in evals].count("diagnostics") == 1
    models = sweep_models([ModelSpec.parse(s) for s in suite.defaults["models"]], suite.sweep, suite.path)
    assert len(models) == 2 * (1 + 5 * 4 * 2)  # per base: unpatched + lambda x n_iter x layers
    grid = {(m.sweep["base"], m.sweep["layers"], m.sweep["lam"], m.sweep["n_iter"]) for m in models if m.sweep}
    assert len(grid) == 80
    assert len({m.display for m in models}) == len(models)  # every grid point has its own name


def _suite(**sweep):
    return {"name": "t", "evaluation": [{"kind": "clean"}], "sweep": sweep}


@pytest.mark.parametrize("sweep,match", [
    (dict(attention="rcp", args={"lam": [1]}), "unknown attention variant 'rcp'.*rpc"),
    (dict(attention="rpc", args={"lam": [1, -2]}), r"lambda must be > 0"),
    (dict(attention="rpc", args={"n_iters": [2]}), "n_iters"),
    (dict(attention="rpc", layers=["frist"]), "layers must be 'all', 'first'"),
])
def test_bad_sweeps_fail_before_compute(sweep, match):
    suite = suite_from_dict(_suite(**sweep), "grid.toml")
    with pytest.raises((SuiteError, TypeError), match=match):
        sweep_models([ModelSpec.parse("rpc_symvit_micro_patch4_32:packaged")], suite.sweep, suite.path)


@pytest.mark.parametrize("ev,match", [
    ({"kind": "diagnostics", "diagnostics": ["papp"]}, "unknown diagnostic 'papp'.*pap"),
    ({"kind": "diagnostics", "attack": "pgd", "attack_args": {"eps": "4/255", "stepz": 2}}, "stepz"),
    ({"kind": "diagnostics", "attack_args": {"eps": 1}}, "attack_args without attack"),
    ({"kind": "diagnostics", "corruption": "fogg"}, "unknown corruption 'fogg'.*fog"),
    ({"kind": "diagnostics", "corruption": "fog", "severity": 7}, "severity must be within 1..5"),
    ({"kind": "diagnostics", "inputs": 3}, "unknown key 'inputs'"),
])
def test_bad_diagnostics_evaluations_fail_before_compute(ev, match):
    with pytest.raises(SuiteError, match=match):
        expand(suite_from_dict({"name": "t", "evaluation": [ev]}, "d.toml"), "digits32")


SMALL = suite_text(
    dict(kind="clean"), dict(kind="attack", attack="pgd", eps=["4/255"], steps=2),
    dict(kind="corruption", corruptions=["gaussian_noise"], severities=[3]),
    dict(kind="diagnostics", attack="pgd", attack_args={"eps": "4/255", "steps": 2}, corruption="gaussian_noise",
         severity=3),
    name="grid", version=None, top={"sweep": {"attention": "rpc", "layers": ["first"],
                                              "args": {"lam": [1.0, 4.0], "n_iter": [2]}}},
    models=["rpc_symvit_micro_patch4_32:packaged"], batch_size=4, limit=8)


def test_grid_run_stores_diagnostics_and_reports_them(tmp_path):
    suite = tmp_path / "grid.toml"
    suite.write_text(SMALL)
    out = tmp_path / "run"
    cfg = RunConfig(suite=str(suite), out=out, device="cpu", progress=False)
    run(cfg, log=lambda *_: None)
    build_report(out)  # the harness stops at the store; the CLI and benchmark() build the report
    from robustbench_rpc.store.results import ResultsStore

    with ResultsStore(out / "results.sqlite", readonly=True) as st:
        meta = st.meta()
        models = st.models()
    diag = {k: v for k, v in meta.items() if k.startswith("diagnostics/")}
    assert len(diag) == 3 and len(models) == 3  # unpatched + 2 grid points
    for v in diag.values():
        rows = pd.DataFrame(v["rows"])
        pap = rows.dropna(subset=["s_fraction"])
        assert set(rows["input"]) == {"clean", "attack", "corruption"}
        assert set(pap["layer"]) == {0}
        n_iter = 4 if "lam" not in v["model"] else 2
        assert set(pap["iteration"]) == set(range(1, n_iter + 1))
        assert (rows["n"] == 8).all()
    # the unpatched RPC model's stored diagnostics equal a direct API call on the same images
    from torch.utils.data import Subset

    import robustbench_rpc
    from robustbench_rpc.data import digits32
    from robustbench_rpc.diagnostics import run_diagnostics
    import torch

    base = next(v for v in diag.values() if "lam" not in v["model"])
    m = robustbench_rpc.load_model("rpc_symvit_micro_patch4_32", "robustbench_rpc/checkpoints/"
                                   "rpc_symvit_micro_patch4_32.safetensors")
    from robustbench_rpc.data.subsets import stratified_indices

    test = digits32("test")
    ds = Subset(test, stratified_indices(test.labels.tolist(), 8))  # what --limit 8 evaluates
    direct, _ = run_diagnostics(m, torch.stack([ds[i][0] for i in range(8)]), ["pap"], batch_size=4)
    stored = pd.DataFrame(base["rows"])
    stored = stored[stored["input"] == "clean"].dropna(subset=["s_fraction"]).sort_values(["head", "iteration"])
    d = pd.DataFrame(direct).sort_values(["head", "iteration"])
    assert stored["s_fraction"].to_numpy() == pytest.approx(d["s_fraction"].to_numpy(), abs=1e-6)
    # report: diagnostics tables, every-row CSV, the ablation table and its plots
    html = (out / "index.html").read_text()
    for name in ("diagnostics_pap", "diagnostics_kpca", "ablation"):
        assert (out / "tables" / f"{name}.csv").is_file(), name
        assert f'id="{name}"' in html or f"id='{name}'" in html, name
    full = pd.read_csv(out / "tables" / "diagnostics_full.csv")
    assert {"model", "input", "layer", "head", "iteration", "s_fraction", "s_to_k_l1", "residual"} <= set(full.columns)
    abl = pd.read_csv(out / "tables" / "ablation.csv")
    assert set(abl["kind"]) == {"clean", "attack", "corruption"} and set(abl["lam"].dropna()) == {1.0, 4.0}
    assert (out / "plots" / "ablation_acc_vs_lambda.png").is_file()
    assert (out / "plots" / "ablation_acc_vs_n_iter.svg").is_file()
    owned = json.loads((out / "report_files.json").read_text())
    assert "tables/diagnostics_full.csv" in owned
    # a rerun resumes: the stored diagnostics are kept as they are
    run(cfg, log=lambda *_: None)
    with ResultsStore(out / "results.sqlite", readonly=True) as st:
        assert {k: v for k, v in st.meta().items() if k.startswith("diagnostics/")} == diag
