"""FAN-ViT (Zhou et al., "Understanding The Robustness in Vision Transformers", ICML 2022) and RPC-FAN.

Written from a reading of NVlabs/FAN ``models/fan.py`` (NVIDIA Source Code License-NC: read, nothing copied).
Its FAN-ViT models are a conv patch embedding (four stride-2 3x3 conv + BN, GELU between), XCiT's Fourier
position encoding, ``depth`` FAN blocks and two CaiT class-attention blocks. A FAN block is

    x = x + gamma1 * TokenMixing(LN(x))              softmax attention, q and kv projections (attention/fan.py)
    x = x + gamma2 * ChannelProcessing(LN(x), H, W)  FAN's attentional channel MLP (below)

FAN's code carries its own copies of XCiT's conv patch embedding, position encoding, class-attention block and
checkpoint filter (same layers, same parameter names); timm ships XCiT's (Apache-2.0), so those are reused
from ``timm.models.xcit`` and only FAN's own parts are written here. Parameter names are FAN's, so the
released files (``fan_vit_tiny.pth.tar`` ...: timm's training checkpoint layout, ``state_dict`` [+ ``_ema``])
load as they are; FAN's loader filter (``checkpoint_filter_fn``: ``pos_embeder.`` -> ``pos_embed.``, a
class-attention ``qkv`` split into q, k, v) runs on every file first (:meth:`FAN.adapt_state_dict`).

Contract, from FAN's ``_cfg``: 224 px, bicubic, crop_pct 1.0, ImageNet mean/std, 1000 classes.
Sizes (FAN's ``fan_*_p16_224`` factories): tiny 192 dims / 12 blocks / 4 heads, small 384 / 12 / 8,
base 448 / 18 / 8, large 480 / 24 / 10. ``rpc_fan_tiny_12_p16_224`` is FAN-tiny with ``rpc_fan`` attention
(attention/fan_rpc.py) in the paper's setting: 4 PAP iterations, lambda 4, first block.
"""
from __future__ import annotations

import inspect
import sys
from functools import partial
from typing import Any, Mapping

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model as timm_register_model
from timm.models.xcit import ClassAttentionBlock, ConvPatchEmbed, PositionalEncodingFourier
from timm.models.xcit import checkpoint_filter_fn as xcit_checkpoint_filter
from torch import nn

from ..attention import FANAttention, patch_attention
from .checkpoint import CheckpointError, describe_state_dict
from .vit import MODELS, RPC_DEFAULTS, ModelEntry

#: FAN's ``_cfg()`` (models/fan.py), the evaluation contract of every FAN-ViT
FAN_CONTRACT: dict[str, Any] = dict(
    input_size=(3, 224, 224), crop_pct=1.0, interpolation="bicubic", fixed_input_size=True,
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=1000, dataset="imagenet",
    first_conv="patch_embed.proj.0.0", classifier="head")

#: FAN-ViT sizes, as FAN's factories build them (all: patch 16, eta 1.0, tokens_norm, 2 class-attention blocks)
FAN_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=8),
    "base": dict(embed_dim=448, depth=18, num_heads=8),
    "large": dict(embed_dim=480, depth=24, num_heads=10),
}


class DepthwiseConv(nn.Module):
    """FAN's ``DWConv``: depthwise 3x3 conv, GELU, BatchNorm, depthwise 3x3 conv on the token grid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, H, W)
        grid = self.conv2(self.bn(self.act(self.conv1(grid))))
        return grid.reshape(B, C, N).transpose(1, 2)


class DepthwiseConvMlp(nn.Module):
    """FAN's ``Mlp`` (the values of channel processing): ``fc2(h + gamma * dwconv(h))`` with ``h = fc1(x)``.
    As in FAN's forward, no activation follows fc1 (its ``act`` is built but never applied)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.gamma = nn.Parameter(torch.ones(hidden))
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        h = self.fc1(x)
        h = self.drop(self.gamma * self.dwconv(h, H, W)) + h
        return self.drop(self.fc2(h))


