"""FAN-ViT and RPC-FAN, without FAN's released weights.

The expected state-dict layout below is written out here from a reading of NVlabs/FAN ``models/fan.py``
(``FAN``, ``FANBlock``, ``TokenMixing``, ``ChannelProcessing``, ``Mlp``/``DWConv``, ``ConvPatchEmbed``,
``PositionalEncodingFourier``, ``ClassAttentionBlock``), not from our code. The side-by-side logits check
against FAN's own code lives outside the repository (FAN's licence keeps its code out); see README.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from robustbench_rpc.attention import (
    AttentionReinitError, FANAttention, FANRPCAttention, describe_attention, patch_attention,
)
from robustbench_rpc.cli.commands import main
from robustbench_rpc.models import CheckpointError, create_model, load_model
from robustbench_rpc.models.fan import FAN_SIZES

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fan_vit_layout(dim: int = 192, depth: int = 12, heads: int = 4, classes: int = 1000, ratio: int = 4,
                   cls_blocks: int = 2) -> dict[str, tuple[int, ...]]:
    """Every key and shape FAN's ``FAN(patch_size=16, ...)`` defines (its fan_*_p16_224 factories)."""
    out: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    bn = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,),  # noqa: E731
                       f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()}
    ln = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,)}  # noqa: E731
    lin = lambda p, o, i: {f"{p}.weight": (o, i), f"{p}.bias": (o,)}  # noqa: E731
    chans = [3, dim // 8, dim // 4, dim // 2, dim]  # ConvPatchEmbed: 4 x (conv3x3 stride 2 + BN), GELU between
    for j, idx in enumerate((0, 2, 4, 6)):
        out[f"patch_embed.proj.{idx}.0.weight"] = (chans[j + 1], chans[j], 3, 3)  # bias=False
        out.update(bn(f"patch_embed.proj.{idx}.1", chans[j + 1]))
    out.update({"pos_embed.token_projection.weight": (dim, 64, 1, 1), "pos_embed.token_projection.bias": (dim,)})
    hidden = dim * ratio
    for i in range(depth):
        b = f"blocks.{i}"
        out.update({f"{b}.gamma1": (dim,), f"{b}.gamma2": (dim,)})
        out.update(ln(f"{b}.norm1", dim) | ln(f"{b}.norm2", dim))
        out.update(lin(f"{b}.attn.q", dim, dim) | lin(f"{b}.attn.kv", 2 * dim, dim) | lin(f"{b}.attn.proj", dim, dim))
        m = f"{b}.mlp"  # ChannelProcessing
        out.update({f"{m}.temperature": (heads, 1, 1), f"{m}.mlp_v.gamma": (hidden,)})
        out.update(lin(f"{m}.mlp_v.fc1", hidden, dim) | lin(f"{m}.mlp_v.fc2", dim, hidden))
        for conv in ("conv1", "conv2"):  # depthwise 3x3 with bias
            out.update({f"{m}.mlp_v.dwconv.{conv}.weight": (hidden, 1, 3, 3),
                        f"{m}.mlp_v.dwconv.{conv}.bias": (hidden,)})
        out.update(bn(f"{m}.mlp_v.dwconv.bn", hidden) | ln(f"{m}.norm_v", dim) | lin(f"{m}.q", dim, dim))
    for i in range(cls_blocks):
        c = f"cls_attn_blocks.{i}"
        out.update({f"{c}.gamma1": (dim,), f"{c}.gamma2": (dim,)})
        out.update(ln(f"{c}.norm1", dim) | ln(f"{c}.norm2", dim))
        for p in "qkv":
            out.update(lin(f"{c}.attn.{p}", dim, dim))
        out.update(lin(f"{c}.attn.proj", dim, dim) | lin(f"{c}.mlp.fc1", hidden, dim)
                   | lin(f"{c}.mlp.fc2", dim, hidden))
    out.update(ln("norm", dim) | lin("head", classes, dim))
    return out


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["fan_tiny_12_p16_224", "rpc_fan_tiny_12_p16_224"])
def test_state_dict_layout_is_fans(name):
    with torch.device("meta"):
        model = create_model(name)
    assert _layout(model) == fan_vit_layout()
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 1) == 7.3  # FAN's README: FAN-T-ViT 7.3M


