"""Segmenter models: every registered one builds, runs forward and backward to per-pixel logits; every ViT
backbone family and a plug-in attention variant drive it unchanged; a state dict in Segmenter's own key layout
loads strictly and gives the logits Segmenter's forward (written out plainly below) gives."""

import pytest
import torch
import torch.nn.functional as F

import robustbench_rpc
from robustbench_rpc.attention import (
    SymmetricAttention, get_attention, list_attentions, patch_attention, register_attention,
)
from robustbench_rpc.cli.commands import main
from robustbench_rpc.models import MODELS, CheckpointError, create_model, load_model
from robustbench_rpc.models.contract import ModelContractError, task_of

SEGMENTERS = [n for n in robustbench_rpc.list_models() if MODELS.get(n).task == "segmentation"]
# ViT-tiny shapes at 32 px, for the full-size models (their own sizes are exercised by `models` on meta)
SHRUNK = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)


@register_attention("test_seg_counting")
class CountingAttention(SymmetricAttention):
    """A plug-in variant: symmetric attention that counts its calls (a variant of one's own, plugged in)."""

    calls = 0

    def mix(self, k, v):
        type(self).calls += 1
        return super().mix(k, v)


def _check_forward_backward(model, x, classes):
    x = x.clone().requires_grad_(True)
    out = model(x)
    assert out.shape == (x.shape[0], classes, *x.shape[-2:]) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.randint(0, classes, (x.shape[0], *x.shape[-2:]))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_segmentation_models_registered_with_task():
    assert {"segmenter_linear_symvit_micro", "segmenter_mask_rpc_symvit_micro", "segmenter_mask_vit_tiny",
            "segmenter_linear_rpc_symvit_tiny"} <= set(SEGMENTERS)
    assert MODELS.get("symvit_micro_patch4_32").task == "classification"


@pytest.mark.parametrize("name", SEGMENTERS)
def test_every_segmentation_model_builds_forward_backward(name):
    torch.manual_seed(0)
    micro = name.endswith("_micro")
    model = create_model(name, **({} if micro else SHRUNK)).train()
    size = 64 if micro else 32
    _check_forward_backward(model, torch.randn(2, 3, size, size), 11 if micro else 5)
    cfg = model.pretrained_cfg
    assert cfg["task"] == "segmentation" and cfg["input_size"] == (3, size, size)


def test_micro_models_load_on_unit_images_with_their_contract():
    w = load_model("segmenter_mask_rpc_symvit_micro")
    assert task_of(w) == "segmentation" and w.num_classes == 11
    assert w.data_config["input_size"] == (3, 64, 64) and w.data_config["interpolation"] == "bilinear"
    assert w(torch.rand(1, 3, 64, 64)).shape == (1, 11, 64, 64)
    assert task_of(load_model("symvit_micro_patch4_32")) == "classification"


def test_rpc_arguments_reach_the_encoder():
    m = create_model("segmenter_linear_rpc_symvit_micro", rpc_iters=2, rpc_layers="all", rpc_lambda=3.0)
    kinds = {type(b.attn).__name__ for b in m.encoder.blocks}
    assert kinds == {"RPCAttention"}
    assert all(b.attn.n_iter == 2 for b in m.encoder.blocks)
    first = create_model("segmenter_linear_rpc_symvit_micro")
    assert [type(b.attn).__name__ for b in first.encoder.blocks][:2] == ["RPCAttention", "SymmetricAttention"]


# one backbone per registered ViT family (and timm's), shrunk; FAN's conv stem takes patch 16
BACKBONES = {
    "symvit_tiny_patch16_224": dict(SHRUNK),
    "rpc_symvit_tiny_patch16_224": dict(SHRUNK, rpc_iters=2, rpc_layers="all"),
    "rpc_keyscale_symvit_micro_patch4_32": {},
    "scaled_vit_tiny_patch16_224": dict(SHRUNK),
    "vit_micro_patch4_32": {},
    "fan_tiny_12_p16_224": dict(img_size=32, embed_dim=48, depth=1, num_heads=4, num_classes=5),
    "rpc_fan_tiny_12_p16_224": dict(img_size=32, embed_dim=48, depth=1, num_heads=4, num_classes=5),
    "timm:vit_tiny_patch16_224": dict(SHRUNK),
    "timm:deit_tiny_patch16_224": dict(SHRUNK),
}