class ChannelProcessing(nn.Module):
    """FAN's attentional channel processing. Per head, a channel weight from the tokens' softmax statistics,
    ``w = sigmoid(softmax_N(q)^T mean_d(softmax_N(x))) * temperature`` (d channels), scales the values
    ``LN(DepthwiseConvMlp(x))`` channel by channel (the keys are the input itself, not projected)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = DepthwiseConvMlp(dim, hidden, drop)
        self.norm_v = nn.LayerNorm(dim)  # FAN builds it with LayerNorm's default eps (1e-5)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(x).reshape(B, N, h, d).transpose(1, 2)
        k = x.reshape(B, N, h, d).transpose(1, 2)
        pooled = k.softmax(dim=-2).mean(dim=-1, keepdim=True)                  # (B, h, N, 1)
        weight = torch.sigmoid(q.softmax(dim=-2).transpose(-1, -2) @ pooled)    # (B, h, d, 1)
        weight = self.attn_drop(weight * self.temperature)
        v = self.norm_v(self.mlp_v(x, H, W)).reshape(B, N, h, d)
        return (v * weight.squeeze(-1).unsqueeze(1)).reshape(B, N, C)


class FANBlock(nn.Module):
    """Token mixing then channel processing, each scaled by a learned per-channel gamma (LayerScale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eta: float = 1.0,
                 attn_layer: type[nn.Module] = FANAttention) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = ChannelProcessing(dim, num_heads, int(dim * mlp_ratio), qkv_bias, attn_drop, drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), H, W))


