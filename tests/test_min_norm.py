"""Minimum-norm attacks (fmn, ddn, fab) and APGD-L1 through get_attack and a suite run: what each returns, the
unbroken samples left unchanged, eps as "broken within eps", L0 as a norm, and the one-line option errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import Normalize

from robustbench_rpc.attacks import attack_outcomes, get_attack, lp_norms
from robustbench_rpc.attacks.budget import canonical_norm, project_delta
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import run, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")
HW = 8


@pytest.fixture(scope="module")
def trained():
    """A small MLP fitted on separable synthetic images, and 12 test images."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(4, 3, HW, HW, generator=g) > 0.5).float() * 2 - 1

    def data(n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=gen)
        return (0.5 + 0.05 * protos[y] + 0.1 * torch.randn(n, 3, HW, HW, generator=gen)).clamp(0, 1), y

    torch.manual_seed(0)
    model = nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3 * HW * HW, 32), nn.ReLU(), nn.Linear(32, 4))
    xtr, ytr = data(256, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = data(12, 2)
    return model, x, y


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


CASES = [("fmn", {"norm": "L0", "steps": 60}), ("fmn", {"norm": "L1", "steps": 40}),
         ("fmn", {"norm": "L2", "steps": 40}), ("fmn", {"norm": "Linf", "steps": 40}), ("ddn", {"steps": 40}),
         ("fab", {"norm": "Linf", "n_iter": 20}), ("fab", {"norm": "L2", "n_iter": 20}),
         ("fab", {"norm": "L1", "n_iter": 10})]


@pytest.mark.parametrize("name,params", CASES)
def test_minimum_norm_attack_breaks_samples_and_leaves_the_rest_unchanged(name, params, trained):
    model, x, y = trained
    adv = get_attack(name, seed=0, **params)(model, x, y)
    hit = fooled(model, adv, y)
    assert hit.float().mean() >= 0.75, f"{name} {params} broke only {int(hit.sum())} of {len(y)}"
    assert torch.equal(adv[~hit], x[~hit]), "a sample the attack could not break comes back unchanged"
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


@pytest.mark.parametrize("name,params", [("fmn", {"norm": "L2", "steps": 40}), ("ddn", {"steps": 40}),
                                         ("fab", {"norm": "L2", "n_iter": 20})])
def test_eps_means_broken_within_eps(name, params, trained):
    model, x, y = trained
    unbounded = get_attack(name, seed=0, **params)(model, x, y)
    norms = lp_norms(unbounded - x, "L2")
    eps = float(norms[fooled(model, unbounded, y) & (norms > 0)].median()) * (1 + 1e-6)  # not on a sample's norm
    bounded = get_attack(name, seed=0, eps=eps, **params)
    out = attack_outcomes(model, bounded, x, y)  # the budget check accepts it
    adv = bounded(model, x, y)
    hit = fooled(model, adv, y)
    assert float(lp_norms(adv - x, "L2").max()) <= eps * (1 + 1e-5)
    assert torch.equal(adv[~hit], x[~hit])
    if name != "fab":  # the same search, then the eps filter: every sample found within eps stays broken
        assert torch.equal(hit, fooled(model, unbounded, y) & (norms <= eps))
    assert out.robust_accuracy == pytest.approx(float((~hit).float().mean()))  # clean-misclassified count as hit


def test_fmn_linf_smaller_than_pgd_needs(trained):
    """A minimal-norm adversarial at radius r: PGD at 0.5 r breaks at most the samples FMN broke below it."""
    model, x, y = trained
    adv = get_attack("fmn", norm="Linf", steps=60)(model, x, y)
    r = lp_norms(adv - x, "Linf")
    pgd = get_attack("pgd", eps=float(r.median()), steps=20, seed=0)(model, x, y)
    assert fooled(model, pgd, y).sum() <= fooled(model, adv, y).sum()


def test_l0_norm_counts_changed_values_and_projects():
    d = torch.tensor([[0.0, 0.5, -0.2, 0.0, 0.9, 0.1]])
    assert canonical_norm("l0") == "L0"
    assert lp_norms(d, "L0").tolist() == [4.0]
    assert torch.equal(project_delta(d, 2.5, "L0"), torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.9, 0.0]]))


def test_fmn_l0_is_sparse(trained):
    model, x, y = trained
    adv = get_attack("fmn", norm="L0", steps=60)(model, x, y)
    hit = fooled(model, adv, y)
    assert float(lp_norms(adv - x, "L0")[hit].median()) < 0.25 * x[0].numel()


def test_apgd_l1_respects_budget_and_lowers_accuracy(trained):
    model, x, y = trained
    attack = get_attack("apgd", norm="L1", eps=2.0, n_iter=10, seed=0)
    out = attack_outcomes(model, attack, x, y)
    assert float(out.l1.max()) <= 2.0 * (1 + 1e-4)
    assert out.robust_accuracy < out.clean_accuracy


@pytest.mark.parametrize("name,params,option", [
    ("fmn", {"norm": "L0", "gamma_init": 1.5}, "gamma_init"), ("fmn", {"steps": 0}, "steps"),
    ("ddn", {"norm": "Linf"}, "norm"), ("ddn", {"gamma": 0}, "gamma"), ("fab", {"norm": "L0"}, "norm"),
    ("fab", {"space": "normalized"}, "space"), ("pgd", {"eps": 0.1, "norm": "L0"}, "norm"),
])
def test_bad_options_name_the_option(name, params, option):
    with pytest.raises(ValueError, match=option):
        get_attack(name, **params)


def test_suite_runs_minimum_norm_attacks_through_the_cli(tmp_path, capsys):
    fmn = dict(kind="attack", attack="fmn", norm="L2")
    suite = write_suite(tmp_path / "mn.toml", dict(fmn, steps=10), dict(fmn, steps=1), name="mn",
                        description="minimum-norm attacks", batch_size=8, seed=0, limit=8)
    out = tmp_path / "out"
    assert run(suite, out, "--no-report") == 0
    printed = capsys.readouterr().out
    assert "attack fmn norm=L2 steps=10" in printed
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        steps = evals["params"].map(lambda p: p.get("steps"))
        rows = store.samples(eval_key=evals[steps == 10]["eval_key"].iloc[0])
        one_step = store.samples(eval_key=evals[steps == 1]["eval_key"].iloc[0])
    assert len(rows) == 8
    broken = rows[(rows["clean_correct1"] == 1) & (rows["correct1"] == 0)]
    assert len(broken) and (broken["l2"] > 0).all()  # the per-sample minimal L2 norm is what the store holds
    # one step breaks nothing (the first iterate is the clean image): never broken is stored as no norm at all
    never = one_step[(one_step["clean_correct1"] == 1) & (one_step["correct1"] == 1)]
    assert len(never) >= 6 and never["l2"].isna().all() and never["linf"].isna().all()