def test_other_fan_vit_sizes_have_fans_layout():
    for size, (dim, depth, heads) in {"small": (384, 12, 8), "base": (448, 18, 8), "large": (480, 24, 10)}.items():
        with torch.device("meta"):
            model = create_model(f"fan_{size}_{depth}_p16_224")
        assert FAN_SIZES[size] == dict(embed_dim=dim, depth=depth, num_heads=heads)
        assert _layout(model) == fan_vit_layout(dim, depth, heads)


def random_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``name`` with every weight and BatchNorm statistic drawn at random, in eval mode (built on the meta
    device: FAN's truncated-normal init of 7M weights is the slow part of building one, and is not needed)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                t.zero_()
            elif "running_var" in k:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif k.endswith(("gamma", "gamma1", "gamma2", "temperature")) or (t.dim() == 1 and k.endswith("weight")):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))  # scales: LayerScale, norms, temperature
            elif t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))  # biases, running means
            else:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)  # 1/sqrt(fan-in)
    return model.eval()


def test_forward_at_224_on_random_weights():
    fan = random_model("fan_tiny_12_p16_224")
    rpc = random_model("rpc_fan_tiny_12_p16_224")
    rpc.load_state_dict(fan.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = fan(x), rpc(x)
    assert a.shape == b.shape == (1, 1000) and torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.equal(a, b)  # PAP in block 0 changes the logits


@pytest.mark.parametrize("name", ["fan_tiny_12_p16_224", "rpc_fan_tiny_12_p16_224"])
def test_forward_backward_on_random_weights(name):
    model = random_model(name, img_size=64)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------- RPC-FAN
def reference_pap_asymmetric(q, k, v, n_iter: int, lam: float, dim: int):
    """The rpc_fan docstring's algorithm, written out plainly: PAP on K, FAN's queries on the cleaned keys."""
    N, d = k.shape[-2:]
    mu = N * dim / (4 * k.abs().sum(dim=(-2, -1), keepdim=True))
    L = torch.zeros_like(k)
    Y = torch.zeros_like(k)
    for _ in range(n_iter):
        R = k - L + Y / mu
        S = torch.sign(R) * torch.clamp(R.abs() - lam * mu, min=0)
        k2 = k - S - Y / mu
        L = torch.softmax(q @ k2.transpose(-2, -1) / d ** 0.5, dim=-1) @ v
        Y = Y + mu * (k - L - S)
    return L


@pytest.mark.parametrize("n_iter", [1, 2, 4])
@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_rpc_fan_runs_the_documented_pap(n_iter, lam):
    torch.manual_seed(1)  # float64: near-threshold entries would otherwise flip on float32 rounding
    attn = FANRPCAttention(48, num_heads=3, qkv_bias=True, n_iter=n_iter, lam=lam).double().eval()
    q, k, v = attn.queries_keys_values(3.0 * torch.randn(2, 17, 48, dtype=torch.float64))  # the threshold bites
    assert (k.abs() > attn.mu_and_threshold(k)[1]).any()
    torch.testing.assert_close(attn.mix(q, k, v), reference_pap_asymmetric(q, k, v, n_iter, lam, 48),
                               atol=1e-10, rtol=1e-10)


def test_one_iteration_above_every_key_is_fans_attention_exactly():
    torch.manual_seed(2)
    fan = FANAttention(48, num_heads=3, qkv_bias=True).eval()
    x = 3.0 * torch.randn(2, 17, 48)
    _, k, _ = fan.queries_keys_values(x)
    same = FANRPCAttention(48, 3, qkv_bias=True, n_iter=1, lam=1e9).eval()
    same.load_state_dict(fan.state_dict())
    _, tau = same.mu_and_threshold(k)
    assert (k.abs() < tau).all()  # S = 0: K2 = K
    assert torch.equal(same(x), fan(x))
    # one iteration alone is not the identity (its first step soft-thresholds K) ...
    thresholded = FANRPCAttention(48, 3, qkv_bias=True, n_iter=1, lam=0.05).eval()
    thresholded.load_state_dict(fan.state_dict())
    assert not torch.allclose(thresholded(x), fan(x), atol=1e-3)
    # ... nor are more iterations above every key (Y = mu (K - L) makes the second K2 equal L)
    more = FANRPCAttention(48, 3, qkv_bias=True, n_iter=2, lam=1e9).eval()
    more.load_state_dict(fan.state_dict())
    assert not torch.allclose(more(x), fan(x), atol=1e-3)


def test_rpc_fan_without_pap_and_its_bpda_backwards():
    torch.manual_seed(3)
    rpc = FANRPCAttention(48, 3, qkv_bias=True, n_iter=4).eval()
    plain = rpc.without_pap()  # the transfer attack's self:no-pap surrogate: FAN's own attention, same weights
    fan = FANAttention(48, 3, qkv_bias=True).eval()
    fan.load_state_dict(rpc.state_dict())
    x = torch.randn(2, 17, 48, requires_grad=True)
    assert type(plain) is FANAttention and torch.equal(plain(x), fan(x))
    assert rpc.dynamic and set(rpc.bpda_approximations) == {"straight-through", "no-threshold", "final-iterate"}
    (exact,) = torch.autograd.grad(rpc(x).sum(), x)
    for name in rpc.bpda_approximations:  # forward unchanged, backward replaced
        rpc.bpda_backward = name
        out = rpc(x)
        (g,) = torch.autograd.grad(out.sum(), x)
        rpc.bpda_backward = None
        assert torch.equal(out, rpc(x)) and torch.isfinite(g).all() and not torch.allclose(g, exact), name


def test_rpc_fan_model_is_the_papers_setting_on_fans_weights():
    kw = dict(img_size=64, depth=3)
    fan = random_model("fan_tiny_12_p16_224", **kw)
    rpc = random_model("rpc_fan_tiny_12_p16_224", seed=1, **kw)
    rpc.load_state_dict(fan.state_dict())  # the same keys: PAP adds no parameter
    assert [r["variant"] for r in describe_attention(rpc)] == ["rpc_fan", "fan", "fan"]
    assert (rpc.blocks[0].attn.n_iter, rpc.blocks[0].attn.lam) == (4, 4.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(rpc(x), fan(x), atol=1e-4)
        identity = random_model("rpc_fan_tiny_12_p16_224", rpc_iters=1, rpc_lambda=1e9, **kw)
        identity.load_state_dict(fan.state_dict())
        assert torch.equal(identity(x), fan(x))
        # patching FAN's model gives the registered RPC-FAN; symmetric rpc cannot keep FAN's q / kv
        patched = patch_attention(fan, "rpc_fan", layers="first", n_iter=4, lam=4.0)
        assert torch.equal(patched(x), rpc(x))
    with pytest.raises(AttentionReinitError, match=r"blocks\.0\.attn\.q\.weight \(dropped\)"):
        patch_attention(random_model("fan_tiny_12_p16_224", **kw), "rpc", layers="first")
    with pytest.raises(TypeError, match="only apply to rpc_fan"):
        create_model("fan_tiny_12_p16_224", rpc_iters=2, **kw)


# ---------------------------------------------------------------------------------------- contract, files
@pytest.mark.parametrize("name", ["fan_tiny_12_p16_224", "rpc_fan_tiny_12_p16_224", "fan_base_18_p16_224"])
def test_contract_is_fans_cfg(name):
    with torch.device("meta"):
        model = create_model(name)
    cfg = timm.data.resolve_data_config({}, model=model)  # what timm derives from the model, as FAN's main.py
    assert cfg == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": IMAGENET_MEAN,
                   "std": IMAGENET_STD, "crop_pct": 1.0, "crop_mode": "center"}
    assert model.pretrained_cfg["num_classes"] == 1000 and model.pretrained_cfg["first_conv"] == "patch_embed.proj.0.0"


def test_loaded_model_normalizes_with_fans_mean_std(tmp_path):
    fan = random_model("fan_tiny_12_p16_224", img_size=64, depth=2)
    path = tmp_path / "fan.pth.tar"
    torch.save({"epoch": 3, "arch": "fan_tiny_12_p16_224", "state_dict": fan.state_dict(),
                "state_dict_ema": fan.state_dict(), "args": argparse.Namespace(model="fan_tiny_12_p16_224")}, path)
    wrapped = load_model("fan_tiny_12_p16_224", checkpoint=path, img_size=64, depth=2)
    dc = wrapped.data_config
    assert (dc["interpolation"], dc["crop_pct"], dc["num_classes"]) == ("bicubic", 1.0, 1000)
    assert dc["contract_source"] == "model"
    assert dc["input_size"] == (3, 64, 64)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), fan((x - mean) / std))
    rpc = load_model("rpc_fan_tiny_12_p16_224", checkpoint=path, img_size=64, depth=2)  # FAN's file, PAP on top
    assert all(torch.equal(rpc.model.state_dict()[k], v) for k, v in fan.state_dict().items())


