"""Adaptive evaluation: static/dynamic, BPDA, transfer, APGD, the adaptive preset and checks,
on a model built to fool standard attacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustbench_rpc.adaptive_protocol import (
    UnknownApproximationError, approximation_active, declared_approximations, straight_through, substitute_backward,
)
from robustbench_rpc.attacks import (
    ATTACKS, attack_outcomes, check_adaptive_gap, check_differentiability, check_eps_zero_identity, check_large_eps,
    check_softmax_output, get_attack, get_preset, model_dynamics, register_attack,
)
from robustbench_rpc.attacks.adaptive import BPDAForwardError, without_pap
from robustbench_rpc.attacks.adaptive.dynamics import detect_autograd_calls
from robustbench_rpc.attention import RPCAttention, SymmetricAttention
from robustbench_rpc.evalspec import EVAL_PARAMS, is_adaptive, top5_reason
from robustbench_rpc.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
HW = 32
EPS = 8 / 255


def make_data(n: int, seed: int, amp: float = 0.04, n_classes: int = 10):
    """A +-1 pattern per class (amplitude ``amp``) plus Gaussian noise, in [0, 1], 32 x 32."""
    protos = (torch.rand(n_classes, 3, HW, HW, generator=torch.Generator().manual_seed(123)) > 0.5).float() * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return (0.5 + amp * protos[y] + 0.15 * torch.randn(n, 3, HW, HW, generator=g)).clamp(0, 1), y


class QuantizedDefense(nn.Module):
    """Gradient masking by input quantization: torch.round has zero gradient, so every gradient attack sees
    nothing. Declares the BPDA approximation its defense needs (the rounding's backward is the identity)."""

    bpda_approximations = {"identity": "the rounding's backward is the identity (straight-through)"}
    bpda_backward = None

    def __init__(self, net: nn.Module, levels: int = 8):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x):
        q = torch.round(x * (self.levels - 1)) / (self.levels - 1)
        if self.bpda_backward == "identity":
            q = straight_through(q, x)
        return self.net(q)


@pytest.fixture(scope="module")
def masked():
    """(defended model, its undefended network, test images, labels): trained in about a second."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * HW * HW, 64), nn.ReLU(), nn.Linear(64, 10))
    model = QuantizedDefense(net)
    xtr, ytr = make_data(1024, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(xtr), (64,), generator=g)
        loss = F.cross_entropy(net(torch.round(xtr[idx] * 7) / 7), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = make_data(48, seed=2)
    return model.eval(), net.eval(), x, y


@pytest.fixture(scope="module")
def micro():
    return {name: load_model(f"{name}:packaged") for name in
            ("rpc_symvit_micro_patch4_32", "symvit_micro_patch4_32", "rpc_keyscale_symvit_micro_patch4_32")}


@pytest.fixture(scope="module")
def digits():
    from robustbench_rpc.data.embedded import digits32

    ds = digits32("test")
    return ds.images[:8].float(), ds.labels[:8].long()


# -- static / dynamic ------------------------------------------------------------------------------------
class TimeOptimizedDefense(nn.Module):
    """A plug-in defense that optimizes its input in forward with torch.autograd.grad (a dynamic model)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * HW * HW, 10))

    def forward(self, x):
        z = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            for _ in range(2):
                energy = self.net(z).logsumexp(1).sum()
                (g,) = torch.autograd.grad(energy, z)
                z = (z + 0.01 * g).detach().requires_grad_(True)
        return self.net(z.detach())


def test_model_dynamics_declared_and_detected(micro):
    rpc = model_dynamics(micro["rpc_symvit_micro_patch4_32"])
    assert rpc["kind"] == "dynamic" and rpc["source"] == "declared" and "ADMM" in rpc["why"]
    assert rpc["modules"] == ["model.blocks.0.attn"]
    sym = model_dynamics(micro["symvit_micro_patch4_32"])
    assert (sym["kind"], sym["source"]) == ("static", "declared") and "SymmetricAttention x4" in sym["why"]
    plug = TimeOptimizedDefense().eval()
    x = torch.rand(2, 3, HW, HW)
    found = model_dynamics(plug, x)
    assert (found["kind"], found["source"]) == ("dynamic", "detected")
    assert "torch.autograd.grad inside <model>" in found["why"]
    plain = model_dynamics(nn.Sequential(nn.Flatten(), nn.Linear(3 * HW * HW, 10)), x)
    assert (plain["kind"], plain["source"]) == ("static", "detected")
    with pytest.raises(ValueError, match="pass images"):
        model_dynamics(nn.Linear(3, 2))


