"""`cw-cleverhans` is cleverhans 4.0.0's `carlini_wagner_l2`, binary-search aliasing bug included.

cleverhans keeps its search bounds in Python lists and writes ``upper_bound[n] = min(upper_bound[n],
const[n])`` / ``lower_bound[n] = max(lower_bound[n], const[n])``: both store the tensor *view*
``const[n]``, so once a sample's search has succeeded and failed, ``(lower + upper) / 2`` is the constant
itself and it freezes. The side-by-side tests run the real cleverhans (skipped without it: its package
requires tensorflow-probability, so it is not a test dependency); the pinning tests need no cleverhans.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustbench_rpc.attacks import cw_cleverhans, get_attack
from robustbench_rpc.models.normalize import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# lr, iterations and constant chosen so that many searches change direction in 5 steps
SEARCH = dict(lr=0.01, max_iterations=25, binary_search_steps=5, initial_const=0.1, confidence=0.5)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 10)).eval()


def batch(n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def intended_search():
    """The bisection cleverhans meant (its bounds hold values), with the signature of the aliased step;
    what this project's `cw` runs. One instance per attack call (it holds the bounds)."""
    bounds = {}

    def step(success, const, upper_is_const, lower_is_const):
        lo, hi = bounds.get("b", (torch.zeros_like(const), torch.full_like(const, 1e10)))
        hi = torch.where(success, torch.minimum(hi, const), hi)
        lo = torch.where(success, lo, torch.maximum(lo, const))
        bounds["b"] = (lo, hi)
        return torch.where(hi < 1e9, (lo + hi) / 2, torch.where(success, const, const * 10)), upper_is_const, \
            lower_is_const

    return step


# ----------------------------------------------------------------------- side by side with cleverhans
def test_pixel_space_images_are_cleverhans_bit_for_bit(monkeypatch):
    ch = pytest.importorskip("cleverhans.torch.attacks.carlini_wagner_l2",
                             reason="cleverhans 4.0.0 is not installed (pip install --no-deps cleverhans==4.0.0)")
    model = mlp()
    x, y = batch()
    ref = ch.carlini_wagner_l2(model, x, 10, y=y, **SEARCH)
    ours = get_attack("cw-cleverhans", **SEARCH)(model, x, y)
    assert torch.equal(ours, ref)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(ref).argmax(1))
    # the case discriminates: the intended bisection gives other images for many samples
    monkeypatch.setattr(cw_cleverhans, "_cleverhans_search_step", intended_search())
    intended = get_attack("cw-cleverhans", **SEARCH)(model, x, y)
    differ = int(((intended - ref).flatten(1).abs().amax(1) > 1e-6).sum())
    assert differ >= 10, differ


def test_papers_call_on_normalized_images_matches_cleverhans():
    """engine.py's call: normalized images, y=None (the clean prediction), [0, 1] clamp in those units."""
    ch = pytest.importorskip("cleverhans.torch.attacks.carlini_wagner_l2",
                             reason="cleverhans 4.0.0 is not installed (pip install --no-deps cleverhans==4.0.0)")
    inner = mlp(2)
    model = Normalized(inner, MEAN, STD)
    x, y = batch(32, seed=4)
    z = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    ref = ch.carlini_wagner_l2(inner, z, 10, **SEARCH)
    ours = get_attack("cw-cleverhans", space="normalized", clip=False, labels="predicted", **SEARCH)(model, x, y)
    back = (ours - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(back, ref, atol=1e-5)  # only the round trip through pixel units rounds
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), inner(ref).argmax(1))


# ------------------------------------------------------------------- the frozen constant, pinned
def _run_search(successes: list[bool], c0: float) -> list[float]:
    const = torch.tensor([c0])
    up, lo = torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)
    seen = []
    for s in successes:
        const, up, lo = cw_cleverhans._cleverhans_search_step(torch.tensor([s]), const, up, lo)
        seen.append(round(float(const), 6))
    return seen


def test_search_freezes_once_it_changes_direction():
    # hand-checked against cleverhans' lines 177-189 with bounds that alias const[n]:
    # fail 0.01 -> x10; fail 0.1 -> x10; success at 1: upper := view, (lower + upper)/2 = (1 + 1)/2 = 1 ...
    assert _run_search([False, False, True, False, True], 0.01) == [0.1, 1.0, 1.0, 1.0, 1.0]
    # success 0.01 -> (0 + 0.01)/2; success -> halve again; failure: lower := view, (c + c)/2 = c
    assert _run_search([True, True, False, True, False], 0.01) == [0.005, 0.0025, 0.0025, 0.0025, 0.0025]
    assert _run_search([True] * 4, 8.0) == [4.0, 2.0, 1.0, 0.5]  # one direction only: halving, as intended
    assert _run_search([False] * 3, 1.0) == [10.0, 100.0, 1000.0]
    # the intended search bisects instead: 0.55 = (0.1 + 1) / 2 after failing at 0.1 and succeeding at 1
    const, flags, step = torch.tensor([0.01]), torch.zeros(1, dtype=torch.bool), intended_search()
    for s in (False, False, True):
        const, _, _ = step(torch.tensor([s]), const, flags, flags)
    assert float(const) == pytest.approx(0.55)


class ConstProbe(nn.Module):
    """A linear model that records d loss / d logits: with one sample and f > 0 that is the constant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
        self.seen: list[float] = []

    def forward(self, x):
        out = self.lin(x)
        if out.requires_grad:
            out.register_hook(lambda g: self.seen.append(float(g[0].abs().max())))
        return out


def _constants_per_step(iters: int = 20, steps: int = 6) -> list[float]:
    probe = ConstProbe()
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    get_attack("cw-cleverhans", lr=0.05, initial_const=0.01, binary_search_steps=steps, max_iterations=iters,
               labels="predicted")(probe, x, torch.zeros(1, dtype=torch.long))
    return [max(probe.seen[i * iters:(i + 1) * iters]) for i in range(steps)]


def test_attack_runs_the_frozen_search(monkeypatch):
    """Through the attack: this sample fails at c = 0.01, 0.1 and 1 and succeeds at 10; cleverhans (and so
    this attack) then keeps c = 10, where the intended search tries (1 + 10) / 2 = 5.5 next."""
    assert _constants_per_step() == pytest.approx([0.01, 0.1, 1.0, 10.0, 10.0, 10.0], rel=1e-5)
    monkeypatch.setattr(cw_cleverhans, "_cleverhans_search_step", intended_search())
    assert _constants_per_step()[:5] == pytest.approx([0.01, 0.1, 1.0, 10.0, 5.5], rel=1e-5)