def test_timm_training_checkpoint_gives_its_ema_weights_on_request(tmp_path):
    """FAN's main.py saves timm's CheckpointSaver layout; FAN's ImageNet-R script evaluates --use-ema."""
    raw, ema = (random_model("fan_tiny_12_p16_224", seed=s, img_size=64, depth=2).state_dict() for s in (0, 1))
    path = tmp_path / "train.pth.tar"
    torch.save({"epoch": 299, "state_dict": raw, "state_dict_ema": ema, "args": argparse.Namespace(lr=2e-3)}, path)
    for prefer_ema, want in ((False, raw), (True, ema)):
        got = load_model("fan_tiny_12_p16_224", checkpoint=path, prefer_ema=prefer_ema, img_size=64, depth=2)
        assert torch.equal(got.model.state_dict()["head.weight"], want["head.weight"])


def _xcit_keys(sd: dict) -> dict:
    """The keys FAN's checkpoint_filter_fn renames: ``pos_embeder.*`` and a class-attention ``qkv``."""
    sd = {k.replace("pos_embed.", "pos_embeder."): v for k, v in sd.items()}
    for i in range(2):
        p = f"cls_attn_blocks.{i}.attn."
        sd[p + "qkv.weight"] = torch.cat([sd.pop(f"{p}{s}.weight") for s in "qkv"])
        sd[p + "qkv.bias"] = torch.cat([sd.pop(f"{p}{s}.bias") for s in "qkv"])
    return sd


