"""Indicators of attack failure (Pintor et al., NeurIPS 2022) from per-sample paths: a model built to stall PGD
(its cross-entropy saturates, so every input gradient is exactly zero) gets the zero_gradients FAIL naming it,
while the margin loss on the same model and PGD on a shipped micro model do not; silent success is caught."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import robustbench_rpc
from robustbench_rpc.attacks import get_attack
from robustbench_rpc.attacks.indicators import attack_indicators, break_point_alignment, increasing_loss
from robustbench_rpc.data.embedded import digits32

pytestmark = pytest.mark.usefixtures("one_thread")


class Saturated(nn.Module):
    """The shipped SymViT micro with its logits x 1e4: the same decisions, a cross-entropy whose softmax is
    exactly one-hot in float32, so its input gradient is exactly zero and PGD on CE cannot move."""

    def __init__(self, inner):
        super().__init__()
        self.model = inner

    def forward(self, x):
        return self.model(x) * 1e4


@pytest.fixture(scope="module")
def micro():
    ds = digits32("test")
    x = torch.stack([ds[i][0] for i in range(8)])
    y = torch.tensor([int(ds[i][1]) for i in range(8)])
    return robustbench_rpc.load_model("symvit_micro_patch4_32", "packaged").eval(), x, y


def by_name(results):
    return {r.name: r for r in results}


def test_model_built_to_stall_pgd_gets_zero_gradients_fail_naming_it(micro):
    model, x, y = micro
    stalled = Saturated(model).eval()
    adv, results = attack_indicators(stalled, get_attack("pgd", eps=8 / 255, steps=10, random_start=False), x, y,
                                     model_name="saturated-symvit")
    r = by_name(results)["zero_gradients"]
    assert r.status == "fail" and "saturated-symvit" in r.message and "stalled" in r.message
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    assert ok.sum() >= 6 and torch.equal(adv[ok], x[ok])  # it never moved a correctly classified sample
    # the same model under the margin loss: gradients exist, the attack moves and breaks samples
    _, results = attack_indicators(stalled, get_attack("pgd", eps=8 / 255, steps=10, loss="margin",
                                                       random_start=False), x, y, model_name="saturated-symvit")
    assert by_name(results)["zero_gradients"].status == "pass"


def test_shipped_micro_model_with_pgd_gets_no_fail(micro):
    model, x, y = micro
    _, results = attack_indicators(model, get_attack("pgd", eps=2 / 255, steps=10), x, y, model_name="symvit")
    r = by_name(results)
    assert r["zero_gradients"].status == "pass" and r["silent_success"].status == "pass"


class ReturnsClean:
    """An attack that walks to an adversarial point and then returns the clean image: a silent success."""

    name = "returns-clean"

    def __call__(self, model, x, y):
        pgd = get_attack("pgd", eps=16 / 255, steps=10, loss="margin")
        pgd(model, x, y)
        return x.clone()


def test_silent_success_is_caught(micro):
    model, x, y = micro
    _, results = attack_indicators(model, ReturnsClean(), x, y, model_name="symvit")
    r = by_name(results)["silent_success"]
    assert r.status == "fail" and r.details["count"] >= 1 and "returns-clean on symvit" in r.message


def test_path_shapes():
    straight = np.linspace(1, 0, 20)
    knee = np.concatenate([np.linspace(1, 0, 5), np.zeros(15)])
    assert break_point_alignment(straight) == pytest.approx(1.0, abs=1e-6)
    assert break_point_alignment(knee) < 0.8
    assert increasing_loss(straight) == 0.0 and increasing_loss(np.array([0.0, 1.0, 0.0, 1.0])) > 0


def test_a_run_reports_the_stalled_attack_naming_the_model(micro, tmp_path):
    import pandas as pd

    model, _, _ = micro
    suite = tmp_path / "s.toml"
    suite.write_text("""name = "s"
version = 1
description = "a stalled attack"
[defaults]
dataset = "digits32"
batch_size = 8
seed = 0
limit = 8
[[evaluation]]
kind = "attack"
attack = "pgd"
eps = "8/255"
steps = 5
random_start = false
""")
    robustbench_rpc.benchmark(Saturated(model).eval(), suite=str(suite), out=tmp_path / "out",
                              data_config={"input_size": (3, 32, 32), "num_classes": 10, "interpolation": "bilinear",
                                           "crop_pct": 1.0})
    table = pd.read_csv(tmp_path / "out" / "tables" / "indicators.csv")
    zero = table[table["indicator"] == "zero_gradients"].iloc[0]
    assert zero["status"] == "fail" and "stalled" in zero["message"] and zero["model"] in zero["message"]
