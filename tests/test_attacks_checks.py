"""Trust checks: monotonicity in eps, large eps, gradient masking, differentiability, stochasticity."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from conftest import Normalize as _Normalize
import torch.nn.functional as F

from robustbench_rpc.attacks import (
    CheckResult, EOTModel, attack_outcomes, check_differentiability, check_gradient_masking, check_large_eps,
    check_monotone_in_eps, detect_stochastic, get_attack,
)

HW = 16


pytestmark = pytest.mark.usefixtures("one_thread")



def Normalize():  # noqa: N802 - ImageNet statistics for these tests
    return _Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def make_data(n: int, seed: int, n_classes: int = 10, hw: int = HW):
    protos = (torch.rand(n_classes, 3, hw, hw, generator=torch.Generator().manual_seed(123)) > 0.5).float() * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = (0.5 + 0.02 * protos[y] + 0.12 * torch.randn(n, 3, hw, hw, generator=g)).clamp(0, 1)
    return x, y


def mlp() -> nn.Module:
    return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3 * HW * HW, 32), nn.ReLU(), nn.Linear(32, 10))


def conv_net() -> nn.Module:
    return nn.Sequential(Normalize(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10))


def tiny_vit(attention: str | None = None) -> nn.Module:
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                            num_classes=10, pretrained=False)
    if attention is not None:
        from robustbench_rpc.attention import patch_attention

        patch_attention(vit, attention, allow_reinit=True)  # a fresh model: nothing trained to lose
    return nn.Sequential(Normalize(), vit).eval()


class Quantized(nn.Module):
    """Input quantization without a straight-through estimator: zero gradients almost everywhere."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


class Detached(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach())