def test_files_with_the_keys_fans_loader_renames_load(tmp_path):
    fan = random_model("fan_tiny_12_p16_224", img_size=64, depth=2)
    path = tmp_path / "xcit_keys.pth"
    torch.save({"model": _xcit_keys(fan.state_dict())}, path)
    loaded = load_model("fan_tiny_12_p16_224", checkpoint=path, img_size=64, depth=2)
    for k, v in fan.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def _shapes_only(layout: dict) -> dict:
    """A state dict of the given shapes that costs one float each on disk (expanded zeros)."""
    return {k: torch.zeros(()).expand(s) if s else torch.zeros((), dtype=torch.long) for k, s in layout.items()}


def test_wrong_files_are_refused_in_one_line_naming_the_file(tmp_path):
    cases = {
        "deit.pth": ({"model": timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2,
                                                 num_classes=10).state_dict()}, "is not a FAN-ViT checkpoint"),
        "small.pth": (_shapes_only(fan_vit_layout(384, 12, 8)), "load it as fan_small_12_p16_224"),
        "odd.pth": (_shapes_only(fan_vit_layout(200, 3, 4)), "no registered FAN-ViT has that size"),
        "ten.pth": (_shapes_only(fan_vit_layout(depth=2, classes=10)), "pass --model-arg num_classes=10"),
    }
    for file, (obj, expected) in cases.items():
        torch.save(obj, tmp_path / file)
        with pytest.raises(CheckpointError) as err:  # a 2-block FAN-tiny: quicker to build, same checks
            load_model("fan_tiny_12_p16_224", checkpoint=tmp_path / file, depth=2)
        msg = str(err.value)
        assert expected in msg and str(tmp_path / file) in msg and "\n" not in msg, msg