def test_every_registered_vit_family_is_covered():
    families = {MODELS.get(n).attention for n in robustbench_rpc.list_models()
                if MODELS.get(n).task == "classification" and MODELS.get(n).attention != "custom"}
    covered = {MODELS.get(n).attention for n in BACKBONES if n in MODELS}
    assert families <= covered, families - covered


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_every_backbone_family_drives_both_decoders(backbone, decoder):
    torch.manual_seed(0)
    kwargs = dict(BACKBONES[backbone])
    size = kwargs.get("img_size", 64)
    kwargs["num_classes"] = 5
    model = create_model(f"segmenter_{decoder}_symvit_micro", backbone=backbone, **kwargs).train()
    _check_forward_backward(model, torch.randn(2, 3, size, size), 5)
    assert model.pretrained_cfg["backbone"] == backbone


def test_timm_backbone_brings_its_own_normalization():
    m = create_model("segmenter_linear_symvit_micro", backbone="timm:vit_tiny_patch16_224", **SHRUNK)
    assert tuple(m.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)


def test_plug_in_attention_variant_plugs_in_unchanged():
    m = create_model("segmenter_mask_symvit_micro").eval()
    x = torch.randn(1, 3, 64, 64)
    before = m(x)
    patch_attention(m, "test_seg_counting", layers="all")  # the encoder's blocks; the decoder keeps softmax
    assert all(isinstance(b.attn, CountingAttention) for b in m.encoder.blocks)
    assert not any(isinstance(b.attn, CountingAttention) for b in m.decoder.blocks)
    CountingAttention.calls = 0
    torch.testing.assert_close(m(x), before)  # same weights, same maths: the variant changed nothing else
    assert CountingAttention.calls == len(m.encoder.blocks)
    # and as the backbone's constructor argument, as timm takes attention
    built = create_model("segmenter_linear_symvit_micro", attn_layer=CountingAttention)
    assert all(isinstance(b.attn, CountingAttention) for b in built.encoder.blocks)


@pytest.mark.parametrize("variant", list_attentions())
def test_every_registered_attention_variant_drives_a_segmenter(variant):
    """Each variant patched into a Segmenter's encoder (on the variant's own host backbone where it lives in
    another block kind): finite per-pixel logits, gradients to the input and to the variant's weights."""
    torch.manual_seed(0)
    cls = get_attention(variant)
    host = getattr(cls, "host_model", "symvit_micro_patch4_32")
    kwargs = dict(getattr(cls, "host_kwargs", None) or dict(embed_dim=32, depth=2, num_heads=2))
    kwargs.pop("num_classes", None)
    kwargs.setdefault("img_size", 32)
    model = create_model("segmenter_mask_symvit_micro", backbone=host, num_classes=3, **kwargs).train()
    patch_attention(model, variant, allow_reinit=True)
    side = kwargs["img_size"]
    _check_forward_backward(model, torch.rand(2, 3, side, side), 3)
    attn = [m for m in model.encoder.modules() if isinstance(m, cls)]
    assert attn and any(p.grad is not None and p.grad.abs().sum() > 0 for m in attn for p in m.parameters())


def test_wrong_backbone_and_size_are_one_line_errors():
    with pytest.raises(ValueError, match="segmentation model, not a ViT backbone"):
        create_model("segmenter_linear_symvit_micro", backbone="segmenter_mask_symvit_micro")
    with pytest.raises(ValueError, match="sliding windows"):
        create_model("segmenter_linear_symvit_micro")(torch.randn(1, 3, 96, 96))


# ---- Segmenter's own layout and forward (rstrudel/segmenter segm/model/{vit,blocks,decoder,segmenter}.py)