class PartlyDetached(nn.Module):
    """A residual-style model whose main branch is cut from the graph: gradients exist but are wrong."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.skip = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

    def forward(self, x):
        return self.inner(x).detach() + 0.1 * self.skip(x)


class AlwaysDropout(nn.Module):
    def __init__(self, inner, p=0.3):
        super().__init__()
        self.inner, self.p = inner, p

    def forward(self, x):
        return self.inner(F.dropout(x, self.p, training=True))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    xtr, ytr = make_data(512, seed=1)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(xtr), (64,), generator=g)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = make_data(32, seed=2)
    return model.eval(), x, y


# -- monotone in eps ----------------------------------------------------------------------------------
def test_monotone_pass_fail_and_tolerance():
    ok = check_monotone_in_eps({0.0: 0.9, 1 / 255: 0.7, 2 / 255: 0.5, 4 / 255: 0.5})
    assert isinstance(ok, CheckResult) and ok.status == "pass" and ok.ok
    bad = check_monotone_in_eps({1 / 255: 0.6, 2 / 255: 0.4, 3 / 255: 0.55})
    assert bad.status == "fail" and bad.details["violations"][0]["eps"] == pytest.approx(3 / 255)
    # a rise of one sample out of 100 is sampling noise with n=100 (tol = 2 samples), not with tol=0
    assert check_monotone_in_eps({0.01: 0.50, 0.02: 0.51}, n=100).status == "pass"
    assert check_monotone_in_eps({0.01: 0.50, 0.02: 0.51}, tol=0.0).status == "fail"
    # order of the dict does not matter
    assert check_monotone_in_eps({3.0: 0.1, 1.0: 0.5, 2.0: 0.3}).status == "pass"


def test_monotone_on_real_pgd_curve(trained):
    model, x, y = trained
    curve = {}
    for k in (0, 1, 2, 3, 4):
        out = attack_outcomes(model, get_attack("pgd", eps=k / 255, steps=10, seed=k), x, y)
        curve[k / 255] = out.robust_accuracy
    assert curve[0.0] > 0.8 and curve[4 / 255] < curve[1 / 255]
    assert check_monotone_in_eps(curve, n=len(x)).status == "pass"


# -- large eps ----------------------------------------------------------------------------------------
def test_large_eps_passes_on_normal_model(trained):
    model, x, y = trained
    res = check_large_eps(model, x, y, eps=0.5, steps=10)
    assert res.status == "pass", res.message
    assert res.details["accuracy"] <= 0.05 and res.details["clean_accuracy"] > 0.8


@pytest.mark.parametrize("wrap", [Quantized, Detached])
def test_large_eps_flags_masked_models(trained, wrap):
    model, x, y = trained
    res = check_large_eps(wrap(model), x, y, eps=0.5, steps=10)
    assert res.status == "fail" and "masking" in res.message
    assert res.details["accuracy"] > 0.5


# -- gradient masking ---------------------------------------------------------------------------------
def test_gradient_masking_flags_black_box_winning():
    results = {"pgd": {1 / 255: 0.60, 2 / 255: 0.40}, "fgsm": {1 / 255: 0.65}, "square": {1 / 255: 0.30}}
    res = check_gradient_masking(results)  # square is registered as gradient-free
    assert res.status == "fail"
    assert res.details["flagged"][0]["gradient_free"] == "square" and res.details["gradient_free"] == ["square"]
    fine = check_gradient_masking({"pgd": {1 / 255: 0.30}, "spsa": {1 / 255: 0.45}, "noise": {1 / 255: 0.9}})
    assert fine.status == "pass"
    # within tolerance: one sample out of 100
    assert check_gradient_masking({"pgd": {0.1: 0.31}, "square": {0.1: 0.30}}, n=100).status == "pass"
    # explicit gradient-free set for names not in the registry
    assert check_gradient_masking({"mine": {0.1: 0.2}, "pgd": {0.1: 0.5}}, gradient_free=["mine"]).status == "fail"
    # same eps but different norms are not compared
    split = check_gradient_masking({"pgd": {0.5: 0.6}, "square": {0.5: 0.1}}, norms={"pgd": "Linf", "square": "L2"})
    assert split.status == "warn"


def test_gradient_masking_end_to_end(trained):
    """On a quantized model, Square (black-box) beats PGD (zero gradients): flagged. On the normal
    model it is not."""
    model, x, y = trained
    eps = 6 / 255
    for m, expected in ((model, "pass"), (Quantized(model), "fail")):
        pgd = get_attack("pgd", eps=eps, steps=10, random_start=False)
        square = get_attack("square", eps=eps, n_queries=100, seed=0)
        results = {"pgd": {eps: attack_outcomes(m, pgd, x, y).robust_accuracy},
                   "square": {eps: attack_outcomes(m, square, x, y).robust_accuracy}}
        assert check_gradient_masking(results, n=len(x)).status == expected, results


# -- differentiability --------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [mlp, conv_net, tiny_vit], ids=["mlp", "conv", "vit"])
def test_differentiability_quiet_on_normal_models(build):
    torch.manual_seed(0)
    model = build().eval()
    hw = 32 if build is tiny_vit else HW
    x, y = make_data(6, seed=3, hw=hw)
    res = check_differentiability(model, x, y)
    assert res.status == "pass", (res.message, res.details)
    assert res.details["dtype"] == "float64"
    assert next(model.parameters()).dtype == torch.float32  # the check worked on a copy


def test_differentiability_quiet_on_rpc_vit():
    try:
        model = tiny_vit("rpc")
    except Exception as err:  # the attention package is developed separately
        pytest.skip(f"RPC attention unavailable: {err}")
    x, y = make_data(4, seed=3, hw=32)
    res = check_differentiability(model, x, y)
    assert res.status == "pass", (res.message, res.details)


@pytest.mark.parametrize("wrap", [Quantized, Detached, PartlyDetached])
def test_differentiability_flags_masked_models(wrap):
    torch.manual_seed(0)
    model = wrap(conv_net()).eval()
    x, y = make_data(6, seed=3)
    model(x)  # materialize lazy layers
    res = check_differentiability(model, x, y)
    assert res.status == "fail", (res.message, res.details)


def test_differentiability_float32_fallback(trained):
    model, x, y = trained
    res = check_differentiability(model, x[:6], y[:6], dtype="float32")
    assert res.status == "pass" and res.details["dtype"] == "float32"
    assert check_differentiability(Quantized(model), x[:6], y[:6], dtype="float32").status == "fail"


# -- stochastic models --------------------------------------------------------------------------------
def test_detect_stochastic_and_eot(trained):
    model, x, y = trained
    assert not detect_stochastic(model, x)
    noisy = AlwaysDropout(model)
    assert detect_stochastic(noisy, x)
    assert check_differentiability(noisy, x, y).status == "warn"

    # EOT of a deterministic model is the model itself
    assert torch.allclose(EOTModel(model, samples=3, average="logits")(x), model(x), atol=1e-6)
    assert torch.allclose(EOTModel(model, samples=3)(x), model(x).log_softmax(-1), atol=1e-5)
    # EOT over many samples is far less noisy than one sample
    torch.manual_seed(0)
    single = torch.stack([noisy(x) for _ in range(4)]).std(0).mean()
    eot = EOTModel(noisy, samples=32, average="logits")
    averaged = torch.stack([eot(x) for _ in range(4)]).std(0).mean()
    assert averaged < single / 3
    out = eot(x)
    assert out.shape == (len(x), 10)
    # attacks run through EOT (gradients flow through every sample)
    adv = get_attack("pgd", eps=4 / 255, steps=3, seed=0)(EOTModel(noisy, samples=4), x, y)
    assert float((adv - x).abs().max()) > 0
    with pytest.raises(ValueError, match="samples"):
        EOTModel(model, samples=0)


def test_differentiability_quiet_on_relu_maxpool_cnn_over_flat_images():
    """Flat regions (black backgrounds) tie max-pool windows exactly; a normal CNN must not be flagged."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.zeros(8, 3, 16, 16)
    x[:, :, 4:12, 6:10] = 1.0  # a white stroke on black, like a digit
    y = torch.arange(8) % 10
    assert check_differentiability(cnn, x, y).status == "pass"
    quantized = nn.Sequential(_Lambda(lambda t: torch.round(t * 255) / 255), cnn)
    assert check_differentiability(quantized, x, y).status == "fail"


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_chance_level_check_uses_the_wilson_interval():
    from robustbench_rpc.attacks.checks import check_chance_level

    at_chance = check_chance_level(5, 53, 10)  # 9.4 %: a re-initialised qkv, as once measured
    assert at_chance.status == "fail" and "not significantly above chance 1/10" in at_chance.message
    assert at_chance.details["ci"][0] < 0.1 < at_chance.details["ci"][1]
    assert check_chance_level(3, 12, 10).status == "fail"  # 25 % of 12: Wilson lower bound 0.089 < 0.1
    assert check_chance_level(4, 12, 10).status == "pass"  # 33 % of 12: lower bound 0.138
    assert check_chance_level(12, 12, 10).status == "pass"
    assert check_chance_level(250, 256, 10).status == "pass"
    assert check_chance_level(58, 100, 2).status == "fail"  # 58 % on two classes: CI [0.48, 0.67] holds 0.5
    assert check_chance_level(70, 100, 2).status == "pass"
    assert check_chance_level(0, 0, 10).status == "warn"
