"""Segmentation attacks (pixel-pgd, segpgd, cospgd): within budget on every image, lower mIoU, seeded, their
losses as the papers (and the CosPGD authors' code) write them, through get_attack as a user calls them."""
import itertools

import pytest
import torch
from torch import nn

from robustbench_rpc.attacks import ATTACKS as REGISTRY, ModelOutputError, get_attack, list_attacks
from robustbench_rpc.attacks.budget import budget_violations, lp_norms
from robustbench_rpc.data.segmentation import digits_seg64
from robustbench_rpc.metrics_seg import batch_areas, seg_metrics
from robustbench_rpc.models import load_model
from robustbench_rpc.models.sliding import SlidingWindow

# every registered segmentation attack, so one registered later is tested the day it is registered
ATTACKS = [n for n in list_attacks() if getattr(REGISTRY.get(n), "task", "") == "segmentation"]
EPS = {"Linf": 8 / 255, "L2": 0.5}


class Threshold(nn.Module):
    """Two classes, 'digit' where the pixel is at least 0.25 bright: exactly the embedded set's masks."""

    def forward(self, x):
        grey = x.mean(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(grey), 40 * (grey - 0.25) + 1e-3], dim=1)


@pytest.fixture(scope="module")
def canvases():
    ds = digits_seg64("test")
    x, masks = ds.images[:4], (ds.masks[:4] > 0).long()
    masks[:, :2] = 255  # a band of ignored pixels
    return x, masks


def _miou(model, x, masks):
    with torch.no_grad():
        return seg_metrics(batch_areas(model(x), masks, 2))["mIoU"]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_stays_within_budget_lowers_miou_and_is_seeded(name, norm, canvases):
    model, (x, masks) = Threshold(), canvases
    clean = _miou(model, x, masks)
    assert clean == pytest.approx(1.0)
    attack = get_attack(name, eps=EPS[norm], norm=norm, steps=5, seed=0)
    before, rng = x.clone(), torch.get_rng_state()
    adv = attack(model, x, masks)
    assert torch.equal(x, before) and torch.equal(torch.get_rng_state(), rng)
    assert adv.shape == x.shape and 0 <= float(adv.min()) and float(adv.max()) <= 1
    assert budget_violations(x, adv, EPS[norm], norm) == []
    assert float(lp_norms(adv - x, norm).max()) <= EPS[norm] * (1 + 1e-6)
    attacked = _miou(model, adv, masks)
    assert attacked < clean - 0.02, (name, norm, clean, attacked)
    assert torch.equal(adv, attack(model, x, masks))
    assert attack.spec()["name"] == name and attack.spec()["alpha"] == pytest.approx(2.5 * EPS[norm] / 5)


def test_the_segmentation_attacks_are_registered():
    assert {"pixel-pgd", "segpgd", "cospgd"} <= set(ATTACKS)


def _labelled_pixels(masks: torch.Tensor):
    """(image, row, column, label) of every pixel whose label is not 255 (ignored)."""
    for b, i, j in itertools.product(*map(range, masks.shape)):
        y = int(masks[b, i, j])
        if y != 255:
            yield b, i, j, y


def test_losses_are_the_papers_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    masks = torch.randint(0, 3, (2, 4, 5))
    masks[0, 0, 0] = 255
    T = 4
    seg, cos, pgd = (get_attack(n, eps=0.01, steps=T) for n in ("segpgd", "cospgd", "pixel-pgd"))
    probs = logits.softmax(1)
    pred = logits.argmax(1)
    for step in range(T):
        lam = step / (2 * T)  # (t - 1) / (2T), t = 1..T
        total = 0.0
        for b, i, j, y in _labelled_pixels(masks):
            ce = -float(torch.log(probs[b, y, i, j]))
            total += ((1 - lam) if int(pred[b, i, j]) == y else lam) * ce
        assert float(seg.pixel_loss(logits, masks, step)) == pytest.approx(total / 20, rel=1e-5)
    total, plain = 0.0, 0.0
    for b, i, j, y in _labelled_pixels(masks):
        p = probs[b, :, i, j]
        ce = -float(torch.log(p[y]))
        total += float(p[y] / p.norm()) * ce  # cosine of the softmax with the one-hot label
        plain += ce
    assert float(cos.pixel_loss(logits, masks, 0)) == pytest.approx(total / 39, rel=1e-5)
    assert float(pgd.pixel_loss(logits, masks, 0)) == pytest.approx(plain / 39, rel=1e-5)


def test_micro_segmenter_attacked_through_sliding_windows():
    seg = load_model("segmenter_linear_rpc_symvit_micro")
    model = SlidingWindow(seg, short_side=None)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        clean = model(x).argmax(1)
    for name in ATTACKS:
        adv = get_attack(name, eps=8 / 255, steps=2, labels="predicted", seed=1)(model, x, clean)
        assert budget_violations(x, adv, 8 / 255, "Linf") == []
        with torch.no_grad():
            assert (model(adv).argmax(1) != clean).float().mean() > 0.01


def test_bad_models_and_masks_are_one_line_errors(canvases):
    x, masks = canvases
    attack = get_attack("segpgd", eps=4 / 255, steps=1)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10))
    with pytest.raises(ModelOutputError, match=r"per-pixel logits of shape .* returned \(4, 10\)") as err:
        attack(classifier, x, masks)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"masks of shape \(B, H, W\) = \(4, 64, 64\), got \(4,\)"):
        attack(Threshold(), x, masks[:, 0, 0])
    with pytest.raises(ValueError, match="norm 'L1' is not supported by attack 'cospgd'"):
        get_attack("cospgd", eps=1.0, norm="L1")


def test_adaptive_attacks_take_a_segmentation_base():
    """BPDA through PAP and transfer from the PAP-free twin, as for classification, with segpgd as the base."""
    torch.manual_seed(0)
    model = load_model("segmenter_linear_rpc_symvit_micro")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        clean = model(x).argmax(1)
    for name, args in (("bpda", dict(approximation="straight-through")), ("transfer", dict(surrogate="self:no-pap"))):
        attack = get_attack(name, eps=8 / 255, base="segpgd", base_args={"steps": 2}, labels="predicted", seed=0,
                            **args)
        adv = attack(model, x, clean)
        assert budget_violations(x, adv, 8 / 255, "Linf") == [], name
        with torch.no_grad():
            assert (model(adv).argmax(1) != clean).float().mean() > 0.01, name
        if name == "bpda":  # PAP in the encoder's first block took the straight-through backward
            assert attack.last_modules and all(m.startswith("model.encoder.blocks.0") for m in attack.last_modules)
    assert get_attack("bpda", eps=0.01, approximation="straight-through", base="segpgd").last_modules is None
    with pytest.raises(ValueError, match="no meaning per pixel"):
        get_attack("transfer", eps=0.01, base="segpgd", early_stop=True)
