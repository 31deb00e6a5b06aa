"""Patch threat models: patch_fool and adversarial_patch change only their patches (and the budget check refuses
one that does not), the attention probe reads the model's attention without changing it, random-patch
contamination replaces exactly k patches, and a suite runs them through the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import robustbench_rpc
from robustbench_rpc.attacks import BudgetError, attack_outcomes, get_attack
from robustbench_rpc.attacks.adversarial_patch import AdversarialPatch
from robustbench_rpc.attacks.patch_fool import PatchFool, pcgrad
from robustbench_rpc.attacks.patches import AttentionProbe, changed_cells, vit_geometry
from robustbench_rpc.corruptions import corrupt
from robustbench_rpc.store.results import ResultsStore
from conftest import digits_batch
from tiny_runs import run, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def micro():
    x, y = digits_batch(8)
    models = {n: robustbench_rpc.load_model(n, "packaged").eval()
              for n in ("symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32")}
    return models, x, y


@pytest.mark.parametrize("name", ["symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32"])
@pytest.mark.parametrize("loss,k", [("attention", 1), ("ce", 2)])
def test_patch_fool_changes_at_most_k_patches_and_fools(micro, name, loss, k):
    models, x, y = micro
    model = models[name]
    attack = get_attack("patch_fool", n_patches=k, loss=loss, steps=15, seed=0)
    out = attack_outcomes(model, attack, x, y)  # the patch budget check passes
    adv = attack(model, x, y)
    assert int(changed_cells(x, adv, 4).max()) <= k
    assert out.robust_accuracy < out.clean_accuracy


def test_patch_fool_selects_the_most_attended_patch(micro):
    models, x, y = micro
    model = models["symvit_micro_patch4_32"]
    probe = AttentionProbe(model)
    with torch.no_grad(), probe.recording():
        model(x)
    _, prefix = vit_geometry(model)
    received = probe.maps[len(probe.modules) // 3].mean(dim=1).mean(dim=-2)[:, prefix:]
    adv = get_attack("patch_fool", n_patches=1, steps=3, seed=0)(model, x, y)
    diff = (adv != x).any(dim=1).reshape(8, 8, 4, 8, 4).any(dim=(2, 4)).flatten(1)
    assert torch.equal(diff.float().argmax(dim=1), received.argmax(dim=1))


def test_attention_probe_leaves_the_forward_unchanged_and_keeps_the_graph(micro):
    models, x, _ = micro
    for model in models.values():
        with torch.no_grad():
            before = model(x)
        probe = AttentionProbe(model)
        xr = x.clone().requires_grad_(True)
        with probe.recording():
            during = model(xr)
        assert torch.equal(before, during.detach())
        assert len(probe.modules) == 4 and all(m is not None for m in probe.maps)
        rows = probe.maps[0].sum(dim=-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
        (g,) = torch.autograd.grad(probe.maps[1][:, :, :, 3].sum(), xr)
        assert g.abs().sum() > 0
        with torch.no_grad():
            assert torch.equal(model(x), before)  # the wrappers are gone afterwards


def test_pcgrad_removes_only_the_conflicting_component():
    ce = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    attn = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])  # first conflicts (negative dot), second agrees
    out = pcgrad(attn, ce)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0])) and torch.equal(out[1], attn[1])


class LeakyPatchFool(PatchFool):
    """A patch attack that also touches one pixel outside its patch: the budget check must refuse it."""

    def perturb(self, model, x, y):
        adv = super().perturb(model, x, y).clone()
        adv[:, :, 0, 0] = 1 - adv[:, :, 0, 0]
        adv[:, :, 31, 31] = 1 - adv[:, :, 31, 31]
        return adv


class LeakyAdversarialPatch(AdversarialPatch):
    def perturb(self, model, x, y):
        adv = super().perturb(model, x, y).clone()
        adv[:, :, 31, 31] = 1 - adv[:, :, 31, 31]
        return adv


def test_budget_check_refuses_a_patch_attack_touching_pixels_outside_its_patch(micro):
    models, x, y = micro
    model = models["symvit_micro_patch4_32"]
    with pytest.raises(BudgetError, match="changed 3 patches of 4 pixels where 1 are allowed"):
        attack_outcomes(model, LeakyPatchFool(n_patches=1, loss="ce", steps=2, seed=0), x, y)
    with pytest.raises(BudgetError, match=r"outside its patches \[\(12, 12, 8, 8\)\]"):
        attack_outcomes(model, LeakyAdversarialPatch(size=8, positions=[[12, 12]], steps=2, seed=0), x, y)


def test_patch_attacks_at_eps_zero_change_nothing(micro):
    models, x, y = micro
    model = models["symvit_micro_patch4_32"]
    assert torch.equal(get_attack("adversarial_patch", eps=0.0, steps=2, seed=0)(model, x, y), x)
    assert torch.equal(get_attack("patch_fool", eps=0.0, steps=2, seed=0)(model, x, y), x)


def test_adversarial_patch_universal_pastes_one_patch_at_each_position(micro):
    models, x, y = micro
    model = models["symvit_micro_patch4_32"]
    attack = get_attack("adversarial_patch", size=8, positions=[[0, 0], [24, 24]], steps=10, seed=0)
    out = attack_outcomes(model, attack, x, y)
    adv = attack(model, x, y)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[:8, :8] = inside[24:, 24:] = True
    assert torch.equal(adv[..., ~inside], x[..., ~inside])
    assert torch.equal(adv[:, :, :8, :8], adv[:1, :, :8, :8].expand(8, -1, -1, -1))  # universal
    assert torch.equal(adv[:, :, :8, :8], adv[:, :, 24:, 24:])
    assert out.robust_accuracy <= out.clean_accuracy


@pytest.mark.parametrize("params,option", [
    ({"size": 40}, "does not fit"), ({"positions": [[-1, 0]]}, "positions"), ({"eps": -0.1}, "eps"),
    ({"positions": "centre"}, "positions"),
])
def test_adversarial_patch_bad_options_name_the_option(micro, params, option):
    models, x, y = micro
    with pytest.raises(ValueError, match=option):
        get_attack("adversarial_patch", steps=1, **params)(models["symvit_micro_patch4_32"], x, y)


@pytest.mark.parametrize("params,option", [({"n_patches": 0}, "n_patches"), ({"select": "saliency"}, "select"),
                                           ({"loss": "dlr"}, "loss")])
def test_patch_fool_bad_options_name_the_option(params, option):
    with pytest.raises(ValueError, match=option):
        get_attack("patch_fool", **params)


@pytest.mark.parametrize("name", ["patch_noise", "patch_shuffle"])
def test_random_patch_contamination_replaces_exactly_k_patches(name):
    x = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for k in range(1, 6):
        out = corrupt(x, name, k, seed=3)
        cells = (out != x).any(axis=2).reshape(8, 4, 8, 4).any(axis=(1, 3))
        assert int(cells.sum()) == k
        assert np.array_equal(out, corrupt(x, name, k, seed=3))


def test_patch_suite_runs_through_the_cli(tmp_path, capsys):
    suite = write_suite(tmp_path / "p.toml",
                        dict(kind="corruption", source="on-the-fly", corruptions=["patch_noise"], severities=[1, 5]),
                        dict(kind="attack", attack="patch_fool", n_patches=2, steps=3),
                        name="p", description="patches, tiny", batch_size=8, seed=0, limit=8)
    out = tmp_path / "out"
    assert run(suite, out, "--no-report") == 0
    assert "patch_fool" in capsys.readouterr().out
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        assert {"patch_fool"} <= set(evals["name"].dropna())
        assert len(store.samples()) == 8 * 3


def test_attention_probe_equals_timm_explicit_attention(micro):
    """On timm's softmax ViT the probe's maps are the probabilities timm's explicit path computes (read at its
    attn_drop, the softmax output)."""
    _, x, _ = micro
    model = robustbench_rpc.load_model("vit_micro_patch4_32", "packaged").eval()
    probe = AttentionProbe(model)
    seen = []
    hooks = []
    for m in probe.modules:
        m.fused_attn = False
        hooks.append(m.attn_drop.register_forward_hook(lambda mod, args, out: seen.append(out.detach())))
    try:
        with torch.no_grad(), probe.recording():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(probe.maps) == 4
    for mine, timm_attn in zip(probe.maps, seen):
        assert torch.allclose(mine, timm_attn, atol=1e-6)


class Scripted(torch.nn.Module):
    """Class 0 by a wide margin (labels are all 0), with a small linear term so the attacks have a gradient;
    at the call numbered in ``fool`` (0-based) the listed samples are pushed to class 1. Keeps every input."""

    def __init__(self, fool: dict[int, list[int]]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3 * 32 * 32, 10, generator=torch.Generator().manual_seed(0)) * 1e-2)
        self.fool, self.inputs = fool, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        logits = x.flatten(1) @ self.w + torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10) * 50
        push = torch.zeros(len(x), 10)
        push[self.fool.get(len(self.inputs) - 1, []), 1] = 1000.0
        return logits + push


def _scripted_run(attack, fool):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(4, dtype=torch.long)
    model = Scripted(fool)
    return attack(model, x, y), model.inputs


def test_patch_fool_returns_each_samples_first_fooling_iterate_not_only_the_last():
    """The reference returns the last iterate, losing samples it had broken on the way (silent successes)."""
    kw = dict(n_patches=1, select="random", loss="ce", patch_size=4, steps=5, seed=0)
    adv, inputs = _scripted_run(get_attack("patch_fool", **kw), {2: [0]})
    assert len(inputs) == 5 + 1  # one forward per step and one more that looks at the last iterate
    assert torch.equal(adv[0], inputs[2][0]) and not torch.equal(adv[0], inputs[-1][0])
    assert torch.equal(adv[1:], inputs[-1][1:])  # never fooled: the last iterate
    adv, inputs = _scripted_run(get_attack("patch_fool", return_best=False, **kw), {2: [0]})
    assert len(inputs) == 5 and not torch.equal(adv[0], inputs[2][0])  # the reference's last iterate


def test_universal_patch_returns_the_iterate_that_fooled_most_and_per_image_patches_their_first():
    kw = dict(size=8, positions=[[0, 0]], steps=5, seed=0)
    adv, inputs = _scripted_run(get_attack("adversarial_patch", **kw), {1: [0, 1], 3: [2]})
    assert len(inputs) == 6 and torch.equal(adv, inputs[1])  # two fooled at call 1, one at call 3
    adv, inputs = _scripted_run(get_attack("adversarial_patch", universal=False, **kw), {1: [0, 1], 3: [2]})
    assert torch.equal(adv[:2], inputs[1][:2]) and torch.equal(adv[2], inputs[3][2])
    assert torch.equal(adv[3], inputs[-1][3])
    adv, inputs = _scripted_run(get_attack("adversarial_patch", return_best=False, **kw), {1: [0, 1]})
    assert len(inputs) == 5 and not torch.equal(adv, inputs[1])


@pytest.mark.parametrize("name,universal", [("patch_fool", False), ("adversarial_patch", True),
                                            ("adversarial_patch", False)])
def test_a_universal_patch_is_not_judged_for_silent_success(micro, name, universal):
    """One patch for every image: an image fooled by an earlier patch is not a point it could have returned."""
    from robustbench_rpc.attacks.attack_record import CountQueries

    models, x, y = micro
    model = models["symvit_micro_patch4_32"]
    params = dict(steps=3, seed=0) | ({"universal": universal} if name == "adversarial_patch" else {})
    counted = CountQueries(get_attack(name, **params))
    with torch.no_grad():
        adv = counted(model, x, y)
        clean_ok, adv_ok = model(x).argmax(1) == y, model(adv).argmax(1) == y
    values = counted.stored(clean_ok, adv_ok)["indicators"]
    assert ("silent_success" in values) == (not universal)
    assert "zero_gradients" in values and "incomplete_optimization" in values


def test_the_report_gives_accuracy_against_the_number_of_patches_with_the_paired_difference(tmp_path):
    """Through the CLI: the patches table (k = 0 is clean), each model's accuracy as the store has it, the paired
    difference from the reference model, the plot, and headline columns that name the patches, not an eps."""
    import pandas as pd

    from robustbench_rpc.metrics import paired_delta_ci

    models = ["symvit_micro_patch4_32:packaged", "rpc_symvit_micro_patch4_32:packaged"]
    suite = write_suite(tmp_path / "p.toml", dict(kind="clean"),
                        dict(kind="corruption", source="on-the-fly", corruptions=["patch_noise"], severities=[1, 3]),
                        dict(kind="attack", attack="patch_fool", n_patches=1, steps=3),
                        dict(kind="attack", attack="patch_fool", n_patches=2, steps=3),
                        name="p", description="patches, tiny", models=models, batch_size=8, seed=0, limit=8)
    out = tmp_path / "out"
    assert run(suite, out) == 0
    table = pd.read_csv(out / "tables" / "patches.csv")
    assert (table["threat"] + " " + table["k"].astype(str)).drop_duplicates().tolist() == [
        "clean 0", "Patch-Fool (attention loss, 3 steps) 1", "Patch-Fool (attention loss, 3 steps) 2",
        "random patches replaced by noise 1", "random patches replaced by noise 3"]
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        keys = dict(zip(store.models()["arch"], store.models()["model_key"]))
        for _, row in table.iterrows():
            correct = {arch: store.samples(model_key=key, eval_key=row["eval_key"]).sort_values("sample_id")
                       ["correct1"].to_numpy().astype(bool) for arch, key in keys.items()}
            assert row["accuracy"] == pytest.approx(correct[row["model"]].mean())
            if row["model"] == "rpc_symvit_micro_patch4_32":
                delta = paired_delta_ci(correct[row["model"]], correct["symvit_micro_patch4_32"])
                assert (row["delta"], row["delta_lo"], row["delta_hi"]) == pytest.approx(delta)
    assert (out / "plots" / "patches_acc_vs_k.png").is_file()
    page = (out / "report.md").read_text()
    assert "Accuracy against the number of corrupted patches" in page
    assert "Patch-Fool (attention loss, 3 steps), k=2" in page.split("## Headline results")[1].split("**Protocol")[0]
