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
from robustbench_rpc.attacks.indicators import attack_indicators, still_falling, unstable_predictions
from conftest import digits_batch
from tiny_runs import run, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")


class Saturated(nn.Module):
    """The shipped SymViT micro with its logits x 1e4: the same decisions, a cross-entropy whose softmax is
    exactly one-hot in float32, so its input gradient is exactly zero and PGD on CE cannot move."""

    def __init__(self, inner):
        super().__init__()
        self.model = inner

    def forward(self, x):
        return self.model(x) * 1e4


def _stall(model, tmp_path, steps: int, description: str):
    """benchmark() on the saturated model: PGD at 8/255 from the clean image, 8 digits32 images."""
    suite = write_suite(tmp_path / "s.toml", dict(kind="attack", attack="pgd", eps="8/255", steps=steps,
                                                  random_start=False),
                        name="s", description=description, models=None, batch_size=8, seed=0, limit=8)
    return robustbench_rpc.benchmark(Saturated(model).eval(), suite=str(suite), out=tmp_path / "out",
                                     data_config={"input_size": (3, 32, 32), "num_classes": 10,
                                                  "interpolation": "bilinear", "crop_pct": 1.0})


@pytest.fixture(scope="module")
def micro():
    x, y = digits_batch(8)
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
    # the same model under the margin loss: gradients exist, the attack moves; the samples it leaves standing at a
    # small budget are judged, and none stalled
    adv, results = attack_indicators(stalled, get_attack("pgd", eps=1 / 255, steps=10, loss="margin",
                                                         random_start=False), x, y, model_name="saturated-symvit")
    zero = by_name(results)["zero_gradients"]
    assert zero.status == "pass" and zero.details["n"] >= 1 and not torch.equal(adv[ok], x[ok])
    # an attack that broke every sample leaves nothing to judge: no verdicts (not a vacuous pass)
    _, results = attack_indicators(stalled, get_attack("pgd", eps=16 / 255, steps=10, loss="margin",
                                                       random_start=False), x, y, model_name="saturated-symvit")
    assert results == []


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


def test_incomplete_optimization_is_the_reference_last_steps_test():
    """Rescaled, made non-increasing, a path still falling by more than 0.05 over its last 10 points."""
    assert still_falling(np.linspace(1, 0, 20))  # a straight descent: still going when stopped
    assert not still_falling(np.concatenate([np.linspace(1, 0, 5), np.zeros(15)]))  # levelled off
    # a rise is not progress: the best-so-far path is flat after the first drop
    assert not still_falling(np.concatenate([np.linspace(1, 0.5, 5), np.linspace(0.5, 3, 15)]))
    assert not still_falling(np.array([0.3]))


def test_unstable_predictions_separates_a_noisy_model(micro):
    model, x, y = micro

    class Noisy(nn.Module):
        """Logits that jump with the input's fine structure: a shattered loss surface."""

        def forward(self, inp):
            return model(inp) + 5 * torch.sin(inp.flatten(1)[:, :10] * 2000)

    assert unstable_predictions(model, x, y, gamma=20).status == "pass"
    noisy = unstable_predictions(Noisy().eval(), x, y, gamma=20)
    assert noisy.status == "warn" and noisy.details["value"] > 0.1


def test_a_run_reports_the_stalled_attack_naming_the_model(micro, tmp_path):
    import pandas as pd

    model, _, _ = micro
    result = _stall(model, tmp_path, steps=5, description="a stalled attack")
    table = pd.read_csv(tmp_path / "out" / "tables" / "indicators.csv")
    row = table.iloc[0]
    assert result.tables["indicators"]["verdict"].tolist() == [row["verdict"]]  # benchmark() returns it too
    assert row["zero_gradients"] == "fail" and row["verdict"] == "attack stalled (zero gradients)"
    checks = pd.read_csv(tmp_path / "out" / "tables" / "checks.csv")
    zero = checks[checks["check"] == "zero_gradients"].iloc[0]
    assert zero["status"] == "fail" and "stalled" in zero["message"] and row["model"] in zero["message"]
    assert isinstance(zero["eval_key"], str) and zero["eval_key"]  # a check of the attack evaluation


def test_transfer_failure_names_samples_that_fooled_only_the_surrogate(micro):
    """Crafted on the standard SymViT, evaluated on the adversarially trained one: most unbroken samples fooled
    the surrogate, so the accuracy measures transfer, and the indicator says so."""
    _, x, y = micro
    target = robustbench_rpc.load_model("symvit_micro_patch4_32_pgdat", "packaged").eval()
    attack = get_attack("transfer", eps=8 / 255, surrogate="symvit_micro_patch4_32:packaged",
                        base_args={"steps": 5})
    _, results = attack_indicators(target, attack, x, y, model_name="pgdat")
    r = by_name(results)["transfer_failure"]
    assert r.status == "warn" and r.details["count"] >= 1 and "fooled the surrogate but not the model" in r.message
    # an attack that is not a transfer attack has no transfer verdict
    _, results = attack_indicators(target, get_attack("pgd", eps=2 / 255, steps=5), x, y)
    assert "transfer_failure" not in by_name(results)