class FAN(nn.Module):
    """FAN-ViT. ``forward_features`` returns the final-norm tokens (class token first), timm's convention;
    the logits are the head on the class token, as in FAN."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, eta: float = 1.0, tokens_norm: bool = True, cls_attn_layers: int = 2,
                 attn_layer: type[nn.Module] = FANAttention) -> None:
        super().__init__()
        if patch_size not in (8, 16):
            raise ValueError(f"FAN's conv patch embedding takes patch_size 8 or 16, got {patch_size}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = ConvPatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                          embed_dim=embed_dim, act_layer=nn.GELU)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([  # FAN gives every block the same drop-path rate
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, eta,
                     attn_layer) for _ in range(depth)])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                                attn_drop=attn_drop_rate, norm_layer=norm, eta=eta, tokens_norm=tokens_norm)
            for _ in range(cls_attn_layers)])
        self.norm = norm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x, (H, W) = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed(B, H, W).flatten(2).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, H, W)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def adapt_state_dict(self, sd: Mapping[str, torch.Tensor], path: Any) -> dict[str, torch.Tensor]:
        """FAN's loader conventions on a file's state dict (its ``checkpoint_filter_fn``, XCiT's, which timm
        ships), then a one-line refusal of a file that is not this FAN (``models.checkpoint`` calls this
        before its strict key match)."""
        sd = xcit_checkpoint_filter(dict(sd), self)
        check_fan_file(sd, self, path)
        return sd


def _init_weights(m: nn.Module) -> None:
    """FAN's initialisation of linear and LayerNorm layers (convolutions keep PyTorch's defaults)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def fan_geometry(sd: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """(embed_dim, depth, num_heads, num_classes) of a FAN-ViT state dict; None if it is not one."""
    if "blocks.0.attn.kv.weight" not in sd or "blocks.0.mlp.temperature" not in sd:
        return None
    head = sd.get("head.weight")
    return dict(embed_dim=int(sd["blocks.0.attn.q.weight"].shape[0]),
                depth=len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
                num_heads=int(sd["blocks.0.mlp.temperature"].shape[0]),
                num_classes=int(head.shape[0]) if head is not None else 0)


def check_fan_file(sd: Mapping[str, torch.Tensor], model: FAN, path: Any) -> None:
    """One :class:`CheckpointError` line when ``sd`` is not a FAN-ViT, or a FAN-ViT of another size or class
    count than ``model``; naming the file, what it holds and the registered model that fits it."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "this FAN model")
    file = fan_geometry(sd)
    if file is None:
        raise CheckpointError(f"{path} is not a FAN-ViT checkpoint (it has no blocks.0.attn.kv / blocks.0.mlp."
                              f"temperature; it looks like: {describe_state_dict(sd)}); {name} loads FAN's released "
                              "files (NVlabs/FAN: fan_vit_tiny.pth.tar, ...) or checkpoints in their layout")
    own = fan_geometry(model.state_dict())
    shape = ("embed_dim", "depth", "num_heads")
    if any(file[k] != own[k] for k in shape):
        fits = [n for n, size in FAN_SIZES.items() if all(size[k] == file[k] for k in shape)]
        advice = (f"load it as fan_{fits[0]}_{file['depth']}_p16_224" if fits
                  else "no registered FAN-ViT has that size")
        raise CheckpointError(f"{path} is a FAN-ViT with {', '.join(f'{k} {file[k]}' for k in shape)} but {name} "
                              f"has {', '.join(f'{k} {own[k]}' for k in shape)}: {advice}")
    if file["num_classes"] != own["num_classes"]:
        raise CheckpointError(f"{path} has {file['num_classes']} classes (head.weight) but {name} is built with "
                              f"{own['num_classes']}: pass --model-arg num_classes={file['num_classes']}")


_BUILD_ARGS = set(inspect.signature(FAN.__init__).parameters) - {"self", "attn_layer"}
_RPC_ARGS = ("rpc_iters", "rpc_lambda", "rpc_layers")


def _build(name: str, size: dict[str, int], attention: str, cfg: dict[str, Any], kwargs: dict[str, Any]) -> FAN:
    """A FAN-ViT of ``size`` (user kwargs win), with ``rpc_fan`` patched into the chosen blocks for RPC-FAN."""
    for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    rpc = {k: kwargs.pop(k) for k in _RPC_ARGS if k in kwargs}
    if rpc and attention != "rpc_fan":
        raise TypeError(f"rpc_* arguments {sorted(rpc)} only apply to rpc_fan_* models, not {name}")
    unknown = sorted(k for k, v in kwargs.items() if k not in _BUILD_ARGS and v is not None)
    if unknown:
        raise TypeError(f"unknown model argument(s) {unknown} for {name}; FAN accepts {sorted(_BUILD_ARGS)}")
    model = FAN(**{**size, **{k: v for k, v in kwargs.items() if v is not None}})
    if attention == "rpc_fan":
        rpc = {**RPC_DEFAULTS, **rpc}
        patch_attention(model, "rpc_fan", layers=rpc["rpc_layers"], n_iter=rpc["rpc_iters"], lam=rpc["rpc_lambda"])
    side = model.patch_embed.img_size
    model.pretrained_cfg = model.default_cfg = dict(cfg, num_classes=model.num_classes,
                                                    input_size=(kwargs.get("in_chans", 3), *side))
    return model


def _register(name: str, size: str, attention: str, notes: str, **defaults: Any) -> None:
    cfg = dict(FAN_CONTRACT, architecture=name)

    def factory(pretrained: bool = False, **kwargs: Any) -> FAN:
        if pretrained:
            raise ValueError(f"{name}: robustbench-rpc downloads nothing; build with pretrained=False and pass "
                             f"FAN's released file (load_model('{name}', checkpoint=PATH), --model {name}:PATH)")
        return _build(name, FAN_SIZES[size], attention, cfg, {**defaults, **kwargs})

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = notes
    setattr(sys.modules[__name__], name, factory)
    timm_register_model(factory)
    MODELS.add(name, ModelEntry(name, factory, attention, notes, cfg, defaults))


_PAPER = {"tiny": " (the RPC paper's FAN-tiny baseline)"}
for _size, _spec in FAN_SIZES.items():
    _register(f"fan_{_size}_{_spec['depth']}_p16_224", _size, "fan",
              f"FAN-ViT-{_size[0].upper()} (NVlabs/FAN; loads its released file){_PAPER.get(_size, '')}")
_register("rpc_fan_tiny_12_p16_224", "tiny", "rpc_fan",
          "RPC-FAN-tiny, the RPC paper's setting: PAP on FAN's keys, 4 iters, lambda 4, first block "
          "(attention/fan_rpc.py); loads FAN-tiny's file", rpc_iters=4, rpc_lambda=4.0, rpc_layers="first")