def test_rpc_dynamic_only_with_iterations_and_detection_names_the_module():
    one, four = RPCAttention(48, num_heads=3, n_iter=1), RPCAttention(48, num_heads=3, n_iter=4)
    assert not one.dynamic and four.dynamic and "fixed function" in one.dynamic_why
    assert not SymmetricAttention(48, num_heads=3).dynamic

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TimeOptimizedDefense()

        def forward(self, x):
            return self.inner(x)

    model, names = Wrapper(), []
    p = next(model.parameters())
    p.grad = torch.ones_like(p)
    calls = detect_autograd_calls(model, torch.rand(1, 3, HW, HW))
    assert calls == [{"call": "torch.autograd.grad", "module": "inner"}]
    assert torch.equal(p.grad, torch.ones_like(p)), "the probe must leave parameter gradients as they were"


# -- BPDA on RPC: forward bit-identical, backward the declared approximation ---------------------------
def _reference_pap(attn: RPCAttention, x: torch.Tensor, mode: str) -> torch.Tensor:
    """RPC attention written out as the paper's loop (rachtsy/KPCA_code Attack/softmax.py), each BPDA
    approximation applied the plain autograd way, independent of rpc.py's fused nodes."""
    B, N, C = x.shape
    k, v = attn.keys_values(x)
    mu = (N * C) / (4 * k.abs().sum(dim=(-2, -1), keepdim=True))
    tau = attn.lam * mu

    def soft(r):
        return torch.sign(r) * torch.clamp(r.abs() - tau, min=0)

    def att(q):
        return torch.softmax((q * attn.scale) @ q.transpose(-2, -1), -1) @ v

    L = torch.zeros_like(k)
    Z = torch.zeros_like(k)
    for i in range(attn.n_iter):
        r = k - L + Z
        if mode == "straight-through":
            s = r + (soft(r) - r).detach()  # identity backward, no tau gradient
        elif mode == "no-threshold":
            s = soft(r).detach()
        else:
            s = soft(r)
        k2 = k - s - Z
        if mode == "symmetric" and i == attn.n_iter - 1:
            k2 = k + (k2 - k).detach()  # plain symmetric attention of the final iterate, dK2 = dK
            L = torch.softmax((k2 * attn.scale) @ k2.transpose(-2, -1), -1) @ v
        else:
            L = att(k2)
        Z = Z + (k - L - s)
        if mode == "symmetric" and i < attn.n_iter - 1:
            L, Z = L.detach(), Z.detach()
    return attn.proj(L.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("mode", ["straight-through", "no-threshold", "symmetric"])
def test_rpc_bpda_forward_identical_backward_is_the_approximation(mode, n_iter):
    torch.manual_seed(0)
    attn = RPCAttention(48, num_heads=3, n_iter=n_iter, lam=0.5).double().eval()
    attn.fused_attn = False
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    w = torch.randn(2, 9, 48, dtype=torch.float64)

    def grad(fn):
        xx = x.clone().requires_grad_(True)
        out = fn(xx)
        (g,) = torch.autograd.grad((out * w).sum(), xx)
        return out.detach(), g

    exact_out, exact_g = grad(attn)
    with approximation_active(attn, mode):
        out, g = grad(attn)
    assert torch.equal(out, exact_out), "a BPDA approximation must leave the forward bit-identical"
    ref_out, ref_g = grad(lambda t: _reference_pap(attn, t, mode))
    assert torch.allclose(ref_out, exact_out, atol=1e-10)
    assert torch.allclose(g, ref_g, rtol=1e-7, atol=1e-10), f"{mode}: not the declared approximation's gradient"
    assert (g - exact_g).norm() > 1e-3 * exact_g.norm(), f"{mode}: gradient equals the exact one"
    assert attn.bpda_backward is None, "the approximation is switched off after the block"
    _, exact_again = grad(lambda t: _reference_pap(attn, t, "exact"))
    assert torch.allclose(exact_g, exact_again, rtol=1e-7, atol=1e-10)


def test_rpc_model_declares_and_bpda_attack_records(micro, digits):
    model = micro["rpc_symvit_micro_patch4_32"]
    x, y = digits
    table = declared_approximations(model)
    assert sorted(table) == ["no-threshold", "straight-through", "symmetric"]
    assert table["symmetric"]["modules"] == ["model.blocks.0.attn"]
    atk = get_attack("bpda", eps=EPS, approximation="symmetric", base="apgd-ce", base_args={"n_iter": 5}, seed=1)
    assert atk.params["approximation"] == "symmetric" and atk.params["base_args"]["loss"] == "ce"
    out = attack_outcomes(model, atk, x, y)
    assert atk.last_modules == ["model.blocks.0.attn"] and float(out.linf.max()) <= EPS + 1e-6
    with pytest.raises(UnknownApproximationError, match="Did you mean: symmetric"):
        get_attack("bpda", eps=EPS, approximation="symetric")(model, x, y)
    with pytest.raises(UnknownApproximationError, match="declares none"):
        get_attack("bpda", eps=EPS, approximation="symmetric")(micro["symvit_micro_patch4_32"], x, y)
    exact = get_attack("bpda", eps=EPS, approximation="symmetric", undeclared="exact", base_args={"steps": 2}, seed=1)
    pgd = get_attack("pgd", eps=EPS, steps=2, seed=1)
    sym = micro["symvit_micro_patch4_32"]
    assert torch.equal(exact(sym, x, y), pgd(sym, x, y)), "nothing declared + undeclared='exact': the base attack"


def test_bpda_refuses_an_approximation_that_changes_the_forward():
    class Wrong(nn.Module):
        bpda_approximations = {"identity": "claims identity, but also shifts the forward"}
        bpda_backward = None

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

        def forward(self, x):
            return self.net(x + 0.1 if self.bpda_backward else x)

    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(BPDAForwardError, match="changes the model's forward"):
        get_attack("bpda", eps=EPS, approximation="identity")(Wrong().eval(), x, y)


@pytest.mark.parametrize("params, match", [
    ({}, "needs approximation"),
    ({"approximation": "x", "base": "square"}, "gradient-free"),
    ({"approximation": "x", "base": "pgdd"}, "Did you mean: pgd"),
    ({"approximation": "x", "base_args": {"eps": 1.0}}, "may not set eps"),
    ({"approximation": "x", "base_args": {"stepz": 3}}, "no parameter 'stepz'"),
    ({"approximation": "x", "base": "apgd-ce", "base_args": {"loss": "dlr"}}, "fixes loss='ce'"),
    ({"approximation": "x", "undeclared": "skip"}, "undeclared"),
])
def test_bpda_bad_options_one_line(params, match):
    with pytest.raises(ValueError, match=match) as err:
        get_attack("bpda", eps=EPS, **params)
    assert "\n" not in str(err.value)


# -- the model built to fool standard attacks ---------------------------------------------------------
def test_gradient_masked_model_fools_pgd_and_adaptive_attacks_break_it(masked):
    model, net, x, y = masked
    clean = attack_outcomes(model, get_attack("noise", eps=0.0), x, y)
    assert clean.clean_accuracy >= 0.8
    pgd = attack_outcomes(model, get_attack("pgd", eps=EPS, steps=10, seed=0), x, y)
    assert pgd.robust_accuracy >= clean.clean_accuracy - 0.1, "standard PGD must be fooled by the masking"
    # the trust checks flag it
    diff = check_differentiability(model, x, y)
    assert diff.status == "fail" and "'bpda'" in diff.message and "'transfer'" in diff.message
    assert check_large_eps(model, x, y).status == "fail"
    # BPDA through the declared approximation and transfer from the undefended network break it
    bpda = attack_outcomes(model, get_attack("bpda", eps=EPS, approximation="identity", base_args={"steps": 10},
                                             seed=0), x, y)
    transfer = attack_outcomes(model, get_attack("transfer", eps=EPS, surrogate=net, base_args={"steps": 10},
                                                 seed=0), x, y)
    for adaptive in (bpda, transfer):
        assert adaptive.robust_accuracy <= pgd.robust_accuracy - 0.4
        gap = check_adaptive_gap(pgd.adv_correct1.numpy(), (pgd.adv_correct1 & adaptive.adv_correct1).numpy())
        assert gap.status == "fail" and "McNemar p" in gap.message and "pp" in gap.message


def test_apgd_base_breaks_the_masked_model_too(masked):
    model, _, x, y = masked
    pgd = attack_outcomes(model, get_attack("apgd", eps=EPS, n_iter=10, seed=0), x, y)
    bpda = attack_outcomes(model, get_attack("bpda", eps=EPS, approximation="identity", base="apgd-dlr",
                                             base_args={"n_iter": 10}, seed=0), x, y)
    assert bpda.robust_accuracy <= pgd.robust_accuracy - 0.4


# -- transfer -----------------------------------------------------------------------------------------
def test_self_no_pap_is_the_same_weights_with_symmetric_attention(micro):
    model = micro["rpc_symvit_micro_patch4_32"]
    twin, replaced = without_pap(model)
    assert replaced == ["model.blocks.0.attn"]
    assert type(twin.model.blocks[0].attn) is SymmetricAttention
    assert type(model.model.blocks[0].attn) is RPCAttention, "the target is left alone"
    a, b = model.state_dict(), twin.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same, none = without_pap(micro["symvit_micro_patch4_32"])
    assert none == []


def test_transfer_from_surrogates(micro, digits):
    target = micro["rpc_symvit_micro_patch4_32"]
    x, y = digits
    for surrogate in ("self:no-pap", "symvit_micro_patch4_32:packaged"):
        atk = get_attack("transfer", eps=EPS, surrogate=surrogate, base="pgd", base_args={"steps": 3}, seed=2)
        out = attack_outcomes(target, atk, x, y)
        assert float(out.linf.max()) <= EPS + 1e-6 and atk.params["surrogate"] == surrogate
        assert atk.params["base_args"]["steps"] == 3
        assert torch.equal(atk(target, x, y), atk(target, x, y))
    early = get_attack("transfer", eps=EPS, base_args={"steps": 3}, early_stop=True, seed=2)
    adv = early(target, x, y)
    with torch.no_grad():
        wrong = target(x).argmax(1) != y
    assert torch.equal(adv[wrong], x[wrong]), "early_stop: the target's clean mistakes are not attacked"


@pytest.mark.parametrize("surrogate, match", [
    ("symvit_micro_patch4_3", "Did you mean"),
    ("self:no-rpc", "self:no-pap"),
    ("symvit_micro_patch4_32:/no/such/file.pt", "not found"),
    (3, "needs surrogate"),
])
def test_transfer_bad_surrogate_one_line(surrogate, match):
    with pytest.raises(ValueError, match=match) as err:
        get_attack("transfer", eps=EPS, surrogate=surrogate)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, params", [
    ("bpda", {"approximation": "identity", "base_args": {"steps": 2}}),
    ("transfer", {"base_args": {"steps": 2}}),
    ("apgd", {"n_iter": 3, "loss": "dlr"}),
])
def test_adaptive_attacks_keep_the_attack_contract(name, params, masked):
    model, _, x, y = masked
    x, y = x[:6], y[:6]
    atk = get_attack(name, eps=EPS, seed=3, **params)
    rng = torch.get_rng_state()
    adv = atk(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert adv.shape == x.shape and not adv.requires_grad and float((adv - x).abs().max()) <= EPS + 1e-6
    assert torch.equal(adv, atk(model, x, y))
    spec = atk.spec()
    assert torch.equal(get_attack(name, **{k: v for k, v in spec.items() if k != "name"})(model, x, y), adv)


# -- the preset ---------------------------------------------------------------------------------------
def test_adaptive_preset_builds_and_names_its_parts():
    specs = get_preset("adaptive")
    names = [s["name"] for s in specs]
    assert names.count("apgd") == 2 and "square" in names and "transfer" in names and names.count("bpda") == 3
    assert all(s["eps"] == 1 / 255 for s in specs)
    assert all(is_adaptive(s["name"], s) for s in specs)
    for spec in specs:
        atk = get_attack(spec["name"], **{k: v for k, v in spec.items() if k not in ("name", *EVAL_PARAMS)})
        if spec["name"] == "apgd":
            assert atk.n_iter == 100 and atk.n_restarts == 5
        if spec["name"] == "square":
            assert (atk.n_queries, atk.p_init, atk.resc_schedule) == (5000, 0.8, False)  # AutoAttack standard's
    assert {s["approximation"] for s in specs if s["name"] == "bpda"} == {"symmetric", "no-threshold",
                                                                           "straight-through"}


# -- checks -------------------------------------------------------------------------------------------
def test_check_softmax_output():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(6, 3, 8, 8)
    assert check_softmax_output(net, x).status == "pass"
    probs = nn.Sequential(net, nn.Softmax(dim=1))
    res = check_softmax_output(probs, x)
    assert res.status == "fail" and "probabilities" in res.message


def _leaky(eps=None, seed=None, steps=1):
    """A plug-in attack that ignores its budget (what eps_zero_identity is there to catch)."""

    def run(model, x, y):
        g = torch.Generator().manual_seed(0)
        return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return run


def test_check_eps_zero_identity(masked):
    model, net, x, y = masked
    runs = [{"name": "pgd", "eps": EPS, "steps": 3}, {"name": "pgd", "eps": 2 * EPS}, {"name": "fgsm", "eps": EPS},
            {"name": "apgd", "eps": EPS, "n_iter": 3}, {"name": "square", "eps": EPS, "n_queries": 10},
            {"name": "bpda", "eps": EPS, "approximation": "identity", "base_args": {"steps": 2}},
            {"name": "transfer", "eps": EPS, "surrogate": net, "base_args": {"steps": 2}}]
    ok = check_eps_zero_identity(model, x[:8], y[:8], runs)
    assert ok.status == "pass" and set(ok.details["families"]) == {"pgd", "fgsm", "apgd", "square", "bpda", "transfer"}
    try:
        register_attack("test-leaky")(_leaky)
        bad = check_eps_zero_identity(net, x[:16], y[:16], runs + [{"name": "test-leaky", "eps": EPS}])
    finally:
        ATTACKS._items.pop("test-leaky", None)
    assert bad.status == "fail" and "test-leaky" in bad.message and "pgd" not in bad.message


def test_check_adaptive_gap_paired_and_holm():
    rng = np.random.default_rng(0)
    std = rng.random(200) < 0.6
    same = check_adaptive_gap(std, std.copy())
    assert same.status == "pass"
    slightly = std.copy()
    slightly[np.flatnonzero(std)[:2]] = False  # 2 of 200: not significant
    assert check_adaptive_gap(std, slightly).status == "pass"
    broken = std & (rng.random(200) < 0.5)
    res = check_adaptive_gap({"1/255": std, "4/255": std}, {"1/255": std.copy(), "4/255": broken})
    assert res.status == "fail" and res.message.count("4/255") == 1 and "1/255:" not in res.message
    row = res.details["budgets"]["4/255"]
    assert row["difference"] < 0 and row["ci"][1] < 0 and row["p_holm"] >= row["p_value"]
    with pytest.raises(ValueError, match="budgets differ"):
        check_adaptive_gap({"a": std}, {"b": std})


# -- stochastic models: the final evaluation repeated, the worst case kept ---------------------------
def test_repeated_final_evaluation_keeps_the_worst_case():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))

        def forward(self, x):
            out = self.net(x)
            return out + 2.0 * torch.randn_like(out)

    torch.manual_seed(0)
    model, x = Noisy().eval(), torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        y = model.net(x).argmax(1)

    def atk(m, images, labels):  # an attack that leaves the images (and the RNG) alone
        return images.clone()

    torch.manual_seed(1)
    once = attack_outcomes(model, atk, x, y)
    torch.manual_seed(1)
    five = attack_outcomes(model, atk, x, y, repeats=5)
    torch.manual_seed(1)
    with torch.no_grad():
        draws = [model(x).argmax(1) == y for _ in range(10)]  # clean 5 draws, then adversarial 5 draws
    clean_all = torch.stack(draws[:5]).all(0)
    adv_all = torch.stack(draws[5:]).all(0)
    assert torch.equal(five.clean_correct1, clean_all) and torch.equal(five.plain_correct1, adv_all)
    assert torch.equal(five.adv_correct1, clean_all & adv_all)
    assert five.robust_accuracy < once.robust_accuracy
    assert torch.equal(five.adv_pred[~adv_all] != y[~adv_all], torch.ones(int((~adv_all).sum()), dtype=torch.bool))
    with pytest.raises(ValueError, match="repeats"):
        attack_outcomes(model, atk, x, y, repeats=0)


