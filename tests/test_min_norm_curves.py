"""Curves from per-sample minimal norms: robust accuracy vs eps with Wilson intervals, the median minimal norm
with a bootstrap interval, AttackBench's optimality, the not-tight check; and on the micro model, the curve
from FMN + DDN at an eps is never above what PGD at that eps leaves, by more than the curve's interval."""
from __future__ import annotations

import numpy as np
import pytest

import robustbench_rpc
from robustbench_rpc.attacks import attack_outcomes, get_attack
from robustbench_rpc.reports.curves import (
    curve, median_norm, minimal_norms_from_rows, not_tight, optimality, per_sample_best,
)
from conftest import digits_batch
from tiny_runs import run, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")
INF = np.inf


def test_curve_counts_samples_beyond_eps_with_wilson_intervals():
    best = [0.0, 0.1, 0.2, 0.3, INF]
    pts = curve(best, [0.0, 0.15, 0.3, 1.0])
    assert [p.robust_accuracy for p in pts] == [0.8, 0.6, 0.2, 0.2]
    assert all(p.lo <= p.robust_accuracy <= p.hi and p.n == 5 for p in pts)


def test_per_sample_best_and_rows_keep_never_broken_as_inf():
    a = minimal_norms_from_rows([0.0, 0.5, 0.0, 0.3], clean_correct=[False, True, True, True],
                                adv_correct=[False, False, True, False])
    assert a.tolist() == [0.0, 0.5, INF, 0.3]
    assert per_sample_best({"a": a, "b": [0.0, 0.7, 0.9, 0.1]}).tolist() == [0.0, 0.5, 0.9, 0.1]
    with pytest.raises(ValueError, match="different numbers of samples"):
        per_sample_best({"a": [1.0], "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="NaN"):
        curve([np.nan], [0.1])


def test_median_norm_is_an_observed_value_and_handles_never_broken():
    med, lo, hi = median_norm([0.1, 0.2, 0.3, INF, INF])
    assert med == 0.3 and lo <= med <= hi
    assert median_norm([INF, INF, INF])[0] == INF


def test_optimality_matches_attackbench_formula():
    """AttackBench's eval_optimality, written out on a small case: 1 for the best itself, lower when worse."""
    best = np.array([0.0, 1.0, 2.0, 4.0])
    assert optimality(best, best) == pytest.approx(1.0)
    worse = np.array([0.0, 2.0, 3.0, INF])
    # reference, by hand from eval_optimality's lines (np.unique, cumsum, trapezoid):
    d, c = np.unique(best, return_counts=True)
    ra = 1 - c.cumsum() / 4
    best_area = np.trapezoid(ra, d)
    clean, max_dist = 3 / 4, 4.0
    d2, c2 = np.unique(np.minimum(worse, max_dist), return_counts=True)
    area = np.trapezoid(1 - c2.cumsum() / 4, d2)
    assert optimality(worse, best) == pytest.approx(1 - (area - best_area) / (clean * max_dist - best_area))
    assert optimality(worse, best) < 1


def test_not_tight_flags_fixed_budget_breaks_beyond_the_curve():
    best = [0.0, 0.1, 0.5, INF]
    assert not_tight(best, [False, True, True, True], eps=0.2).tolist() == [2, 3]


def test_curve_at_eps_is_not_above_pgd_by_more_than_its_interval():
    x, y = digits_batch(24)
    model = robustbench_rpc.load_model("symvit_micro_patch4_32", "packaged").eval()
    norms = {}
    for name, params in (("fmn", {"norm": "Linf", "steps": 40}), ("fab", {"norm": "Linf", "n_iter": 20})):
        out = attack_outcomes(model, get_attack(name, seed=0, **params), x, y)
        norms[name] = minimal_norms_from_rows(out.linf, out.clean_correct1, out.adv_correct1)
    best = per_sample_best(norms)
    eps = 8 / 255
    pgd = attack_outcomes(model, get_attack("pgd", eps=eps, steps=20, seed=0), x, y)
    point = curve(best, [eps])[0]
    assert point.lo <= pgd.robust_accuracy + 1e-9 or point.robust_accuracy <= pgd.robust_accuracy
    flagged = not_tight(best, (pgd.clean_correct1 & ~pgd.adv_correct1).numpy(), eps)
    assert len(flagged) <= int((pgd.clean_correct1 & ~pgd.adv_correct1).sum())
    for name in norms:
        assert 0 <= optimality(norms[name], best) <= 1


def test_curve_suite_through_the_cli_stores_attacks_and_reports_the_curve(tmp_path, capsys):
    import pandas as pd

    from robustbench_rpc.cli import main

    def curve_suite(*attacks: dict):
        return write_suite(tmp_path / "c.toml", dict(kind="curve", name="Linf micro", norm="Linf",
                                                     attacks=[dict(attack="fmn", steps=40), *attacks]),
                           name="c", description="a curve", batch_size=16, seed=0, limit=16)

    suite = curve_suite(dict(attack="ddn", norm="L2"))
    code = main(["run", "--suite", str(suite), "--out", str(tmp_path / "bad"), "--no-progress"])
    assert code == 2 and "ddn has norm 'L2' in a Linf curve" in capsys.readouterr().err
    curve_suite(dict(attack="fab", n_iter=20), dict(attack="pgd", eps="8/255", steps=20))
    out = tmp_path / "out"
    assert run(suite, out) == 0
    table = pd.read_csv(out / "tables" / "curve_linf_micro.csv")
    assert set(table["kind"]) == {"minimum-norm", "fixed-budget"}
    assert (out / "plots" / "curve_linf_micro.png").is_file()
    assert "Robust accuracy vs eps: Linf micro" in (out / "index.html").read_text()
    fixed = table[table["kind"] == "fixed-budget"].iloc[0]
    # the curve at 8/255 is not above PGD's robust accuracy there by more than its interval
    assert fixed["curve_lo"] <= fixed["robust_accuracy"] + 1e-9
    minimal = table[table["kind"] == "minimum-norm"]
    assert ((minimal["optimality"] >= 0) & (minimal["optimality"] <= 1)).all()