def test_cli_lists_the_models_and_refuses_a_wrong_file(tmp_path, capsys):
    assert main(["models", "*fan*"]) == 0
    listed = capsys.readouterr().out
    for name in ("fan_tiny_12_p16_224", "rpc_fan_tiny_12_p16_224", "fan_small_12_p16_224", "fan_base_18_p16_224"):
        assert name in listed
    deit = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).state_dict(), deit)
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\ndataset = "digits32"\nlimit = 2\n[[evaluation]]\nkind = "clean"\n')
    rc = main(["run", "--suite", str(suite), "--model", f"fan_tiny_12_p16_224:{deit}", "--model-arg", "img_size=32",
               "--model-arg", "num_classes=10", "--model-arg", "depth=2", "--out", str(tmp_path / "out"),
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is not a FAN-ViT checkpoint" in err[0] and str(deit) in err[0], err


# ---------------------------------------------------------------------------------------- suite
def _tree(root, wnids, filled, ext: str) -> str:
    """A released-layout folder: every class folder, two small JPEGs in ``filled``."""
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
    for i, w in enumerate(filled):
        for j in range(2):
            rng = np.random.default_rng(10 * i + j)
            Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(root / w / f"{w}_{j}{ext}")
    return str(root)


def test_paper_fan_suite_is_planned_against_imagenet_layout_trees(tmp_path):
    from robustbench_rpc.attacks import get_preset
    from robustbench_rpc.data.imagenet_classes import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
    from robustbench_rpc.evaluation.plan import Plan, RunConfig

    roots = {"imagenet": _tree(tmp_path / "val", IMAGENET_WNIDS, IMAGENET_WNIDS[:2], ".JPEG"),
             "imagenet-a": _tree(tmp_path / "imagenet-a", IMAGENET_A_WNIDS, IMAGENET_A_WNIDS[:2], ".jpg"),
             "imagenet-r": _tree(tmp_path / "imagenet-r", IMAGENET_R_WNIDS, IMAGENET_R_WNIDS[:2], ".jpg")}
    plan = Plan(RunConfig(suite="paper-fan", models=["fan_tiny_12_p16_224", "rpc_fan_tiny_12_p16_224"],
                          data_roots=roots, device="cpu", out=tmp_path / "out"), log=lambda *_: None)
    assert [(e.kind, e.name, e.dataset) for e in plan.evals] == [
        ("clean", "clean", "imagenet"), ("shift", "imagenet-r", "imagenet-r"), ("shift", "imagenet-a", "imagenet-a"),
        ("attack", "fgsm", "imagenet"), ("attack", "pgd", "imagenet")]
    # the paper preset's FGSM / PGD rows at its largest budget, parameter for parameter
    paper = [s for s in get_preset("paper") if s["name"] in ("fgsm", "pgd") and s["eps"] == max(
        p["eps"] for p in get_preset("paper") if p["name"] == "pgd")]
    assert [{"name": e.name, **e.params} for e in plan.evals if e.kind == "attack"] == paper
    assert paper[0]["eps"] == pytest.approx(6 / 255) and paper[1]["space"] == "normalized"
    assert {len(plan.dataset_for(e)) for e in plan.evals} == {4}
    assert plan.data_config["input_size"] == (3, 224, 224) and plan.data_config["crop_pct"] == 1.0
    assert plan.data_config["interpolation"] == "bicubic"