def test_substitute_backward_checks_shapes():
    with pytest.raises(ValueError, match="shape"):
        substitute_backward(torch.zeros(2), torch.zeros(3))


def test_adaptive_roles_and_top5_meaning():
    assert is_adaptive("bpda", {}) and is_adaptive("transfer", {}) and is_adaptive("apgd", {"adaptive": True})
    assert not is_adaptive("apgd", {"n_restarts": 5}) and not is_adaptive("pgd", {"adaptive": False})
    assert top5_reason("pgd", {"early_stop": True}) and top5_reason("pgd", {"early_stop": False}) is None
    assert top5_reason("fgsm", {}) is None and top5_reason("noise", {}) is None
    assert top5_reason("apgd", {}) and top5_reason("square", {}) and top5_reason("autoattack", {})
    assert top5_reason("bpda", {"base": "apgd-ce", "base_args": {"loss": "ce"}})
    assert top5_reason("bpda", {"base": "pgd", "base_args": {"early_stop": False}}) is None
    assert top5_reason("transfer", {"early_stop": True, "base": "pgd", "base_args": {}})


class ThresholdDefense(nn.Module):
    """Gradient masking that cuts the autograd graph: ``(x > 0.5).float()`` has no grad_fn at all, so the
    reference libraries' ``torch.autograd.grad(loss, x)`` raised instead of seeing a zero gradient."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x > 0.5).float())


@pytest.mark.parametrize("name, params", [
    ("apgd", {"n_iter": 3, "loss": "ce"}),
    ("apgd", {"n_iter": 3, "loss": "dlr"}),
    ("autoattack", {"version": "custom", "attacks_to_run": ["apgd-ce", "apgd-t", "fab-t"], "n_iter": 3,
                    "n_target_classes": 2}),
    ("autoattack", {"version": "custom", "attacks_to_run": ["apgd-ce", "apgd-t"], "n_iter": 3,
                    "n_target_classes": 2, "impl": "torchattacks"}),
    ("bpda", {"approximation": "straight-through", "undeclared": "exact", "base": "apgd-ce", "base_args": {"n_iter": 3}}),
    ("transfer", {"surrogate": "self:no-pap", "base": "apgd-ce", "base_args": {"n_iter": 3}}),
    ("pgd", {"steps": 3}),
])
def test_a_model_that_cuts_the_input_graph_gets_zero_gradients_not_a_crash(name, params, masked):
    """Every gradient attack, the reference libraries' included (attacks.base.ConnectedInput), runs on it;
    the logits the attack sees are the model's own."""
    _, net, x, y = masked
    model = ThresholdDefense(net).eval()
    x, y = x[:6], y[:6]
    adv = get_attack(name, eps=EPS, seed=1, **params)(model, x, y)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= EPS + 1e-6


def test_connected_input_keeps_the_logits_and_gives_a_zero_gradient(masked):
    from robustbench_rpc.attacks.base import ConnectedInput

    _, net, x, _ = masked
    model = ThresholdDefense(net).eval()
    xg = x[:4].clone().requires_grad_(True)
    out = ConnectedInput(model)(xg)
    assert torch.equal(out, model(x[:4]))
    (grad,) = torch.autograd.grad(out.sum(), xg)
    assert torch.equal(grad, torch.zeros_like(xg))
    with torch.no_grad():  # outside autograd nothing is added
        assert not ConnectedInput(model)(x[:4]).requires_grad