def _segmenter_state_dict(depth, dim, heads_mlp, patch, grid, n_cls, dec_layers, gen):
    """Keys and shapes as Segmenter's modules name them (VisionTransformer with its 1000-class head,
    MaskTransformer), random values."""
    r = lambda *s: torch.randn(*s, generator=gen) * 0.2  # noqa: E731
    sd = {"encoder.cls_token": r(1, 1, dim), "encoder.pos_embed": r(1, grid * grid + 1, dim),
          "encoder.patch_embed.proj.weight": r(dim, 3, patch, patch), "encoder.patch_embed.proj.bias": r(dim),
          "encoder.norm.weight": 1 + r(dim), "encoder.norm.bias": r(dim),
          "encoder.head.weight": r(1000, dim), "encoder.head.bias": r(1000)}

    def block(prefix):
        for n in ("norm1", "norm2"):
            sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = 1 + r(dim), r(dim)
        for n, (o, i) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim), "mlp.fc1": (heads_mlp, dim),
                          "mlp.fc2": (dim, heads_mlp)}.items():
            sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = r(o, i), r(o)

    for i in range(depth):
        block(f"encoder.blocks.{i}")
    for i in range(dec_layers):
        block(f"decoder.blocks.{i}")
    sd.update({"decoder.cls_emb": r(1, n_cls, dim), "decoder.proj_dec.weight": r(dim, dim),
               "decoder.proj_dec.bias": r(dim), "decoder.proj_patch": r(dim, dim), "decoder.proj_classes": r(dim, dim),
               "decoder.decoder_norm.weight": 1 + r(dim), "decoder.decoder_norm.bias": r(dim),
               "decoder.mask_norm.weight": 1 + r(n_cls), "decoder.mask_norm.bias": r(n_cls)})
    return sd


