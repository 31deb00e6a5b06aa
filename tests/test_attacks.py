"""Attack registry, every registered attack's contract, agreement with torchattacks, outcomes, presets."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import Normalize
import torchattacks

from robustbench_rpc.attacks import (
    ATTACKS, Attack, AutoAttack, BudgetError, FewClassesWarning, ModelOutputError, attack_outcomes, get_attack,
    get_preset, is_gradient_based, list_attacks, list_presets, lp_norms, register_attack, worst_case,
)
from robustbench_rpc.attacks.budget import project_l1_ball
from robustbench_rpc.attacks.presets import expand_sweep
from robustbench_rpc.registry import UnknownNameError
from robustbench_rpc.evalspec import EVAL_PARAMS

N_CLASSES = 10
HW = 16


pytestmark = pytest.mark.usefixtures("one_thread")




def make_data(n: int, seed: int, n_classes: int = N_CLASSES):
    """Separable synthetic images: a fixed +-1 pattern per class plus Gaussian noise, in [0, 1]."""
    protos = (torch.rand(n_classes, 3, HW, HW, generator=torch.Generator().manual_seed(123)) > 0.5).float() * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = (0.5 + 0.02 * protos[y] + 0.12 * torch.randn(n, 3, HW, HW, generator=g)).clamp(0, 1)
    return x, y


def mlp(n_classes: int = N_CLASSES) -> nn.Module:
    return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3 * HW * HW, 32), nn.ReLU(), nn.Linear(32, n_classes))


def fit(model: nn.Module, x, y, steps: int = 100) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    xtr, ytr = make_data(512, seed=1)
    model = fit(mlp(), xtr, ytr)
    x, y = make_data(32, seed=2)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x, y


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# Fast parameters for every registered attack (a user-registered attack falls back to {"eps": ...}).
FAST = {
    "fgsm": dict(eps=4 / 255),
    "pgd": dict(eps=4 / 255, steps=5),
    "spsa": dict(eps=4 / 255, steps=3, n_samples=8),
    "square": dict(eps=4 / 255, n_queries=20),
    "cw": dict(eps=0.3, steps=10),
    "cw-cleverhans": dict(eps=4 / 255, binary_search_steps=2, max_iterations=10),
    "sld": dict(eps=2.0, steps=5),
    "noise": dict(eps=4 / 255),
    "autoattack": dict(eps=4 / 255, version="custom", attacks_to_run=["apgd-ce", "apgd-t", "fab-t", "square"],
                       n_iter=3, n_queries=20),
    "apgd": dict(eps=4 / 255, n_iter=3, n_restarts=2),
    # the MLP declares no BPDA approximation: undeclared="exact" runs the base (tests/test_adaptive.py: RPC)
    "bpda": dict(eps=4 / 255, approximation="symmetric", undeclared="exact", base_args={"steps": 3}),
    "transfer": dict(eps=4 / 255, base_args={"steps": 3}),  # self:no-pap of a model without PAP: itself
    # patch attacks on the MLP (no patch embedding, no attention): the grid and the selection given
    "patch_fool": dict(patch_size=4, select="random", loss="ce", steps=3),
    "adversarial_patch": dict(size=4, steps=3),
}


def test_builtin_attacks_registered():
    assert set(FAST) <= set(list_attacks())
    assert list_attacks("pg*") == ["pgd"]
    grad = {n for n in FAST if is_gradient_based(n)}
    assert grad == {"fgsm", "pgd", "cw", "cw-cleverhans", "sld", "autoattack", "apgd", "bpda", "patch_fool",
                    "adversarial_patch"}  # transfer: the surrogate's


@pytest.mark.parametrize("name", [n for n in list_attacks() if getattr(ATTACKS.get(n), "task", "") != "segmentation"])
def test_every_attack_respects_budget_and_is_deterministic(name, trained):
    """Every classification attack (segmentation attacks: tests/test_segmentation_attacks.py)."""
    model, x, y = trained
    x, y = x[:8], y[:8]
    params = dict(FAST.get(name, {"eps": 4 / 255}))
    attack = get_attack(name, seed=3, **params)
    x_before = x.clone()
    rng_before = torch.get_rng_state()
    adv = attack(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng_before), "a seeded attack must not disturb the caller's RNG"
    assert torch.equal(x, x_before), "the attack modified its input"
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    eps, norm = attack.eps, attack.norm
    if eps is not None:
        assert float(lp_norms(adv - x, norm).max()) <= eps + 1e-5
    again = attack(model, x, y)
    assert torch.equal(adv, again), f"{name} with a seed is not deterministic"
    spec = attack.spec()
    assert spec["name"] == name and spec["seed"] == 3
    rebuilt = get_attack(name, **{k: v for k, v in spec.items() if k != "name"})
    assert rebuilt.spec() == spec and torch.equal(rebuilt(model, x, y), adv)
    # the recomputed outcomes accept the output (budget check included)
    out = attack_outcomes(model, attack, x, y)
    assert len(out) == 8


def test_model_mode_restored_per_module(trained):
    model, x, y = trained
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    try:
        get_attack("pgd", eps=2 / 255, steps=2)(model, x, y)
        assert model.training and model[1].training and not model[2].training
    finally:
        model.eval()


@pytest.mark.parametrize("name", ["pgd", "cw", "autoattack"])
def test_parameters_untouched_and_no_grad_context(name, trained):
    _, x, y = trained
    model = mlp().eval()
    params = dict(FAST[name])
    if name == "autoattack":
        params["attacks_to_run"] = ["apgd-ce", "fab-t"]
    with torch.no_grad():  # callers may hold a no_grad context; gradient attacks must still work
        adv = get_attack(name, seed=0, **params)(model, x[:6], y[:6])
    assert float((adv - x[:6]).abs().max()) > 0
    for p in model.parameters():
        assert p.requires_grad and p.grad is None


def test_seed_changes_random_attacks(trained):
    model, x, y = trained
    a = get_attack("noise", eps=8 / 255, seed=1)(model, x, y)
    b = get_attack("noise", eps=8 / 255, seed=2)(model, x, y)
    assert not torch.equal(a, b)
    assert float((a - x).abs().max()) > 4 / 255  # really noise of size ~eps


def test_attacks_run_on_tiny_vit():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                            num_classes=10, pretrained=False)
    model = nn.Sequential(Normalize(), vit).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own predictions: all clean-correct
    for name, params in [("fgsm", dict(eps=4 / 255)), ("pgd", dict(eps=4 / 255, steps=2, amp_dtype="bf16")),
                         ("autoattack", dict(FAST["autoattack"], n_iter=2, n_queries=5))]:
        out = attack_outcomes(model, get_attack(name, seed=0, **params), x, y)
        assert out.clean_accuracy == 1.0 and float(out.linf.max()) <= 4 / 255 + 1e-5


def test_trained_model_is_nontrivial(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean >= 0.8
    adv = get_attack("pgd", eps=2 / 255, steps=10, seed=0)(model, x, y)
    robust = accuracy(model, adv, y)
    assert 0.0 < robust < clean


def test_fgsm_matches_torchattacks(trained):
    model, x, y = trained
    ours = get_attack("fgsm", eps=3 / 255)(model, x, y)
    ref = torchattacks.FGSM(model, eps=3 / 255)(x, y)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    out = attack_outcomes(model, get_attack("fgsm", eps=3 / 255), x, y)
    assert out.robust_accuracy == accuracy(model, ref, y)
    assert out.robust_accuracy < out.clean_accuracy


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_linf_matches_torchattacks(trained, random_start):
    model, x, y = trained
    eps, alpha, steps = 3 / 255, 1 / 255, 7
    ours = get_attack("pgd", eps=eps, alpha=alpha, steps=steps, random_start=random_start, seed=11)(model, x, y)
    torch.manual_seed(11)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(x, y)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert accuracy(model, ours, y) == accuracy(model, ref, y)


def test_pgd_l2_matches_torchattacks(trained):
    model, x, y = trained
    ours = get_attack("pgd", norm="L2", eps=0.4, alpha=0.1, steps=6, random_start=False)(model, x, y)
    ref = torchattacks.PGDL2(model, eps=0.4, alpha=0.1, steps=6, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert accuracy(model, ours, y) == accuracy(model, ref, y)
    assert float(lp_norms(ours - x, "L2").max()) <= 0.4 + 1e-5


def test_pgd_restarts_keep_per_sample_best(trained):
    model, x, y = trained
    kw = dict(eps=3 / 255, steps=1, alpha=1 / 255, random_start=True)
    restarts = 6
    multi = attack_outcomes(model, get_attack("pgd", restarts=restarts, seed=5, **kw), x, y)
    # replay each restart alone: restart k starts from the k-th uniform draw after seeding
    fooled_each = []
    for k in range(restarts):
        torch.manual_seed(5)
        for _ in range(k):
            torch.empty_like(x).uniform_()
        single = attack_outcomes(model, get_attack("pgd", restarts=1, seed=None, **kw), x, y)
        fooled_each.append(~single.adv_correct1)
    union = torch.stack(fooled_each).any(0)
    assert union.sum() > fooled_each[0].sum(), "restarts should differ for this test to mean anything"
    assert torch.equal(~multi.adv_correct1, union)


@pytest.mark.parametrize("amp", [torch.bfloat16, "bf16"])
def test_pgd_autocast(trained, amp):
    model, x, y = trained
    attack = get_attack("pgd", eps=4 / 255, steps=5, amp_dtype=amp, seed=0)
    adv = attack(model, x, y)
    assert adv.dtype == torch.float32
    assert float(lp_norms(adv - x, "Linf").max()) <= 4 / 255 + 1e-5
    assert accuracy(model, adv, y) < accuracy(model, x, y)


def test_chunking_matches_single_batch_and_progress(trained, capsys):
    model, x, y = trained
    whole = get_attack("pgd", eps=3 / 255, steps=3, random_start=False)(model, x, y)
    chunked = get_attack("pgd", eps=3 / 255, steps=3, random_start=False, batch_size=5, progress=False)(model, x, y)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert capsys.readouterr().err == ""  # not a TTY under pytest: no bar by default either
    get_attack("fgsm", eps=3 / 255, batch_size=5, progress=True)(model, x, y)
    assert "fgsm" in capsys.readouterr().err


def test_spsa_small_query_batches(trained):
    model, x, y = trained
    kw = dict(eps=4 / 255, steps=2, n_samples=8, seed=0)
    big = get_attack("spsa", query_batch_size=1024, **kw)(model, x[:4], y[:4])
    small = get_attack("spsa", query_batch_size=8, **kw)(model, x[:4], y[:4])
    assert big.shape == small.shape and float(lp_norms(small - x[:4], "Linf").max()) <= 4 / 255 + 1e-6


@pytest.mark.parametrize("name,params,option", [
    ("fgsm", dict(eps=0.1, norm="L1"), "norm"),
    ("pgd", dict(eps=-0.1), "eps"),
    ("pgd", dict(eps=float("nan")), "eps"),
    ("pgd", dict(), "eps"),
    ("pgd", dict(eps=0.1, norm="L3"), "norm"),
    ("pgd", dict(eps=0.1, steps=-1), "steps"),
    ("pgd", dict(eps=0.1, stepz=3), "steps"),
    ("sld", dict(eps=1.0, norm="Linf"), "norm"),
    ("spsa", dict(eps=0.1, norm="L2"), "norm"),
    ("cw", dict(eps=0.1, norm="Linf"), "norm"),
    ("pgd", dict(eps=0.1, amp_dtype="int8"), "amp_dtype"),
    ("autoattack", dict(eps=0.1, version="fast"), "version"),
    ("autoattack", dict(eps=0.1, attacks_to_run=["apgd-ce"]), "attacks_to_run"),
    ("autoattack", dict(eps=0.1, version="custom", attacks_to_run=["apgd-xx"]), "apgd-xx"),
    ("autoattack", dict(eps=0.1, impl="foolbox"), "impl"),
    ("square", dict(eps=0.1, norm="L1"), "norm"),
])
def test_invalid_options_raise_value_error(name, params, option):
    with pytest.raises(ValueError, match=option):
        get_attack(name, **params)


def test_unknown_attack_shows_close_matches():
    with pytest.raises(UnknownNameError) as info:
        get_attack("pgdd", eps=0.1)
    assert "pgd" in info.value.close and "Did you mean" in str(info.value)


def test_bad_inputs_and_bad_models(trained):
    model, x, y = trained
    attack = get_attack("fgsm", eps=0.01)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2 + 0.5, y)
    with pytest.raises(ValueError, match="labels"):
        attack(model, x, y[:3])

    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, t):
            return self.inner(t), t

    class VectorModel(TupleModel):
        def forward(self, t):
            return self.inner(t)[:, 0]

    with pytest.raises(ModelOutputError, match="logits"):
        attack(TupleModel(), x, y)
    with pytest.raises(ModelOutputError, match=r"\(B, num_classes\)"):
        get_attack("pgd", eps=0.01, steps=1)(VectorModel(), x, y)
    with pytest.raises(ModelOutputError):
        get_attack("square", eps=0.01, n_queries=2)(VectorModel(), x, y)


def test_register_custom_attack(trained):
    model, x, y = trained

    class Shift(Attack):
        """Adds +eps everywhere (a user plug-in)."""
        gradient_based = False
        norms = ("Linf",)

        def __init__(self, eps=None, norm="Linf", seed=None, batch_size=None, progress=None):
            super().__init__(eps=eps, norm=norm, seed=seed, batch_size=batch_size, progress=progress)

        def perturb(self, model, x, y):
            return x + 10 * self.eps  # oversteps on purpose: the base class projects

    try:
        register_attack("test-shift")(Shift)
        assert "test-shift" in list_attacks()
        assert not is_gradient_based("test-shift")
        attack = get_attack("test-shift", eps=0.02)
        assert attack.name == "test-shift"
        adv = attack(model, x, y)
        assert float((adv - x).max()) <= 0.02 + 1e-6 and float((adv - x).max()) > 0.019
        with pytest.raises(ValueError, match="already registered"):
            register_attack("test-shift")(lambda **kw: None)
    finally:
        ATTACKS._items.pop("test-shift", None)
    assert "test-shift" not in list_attacks()


def test_l1_projection_exact():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 3, 4, 4, generator=g)
    p = project_l1_ball(d, 2.0)
    assert torch.allclose(lp_norms(p, "L1"), torch.full((5,), 2.0), atol=1e-5)
    small = d * 1e-3
    assert torch.equal(project_l1_ball(small, 2.0), small)
    # optimality: the projection is closer to d than random points on the ball
    for _ in range(5):
        q = project_l1_ball(torch.randn(5, 3, 4, 4, generator=g), 2.0)
        assert ((p - d).flatten(1).norm(dim=1) <= (q - d).flatten(1).norm(dim=1) + 1e-6).all()


# -- individual attacks -------------------------------------------------------------------------------
def test_cw_min_norm_and_eps_projection(trained):
    model, x, y = trained
    x, y = x[:12], y[:12]
    free = attack_outcomes(model, get_attack("cw", steps=40, lr=0.05, seed=0), x, y)
    assert free.robust_accuracy <= 0.2  # unbounded minimum-norm attack succeeds
    tight = attack_outcomes(model, get_attack("cw", eps=0.05, steps=40, lr=0.05, seed=0), x, y)
    assert float(tight.l2.max()) <= 0.05 + 1e-5
    assert tight.robust_accuracy > free.robust_accuracy


def test_cw_binary_search_shrinks_norms(trained):
    model, x, y = trained
    x, y = x[:12], y[:12]
    kw = dict(c=1e-2, steps=20, lr=0.05, seed=0)
    one = attack_outcomes(model, get_attack("cw", binary_search_steps=1, **kw), x, y)
    three = attack_outcomes(model, get_attack("cw", binary_search_steps=3, **kw), x, y)
    assert one.robust_accuracy == three.robust_accuracy == 0.0
    assert bool((three.l2 <= one.l2 + 1e-6).all()) and float(three.l2.sum()) < float(one.l2.sum()) - 1e-3


def test_sld_is_sparse_and_l1_bounded(trained):
    model, x, y = trained
    attack = get_attack("sld", eps=8.0, steps=10, sparsity=99.0)
    out = attack_outcomes(model, attack, x, y)
    assert float(out.l1.max()) <= 8.0 + 1e-4
    assert out.robust_accuracy < out.clean_accuracy
    adv = attack(model, x, y)
    changed = ((adv - x).abs() > 1e-7).flatten(1).float().mean(1)
    assert float(changed.max()) <= 0.15  # 10 steps x top-1% coordinates


def test_spsa_is_gradient_free_and_effective(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]

    class NoGrad(nn.Module):
        """Forward works, backward raises: a black-box attack must never need it."""

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, t):
            if torch.is_grad_enabled() and t.requires_grad:
                raise AssertionError("gradient requested")
            return self.inner(t)

    out = attack_outcomes(NoGrad(), get_attack("spsa", eps=8 / 255, steps=8, n_samples=16, lr=0.02, seed=0), x, y)
    assert out.robust_accuracy < out.clean_accuracy
    sq = attack_outcomes(NoGrad(), get_attack("square", eps=8 / 255, n_queries=50, seed=0), x, y)
    assert sq.robust_accuracy < sq.clean_accuracy


@pytest.mark.parametrize("impl", ["pyautoattack", "torchattacks"])
def test_square_impls(trained, impl):
    model, x, y = trained
    attack = get_attack("square", eps=6 / 255, n_queries=30, impl=impl, seed=1)
    adv = attack(model, x, y)
    assert float(lp_norms(adv - x, "Linf").max()) <= 6 / 255 + 1e-5
    assert torch.equal(adv, attack(model, x, y))


# -- AutoAttack ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["pyautoattack", "torchattacks"])
def test_autoattack_reduced_both_impls(trained, impl):
    model, x, y = trained
    attack = get_attack("autoattack", eps=8 / 255, version="custom", impl=impl, n_iter=5, n_queries=20,
                        attacks_to_run=["apgd-ce", "apgd-t", "fab-t", "square"], seed=0)
    out = attack_outcomes(model, attack, x, y)
    assert out.robust_accuracy <= 0.1 < out.clean_accuracy
    assert float(out.linf.max()) <= 8 / 255 + 1e-5
    assert attack.last_plan["n_target_classes"] == 9


def test_autoattack_l2(trained):
    model, x, y = trained
    attack = get_attack("autoattack", eps=0.5, norm="L2", version="custom", attacks_to_run=["apgd-ce", "apgd-dlr"],
                        n_iter=5, seed=0)
    out = attack_outcomes(model, attack, x, y)
    assert float(out.l2.max()) <= 0.5 + 1e-5
    assert out.robust_accuracy < out.clean_accuracy


def test_autoattack_target_classes_adapt():
    attack = get_attack("autoattack", eps=0.01)
    assert attack.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert attack.plan(10) == (["apgd-ce", "apgd-t", "fab-t", "square"], 9)
    assert attack.plan(1000)[1] == 9
    assert attack.plan(5)[1] == 4
    assert attack.plan(4)[1] == 3
    assert get_attack("autoattack", eps=0.01, version="plus").attacks == [
        "apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


def test_autoattack_few_classes_error_or_fallback():
    torch.manual_seed(0)
    xtr, ytr = make_data(256, seed=4, n_classes=3)
    model = fit(mlp(3), xtr, ytr, steps=40)
    x, y = make_data(10, seed=5, n_classes=3)
    strict = get_attack("autoattack", eps=8 / 255, on_few_classes="error", n_iter=2, n_queries=10)
    with pytest.raises(ValueError, match="at least 4 classes"):
        strict(model, x, y)
    lenient = get_attack("autoattack", eps=8 / 255, n_iter=2, n_queries=10, seed=0)
    with pytest.warns(FewClassesWarning, match="apgd-t"):
        adv = lenient(model, x, y)
    assert lenient.last_plan == {"n_classes": 3, "attacks": ["apgd-ce", "fab-t", "square"], "n_target_classes": 2}
    assert float(lp_norms(adv - x, "Linf").max()) <= 8 / 255 + 1e-5
    assert isinstance(lenient, AutoAttack)


# -- outcomes -----------------------------------------------------------------------------------------
def test_attack_outcomes_recomputed(trained):
    model, x, y = trained
    attack = get_attack("pgd", eps=2 / 255, steps=5, seed=9)
    out = attack_outcomes(model, attack, x, y, topk=5)
    adv = attack(model, x, y)  # seeded: the same images attack_outcomes saw
    with torch.no_grad():
        clean_logits, adv_logits = model(x), model(adv)
    assert torch.equal(out.clean_pred, clean_logits.argmax(1))
    assert torch.equal(out.adv_pred, adv_logits.argmax(1))
    assert torch.equal(out.adv_correct1, (clean_logits.argmax(1) == y) & (adv_logits.argmax(1) == y))
    top5 = (adv_logits.topk(5, 1).indices == y[:, None]).any(1) & (clean_logits.topk(5, 1).indices == y[:, None]).any(1)
    assert torch.equal(out.adv_correct5, top5)
    assert torch.allclose(out.adv_confidence, adv_logits.softmax(1).amax(1))
    assert torch.allclose(out.linf, (adv - x).abs().flatten(1).amax(1), atol=1e-7)
    assert torch.allclose(out.l2, (adv - x).flatten(1).norm(dim=1), atol=1e-6)
    assert not (out.adv_correct1 & ~out.clean_correct1).any()
    assert not (out.adv_correct1 & ~out.adv_correct5).any()
    assert out.clean_pred.device.type == "cpu"


def test_attack_outcomes_rejects_budget_violations(trained):
    model, x, y = trained

    class Cheat:
        name, eps, norm = "cheat", 1 / 255, "Linf"

        def __init__(self, fn):
            self.fn = fn

        def __call__(self, model, images, labels):
            return self.fn(images)

    with pytest.raises(BudgetError, match="exceeds eps"):
        attack_outcomes(model, Cheat(lambda t: (t + 3 / 255).clamp(0, 1)), x, y)
    with pytest.raises(BudgetError, match=r"\[0, 1\]"):
        attack_outcomes(model, Cheat(lambda t: t - 1e-3), x, y)
    # an attack that "claims" success but returns the clean images gets clean accuracy
    out = attack_outcomes(model, Cheat(lambda t: t.clone()), x, y)
    assert out.robust_accuracy == out.clean_accuracy
    # explicit budget overrides the attack's attributes
    with pytest.raises(BudgetError, match="L2"):
        attack_outcomes(model, get_attack("fgsm", eps=4 / 255), x, y, eps=0.1, norm="L2")


def test_adv_correct_requires_clean_correct(trained):
    """A sample misclassified clean is never counted robust, even if the "adversarial" image is right."""
    model, x, y = trained
    x2, _ = make_data(len(x), seed=99)
    with torch.no_grad():
        y2 = model(x2).argmax(1)  # labels the model gets right on x2, mostly wrong on x

    class Swap:
        name, eps, norm = "swap", None, None

        def __call__(self, model, images, labels):
            return x2

    out = attack_outcomes(model, Swap(), x, y2)
    assert (~out.clean_correct1).sum() > 10
    assert (out.adv_pred == y2).all()
    assert torch.equal(out.adv_correct1, out.clean_correct1)


def test_outcomes_topk_with_few_classes():
    model = mlp(3).eval()
    x, y = make_data(6, seed=7, n_classes=3)
    out = attack_outcomes(model, get_attack("fgsm", eps=0.01), x, y, topk=5)
    assert out.clean_correct5.all() and out.adv_correct5.all()


def test_worst_case():
    a = torch.tensor([True, True, False, True])
    b = torch.tensor([True, False, False, True])
    c = torch.tensor([1, 1, 1, 0])
    assert worst_case([a, b, c]).tolist() == [True, False, False, False]
    with pytest.raises(ValueError):
        worst_case([])
    with pytest.raises(ValueError, match="shapes"):
        worst_case([a, a[:2]])


# -- presets ------------------------------------------------------------------------------------------
def test_presets():
    assert list_presets() == ["adaptive", "paper", "paper-extras", "pixel", "robustbench-cifar10",
                              "robustbench-imagenet"]
    pixel = get_preset("pixel")
    pgd = [s for s in pixel if s["name"] == "pgd"]
    fgsm = [s for s in pixel if s["name"] == "fgsm"]
    assert [round(s["eps"] * 255, 6) for s in pgd] == [1, 2, 3, 4, 5, 6] == [round(s["eps"] * 255, 6) for s in fgsm]
    assert all(s["steps"] == 20 and abs(s["alpha"] - 0.15 * s["eps"]) < 1e-12 for s in pgd)
    assert {s["name"] for s in pixel} == {"fgsm", "pgd", "spsa", "sld", "cw", "noise", "autoattack"}
    every = (get_preset("paper") + get_preset("paper-extras") + pixel + get_preset("robustbench-imagenet")
             + get_preset("robustbench-cifar10"))
    for spec in every:
        params = {k: v for k, v in spec.items() if k not in ("name", *EVAL_PARAMS)}
        attack = get_attack(spec["name"], **params)
        assert attack.spec()["name"] == spec["name"]
    (imagenet,) = get_preset("robustbench-imagenet")
    (cifar,) = get_preset("robustbench-cifar10")
    assert imagenet["eps"] == 4 / 255 and cifar["eps"] == 8 / 255
    assert imagenet["version"] == cifar["version"] == "standard" and imagenet["norm"] == "Linf"
    get_preset("pixel")[0]["eps"] = 123.0  # fresh dicts each time
    assert get_preset("pixel")[0]["eps"] != 123.0
    with pytest.raises(UnknownNameError, match="paper"):
        get_preset("papr")


def test_expand_sweep():
    specs = expand_sweep({"name": "pgd", "eps": [0.1, 0.2], "alpha_factor": 0.5, "steps": 3})
    assert specs == [{"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 3},
                     {"name": "pgd", "eps": 0.2, "alpha": 0.1, "steps": 3}]
    assert expand_sweep({"name": "fgsm", "eps": 0.1}) == [{"name": "fgsm", "eps": 0.1}]