def test_shipped_models_verdicts_through_the_cli(tmp_path):
    """The README's verdicts on the shipped adversarially trained micro models: PGD with 10 steps stops while the
    margin is still falling (incomplete optimization, a WARN: its accuracy is an upper bound); with 50 smaller
    steps the same attack levels off, and the unbroken samples are the model's robustness."""
    import pandas as pd

    pgd = dict(kind="attack", attack="pgd", eps="8/255")
    suite = write_suite(tmp_path / "v.toml", dict(pgd, steps=10, alpha_rel=0.25), dict(pgd, steps=50, alpha_rel=0.1),
                        name="v", description="indicator verdicts on the shipped models",
                        models=["rpc_symvit_micro_patch4_32_pgdat:packaged", "symvit_micro_patch4_32_pgdat:packaged"],
                        batch_size=32, seed=0, limit=32)
    out = tmp_path / "out"
    assert run(suite, out) == 0
    table = pd.read_csv(out / "tables" / "indicators.csv")
    assert len(table) == 4
    for _, row in table.iterrows():
        assert row["zero_gradients"] == "pass" and row["silent_success"] == "pass"
        if "steps=10" in row["attack"]:
            assert row["incomplete_optimization"] == "warn"
            assert row["verdict"] == "attack still improving when it stopped (incomplete optimization)"
        else:
            assert row["incomplete_optimization"] == "pass" and row["verdict"] == "model robust on the unbroken samples"
    checks = pd.read_csv(out / "tables" / "checks.csv")
    unstable = checks[checks["check"] == "unstable_predictions"]
    assert len(unstable) == 2 and set(unstable["status"]) == {"pass"}


def test_a_minimum_norm_attack_given_an_eps_is_no_silent_success_beyond_it(micro):
    """FMN given an eps walks past it to the boundary and back: adversarial points beyond the budget are not
    examples it could have returned, so they are not silent successes; the same path read without the budget
    would have been."""
    from robustbench_rpc.attacks.indicators import PathRecorder, Threat, indicator_values

    model, x, y = micro
    attack = get_attack("fmn", norm="L2", eps=0.3, steps=30)
    recorder = PathRecorder(model, x, y, threat=Threat.of(attack, model))
    adv = attack(recorder, x, y)
    with torch.no_grad():
        clean_ok, still = model(x).argmax(1) == y, model(adv).argmax(1) == y
    unbroken = [i for i in range(len(x)) if clean_ok[i] and still[i]]
    beyond = [i for i in unbroken if any(m < 0 for m in recorder.margins[i])]
    assert beyond, "the test needs an unbroken sample whose path crossed the boundary beyond eps"
    assert all(not ok for i in beyond for m, ok in zip(recorder.margins[i], recorder.inside[i]) if m < 0)
    values = indicator_values(recorder, clean_ok, still)
    assert not any(values["silent_success"][i] for i in beyond)
    recorder.inside = [[True] * len(m) for m in recorder.margins]  # the budget ignored: a false silent success
    assert any(indicator_values(recorder, clean_ok, still)["silent_success"][i] for i in beyond)


def test_a_run_stores_compact_paths_and_the_report_draws_them_under_the_indicators(micro, tmp_path):
    """Each unit keeps the unbroken samples' margin paths (at most 32 points, 4 digits); the report draws their
    median per model under the indicators table. A stalled attack's path is flat."""
    from robustbench_rpc.reports.data import RunData
    from robustbench_rpc.attacks.indicators import TRACE_POINTS

    model, _, _ = micro
    _stall(model, tmp_path, steps=40, description="paths")
    data = RunData.load(tmp_path / "out")
    try:
        traces = [v["traces"] for k, v in data.meta.items() if k.startswith("queries/")]
    finally:
        data.close()
    paths = [p for unit in traces for p in unit if p]
    assert paths and all(len(p) == TRACE_POINTS for p in paths)  # 40 calls kept as 32 points
    assert all(max(p) == min(p) for p in paths)  # zero gradients: the attack never moved
    assert list((tmp_path / "out" / "plots").glob("attack_paths_*.png"))
    html = (tmp_path / "out" / "index.html").read_text()
    assert html.index("Attack paths:") > html.index("Indicators of attack failure")