def _segmenter_forward(sd, im, patch, heads, dec_heads, depth, dec_layers, n_cls):
    """Segmenter.forward with its own modules' maths (nn.LayerNorm eps 1e-5 throughout, exact GELU)."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)  # noqa: E731
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd[p + ".bias"]  # noqa: E731

    def block(x, p, h):
        B, N, C = x.shape
        qkv = lin(ln(x, p + ".norm1"), p + ".attn.qkv").reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // h) ** -0.5).softmax(-1)
        x = x + lin((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C), p + ".attn.proj")
        return x + lin(F.gelu(lin(ln(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")

    B, _, H, W = im.shape
    x = F.conv2d(im, sd["encoder.patch_embed.proj.weight"], sd["encoder.patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["encoder.cls_token"].expand(B, -1, -1), x], 1) + sd["encoder.pos_embed"]
    for i in range(depth):
        x = block(x, f"encoder.blocks.{i}", heads)
    x = ln(x, "encoder.norm")[:, 1:]
    x = lin(x, "decoder.proj_dec")
    x = torch.cat([x, sd["decoder.cls_emb"].expand(B, -1, -1)], 1)
    for i in range(dec_layers):
        x = block(x, f"decoder.blocks.{i}", dec_heads)
    x = ln(x, "decoder.decoder_norm")
    patches, cls = x[:, :-n_cls] @ sd["decoder.proj_patch"], x[:, -n_cls:] @ sd["decoder.proj_classes"]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    cls = cls / cls.norm(dim=-1, keepdim=True)
    masks = ln(patches @ cls.transpose(1, 2), "decoder.mask_norm")
    gs = H // patch
    masks = masks.transpose(1, 2).reshape(B, n_cls, gs, W // patch)
    return F.interpolate(masks, size=(H, W), mode="bilinear")


def test_segmenter_checkpoint_layout_loads_strictly_and_matches_its_forward(tmp_path):
    gen = torch.Generator().manual_seed(0)
    dim, depth, patch, size, n_cls = 64, 2, 8, 32, 6
    sd = _segmenter_state_dict(depth, dim, 4 * dim, patch, size // patch, n_cls, 2, gen)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": sd, "epoch": 63}, path)  # Segmenter's train.py saves {"model": ..., "epoch": ...}
    model = load_model("segmenter_mask_vit_tiny", checkpoint=path, img_size=size, patch_size=patch,
                       embed_dim=dim, depth=depth, num_heads=2, num_classes=n_cls)
    assert model.data_config["input_size"] == (3, size, size)
    x = torch.rand(2, 3, size, size)
    mean = torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
    ref = _segmenter_forward(sd, (x - mean) / std, patch, 2, max(1, dim // 64), depth, 2, n_cls)
    torch.testing.assert_close(model(x), ref, atol=2e-5, rtol=1e-4)

    bad = dict(sd)
    del bad["decoder.proj_patch"]
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys.*decoder.proj_patch"):
        load_model("segmenter_mask_vit_tiny", checkpoint=tmp_path / "bad.pth", img_size=size, patch_size=patch,
                   embed_dim=dim, depth=depth, num_heads=2, num_classes=n_cls)
    bare = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    torch.save(bare, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="not a Segmenter checkpoint"):
        load_model("segmenter_mask_vit_tiny", checkpoint=tmp_path / "vit.pth", img_size=size, patch_size=patch,
                   embed_dim=dim, depth=depth, num_heads=2, num_classes=n_cls)


def test_own_segmentation_model_registers_with_task(capsys):
    from robustbench_rpc import register_model

    @register_model("test_seg_own_conv", task="segmentation", input_size=(3, 16, 16), mean=(0.5,) * 3,
                    std=(0.25,) * 3, num_classes=3)
    def own(**kwargs):
        return torch.nn.Conv2d(3, 3, 3, padding=1)

    w = load_model("test_seg_own_conv")
    assert task_of(w) == "segmentation" and w(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ModelContractError, match="task 'detection'"):
        register_model("test_seg_bad_task", task="detection", input_size=16, mean=0.5, std=0.5, num_classes=2)
    assert main(["models", "test_seg_own*"]) == 0
    assert main(["models", "segmenter_*_micro"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines()]
    assert lines[0][:2] == ["name", "task"]
    rows = {ln[0]: ln[1] for ln in lines if ln and (ln[0].startswith("segmenter_") or ln[0].startswith("test_seg"))}
    assert rows == {"test_seg_own_conv": "segmentation", "segmenter_linear_rpc_symvit_micro": "segmentation",
                    "segmenter_linear_symvit_micro": "segmentation", "segmenter_mask_rpc_symvit_micro": "segmentation",
                    "segmenter_mask_symvit_micro": "segmentation"}


# ---- mmsegmentation's layout and forward (mmseg backbones/vit.py, decode_heads/segmenter_mask_head.py, FCNHead)

def _mmseg_state_dict(depth, dim, patch, grid, n_cls, dec_layers, gen, mask=True):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.2  # noqa: E731
    sd = {"backbone.cls_token": r(1, 1, dim), "backbone.pos_embed": r(1, grid * grid + 1, dim),
          "backbone.patch_embed.projection.weight": r(dim, 3, patch, patch),
          "backbone.patch_embed.projection.bias": r(dim), "backbone.ln1.weight": 1 + r(dim),
          "backbone.ln1.bias": r(dim),
          "decode_head.conv_seg.weight": r(n_cls, dim, 1, 1), "decode_head.conv_seg.bias": r(n_cls)}

    def layer(prefix):
        for n in ("ln1", "ln2"):
            sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = 1 + r(dim), r(dim)
        sd[f"{prefix}.attn.attn.in_proj_weight"], sd[f"{prefix}.attn.attn.in_proj_bias"] = r(3 * dim, dim), r(3 * dim)
        sd[f"{prefix}.attn.attn.out_proj.weight"], sd[f"{prefix}.attn.attn.out_proj.bias"] = r(dim, dim), r(dim)
        sd[f"{prefix}.ffn.layers.0.0.weight"], sd[f"{prefix}.ffn.layers.0.0.bias"] = r(4 * dim, dim), r(4 * dim)
        sd[f"{prefix}.ffn.layers.1.weight"], sd[f"{prefix}.ffn.layers.1.bias"] = r(dim, 4 * dim), r(dim)

    for i in range(depth):
        layer(f"backbone.layers.{i}")
    if mask:
        for i in range(dec_layers):
            layer(f"decode_head.layers.{i}")
        sd.update({"decode_head.dec_proj.weight": r(dim, dim), "decode_head.dec_proj.bias": r(dim),
                   "decode_head.cls_emb": r(1, n_cls, dim), "decode_head.patch_proj.weight": r(dim, dim),
                   "decode_head.classes_proj.weight": r(dim, dim),
                   "decode_head.decoder_norm.weight": 1 + r(dim), "decode_head.decoder_norm.bias": r(dim),
                   "decode_head.mask_norm.weight": 1 + r(n_cls), "decode_head.mask_norm.bias": r(n_cls)})
    return sd


def _mmseg_forward(sd, im, patch, heads, dec_heads, depth, dec_layers, n_cls, mask=True):
    """EncoderDecoder.forward of mmseg's Segmenter: LN eps 1e-6 in the backbone (its config), 1e-5 in the head;
    attention through torch's multi_head_attention_forward, as nn.MultiheadAttention runs it."""
    ln = lambda x, p, eps: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)  # noqa: E731

    def layer(x, p, h, eps):
        y = ln(x, p + ".ln1", eps).transpose(0, 1)
        out, _ = F.multi_head_attention_forward(
            y, y, y, x.shape[-1], h, sd[p + ".attn.attn.in_proj_weight"], sd[p + ".attn.attn.in_proj_bias"],
            None, None, False, 0.0, sd[p + ".attn.attn.out_proj.weight"], sd[p + ".attn.attn.out_proj.bias"],
            training=False, need_weights=False)
        x = x + out.transpose(0, 1)
        y = F.gelu(F.linear(ln(x, p + ".ln2", eps), sd[p + ".ffn.layers.0.0.weight"], sd[p + ".ffn.layers.0.0.bias"]))
        return x + F.linear(y, sd[p + ".ffn.layers.1.weight"], sd[p + ".ffn.layers.1.bias"])

    B, _, H, W = im.shape
    x = F.conv2d(im, sd["backbone.patch_embed.projection.weight"], sd["backbone.patch_embed.projection.bias"],
                 stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd["backbone.cls_token"].expand(B, -1, -1), x], 1) + sd["backbone.pos_embed"]
    for i in range(depth):
        x = layer(x, f"backbone.layers.{i}", heads, 1e-6)
    x = ln(x, "backbone.ln1", 1e-6)[:, 1:]
    h, w = H // patch, W // patch
    if not mask:
        feat = x.transpose(1, 2).reshape(B, -1, h, w)
        logits = F.conv2d(feat, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    x = F.linear(x, sd["decode_head.dec_proj.weight"], sd["decode_head.dec_proj.bias"])
    x = torch.cat([x, sd["decode_head.cls_emb"].expand(B, -1, -1)], 1)
    for i in range(dec_layers):
        x = layer(x, f"decode_head.layers.{i}", dec_heads, 1e-5)
    x = ln(x, "decode_head.decoder_norm", 1e-5)
    patches = F.linear(x[:, :-n_cls], sd["decode_head.patch_proj.weight"])
    cls = F.linear(x[:, -n_cls:], sd["decode_head.classes_proj.weight"])
    patches, cls = patches / patches.norm(dim=-1, keepdim=True), cls / cls.norm(dim=-1, keepdim=True)
    masks = ln(patches @ cls.transpose(1, 2), "decode_head.mask_norm", 1e-5)
    masks = masks.permute(0, 2, 1).reshape(B, n_cls, h, w)
    return F.interpolate(masks, size=(H, W), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("decoder", ["mask", "linear"])
def test_mmsegmentation_checkpoint_layout_loads_and_matches_its_forward(tmp_path, decoder):
    gen = torch.Generator().manual_seed(1)
    dim, depth, patch, size, n_cls = 64, 2, 8, 32, 5
    mask = decoder == "mask"
    sd = _mmseg_state_dict(depth, dim, patch, size // patch, n_cls, 2, gen, mask=mask)
    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd}, path)  # mmengine's checkpoint layout
    model = load_model(f"segmenter_{decoder}_vit_tiny", checkpoint=path, img_size=size, patch_size=patch,
                       embed_dim=dim, depth=depth, num_heads=2, num_classes=n_cls)
    x = torch.rand(2, 3, size, size)
    mean = torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
    ref = _mmseg_forward(sd, (x - mean) / std, patch, 2, max(1, dim // 64), depth, 2, n_cls, mask=mask)
    torch.testing.assert_close(model(x), ref, atol=2e-5, rtol=1e-4)
    del sd["backbone.ln1.weight"]
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys.*encoder.norm.weight"):
        load_model(f"segmenter_{decoder}_vit_tiny", checkpoint=tmp_path / "bad.pth", img_size=size, patch_size=patch,
                   embed_dim=dim, depth=depth, num_heads=2, num_classes=n_cls)


def test_saved_segmenter_loads_back_through_the_user_path(tmp_path):
    from robustbench_rpc.models import save_checkpoint

    torch.manual_seed(3)
    model = load_model("segmenter_mask_rpc_symvit_micro", rpc_iters=2)
    path = save_checkpoint(model, tmp_path / "seg.safetensors")
    again = load_model("segmenter_mask_rpc_symvit_micro", checkpoint=path, rpc_iters=2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_a_segmentation_model_in_a_classification_run_is_one_line(tmp_path, capsys):
    code = main(["run", "--suite", "smoke", "--model", "segmenter_linear_symvit_micro", "--limit", "2",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model segmenter_linear_symvit_micro is a segmentation model (per-pixel logits)")
