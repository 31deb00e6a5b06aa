"""Query accounting: the one wrapper's per-sample forward and backward counts equal those of a model that
counts its own calls by hand (a different rule: each row's sample read off its mean level), for attacks that
call the model on changing subsets; the per-sample query budget stops a sample's queries."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustbench_rpc.attacks import get_attack
from robustbench_rpc.attacks.accounting import QueryCounter, count_queries
from tiny_runs import run, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")
LEVELS = torch.tensor([0.1, 0.25, 0.4, 0.55, 0.7, 0.85])


class HandCounted(nn.Module):
    """A tiny classifier that counts, per sample, its forwards and the backwards reaching its input. The images
    are constant grey levels far apart, so a row's sample is the level its mean is closest to (eps << gap)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 4))
        self.forwards = torch.zeros(len(LEVELS), dtype=torch.int64)
        self.backwards = torch.zeros(len(LEVELS), dtype=torch.int64)

    def forward(self, x):
        rows = (x.detach().flatten(1).mean(dim=1, keepdim=True).cpu() - LEVELS).abs().argmin(dim=1)
        self.forwards += torch.bincount(rows, minlength=len(LEVELS))
        if x.requires_grad and torch.is_grad_enabled():
            def seen(grad, rows=rows):
                self.backwards.add_(torch.bincount(rows, minlength=len(LEVELS)))
                return grad
            x.register_hook(seen)
        return self.net(x)


def batch():
    g = torch.Generator().manual_seed(1)
    x = (LEVELS.view(-1, 1, 1, 1) + 0.01 * torch.randn(len(LEVELS), 3, 8, 8, generator=g)).clamp(0, 1)
    return x, torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("name,params", [
    ("pgd", dict(eps=4 / 255, steps=6, early_stop=True)),  # stops per sample: subsets
    ("apgd", dict(eps=4 / 255, n_iter=5, n_restarts=2)),   # the reference library, subsets per restart
    ("fmn", dict(norm="L2", steps=8)),
    ("square", dict(eps=4 / 255, n_queries=15)),            # forwards only
])
def test_counts_equal_a_hand_instrumented_model(name, params):
    model = HandCounted().eval()
    x, y = batch()
    _, counts = count_queries(model, get_attack(name, seed=0, **params), x, y)
    assert counts.ambiguous == 0
    assert torch.equal(counts.forwards, model.forwards), (counts.forwards, model.forwards)
    assert torch.equal(counts.backwards, model.backwards), (counts.backwards, model.backwards)
    assert int(counts.forwards.sum()) > 0
    if name == "square":
        assert int(counts.backwards.sum()) == 0
    else:
        assert int(counts.backwards.sum()) > 0
    assert counts.summary()["queries_total"] == int(model.forwards.sum() + model.backwards.sum())


def test_pgd_without_early_stop_costs_steps_forwards_and_backwards_per_sample():
    model = HandCounted().eval()
    x, y = batch()
    _, counts = count_queries(model, get_attack("pgd", eps=4 / 255, steps=7, seed=0), x, y)
    assert counts.forwards.tolist() == [7] * 6 and counts.backwards.tolist() == [7] * 6


def test_query_budget_caps_each_sample():
    model = HandCounted().eval()
    x, y = batch()
    counter = QueryCounter(model, x, query_budget=4)
    get_attack("pgd", eps=4 / 255, steps=10, seed=0)(counter, x, y)
    assert int(counter.counts().queries.max()) <= 4 + 1  # a forward allowed at 3 brings its backward along
    with pytest.raises(ValueError, match="query_budget"):
        QueryCounter(model, x, query_budget=0)


def test_a_run_stores_the_counts_and_the_report_shows_them_per_attack(tmp_path):
    import pandas as pd

    from robustbench_rpc.store.results import ResultsStore

    suite = write_suite(tmp_path / "q.toml", dict(kind="attack", attack="pgd", eps="8/255", steps=4, early_stop=False),
                        name="q", description="query counts", batch_size=8, seed=0, limit=8)
    out = tmp_path / "out"
    assert run(suite, out) == 0
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        stored = [v for k, v in store.meta().items() if k.startswith("queries/")]
    assert len(stored) == 1 and stored[0]["forwards"] == [4] * 8 and stored[0]["backwards"] == [4] * 8
    table = pd.read_csv(out / "tables" / "queries.csv")
    assert table["forwards_mean"].tolist() == [4.0] and table["backwards_total"].tolist() == [32]
    assert "What each attack cost" in (out / "index.html").read_text()


def test_suite_query_budget_caps_every_sample_of_a_run(tmp_path, capsys):
    from robustbench_rpc.cli import main
    from robustbench_rpc.store.results import ResultsStore

    def budget_suite(budget: int):
        return write_suite(tmp_path / "b.toml", dict(kind="attack", attack="pgd", eps="8/255", steps=10,
                                                     early_stop=False, query_budget=budget),
                           name="b", description="a query budget", batch_size=8, seed=0, limit=8)

    suite = budget_suite(0)
    assert main(["run", "--suite", str(suite), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "query_budget must be an integer >= 1" in capsys.readouterr().err
    budget_suite(6)
    out = tmp_path / "out"
    assert run(suite, out, "--no-report") == 0
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        (stored,) = [v for k, v in store.meta().items() if k.startswith("queries/")]
    queries = [f + b for f, b in zip(stored["forwards"], stored["backwards"])]
    assert max(queries) <= 6 + 1 and min(queries) >= 6  # 10 steps would cost 20
