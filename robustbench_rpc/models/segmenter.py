"""Segmenter (Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021) on any registered ViT.

Written from a reading of rstrudel/segmenter (``segm/model/segmenter.py``, ``decoder.py``, ``factory.py``,
``blocks.py``; MIT licence; nothing copied). A Segmenter is a ViT encoder whose patch tokens (class/extra tokens
dropped) go to a decoder that returns one map per class on the patch grid, bilinearly upsampled to the image:

- ``linear`` (``DecoderLinear``): a linear layer per patch token -> class logits.
- ``mask`` (``MaskTransformer``): the tokens are projected (``proj_dec``), ``num_classes`` learned class
  embeddings (``cls_emb``) are appended, ``decoder_layers`` transformer blocks (2 in Segmenter's config; heads =
  dim // 64, MLP 4 * dim) run over both, then patch and class embeddings are projected (``proj_patch``,
  ``proj_classes``), L2-normalised, and their dot products, LayerNorm-ed over classes (``mask_norm``), are the
  masks.

The encoder is the registered backbone as its own factory builds it (``symvit_*``, ``rpc_symvit_*`` with
``rpc_iters`` / ``rpc_layers`` / ``rpc_lambda`` as model arguments, FAN, ``timm:<vit>``, ``attn_layer=`` for any
attention class), its classifier removed. Attention stays the backbone's: the encoder's ``blocks`` are this
model's ``blocks``, so ``patch_attention`` (``--attention NAME``) swaps a variant into the encoder unchanged and
leaves the decoder's (softmax, as in Segmenter) alone.

Parameter names are Segmenter's (``encoder.*`` = timm's ViT names, ``decoder.*``), so its released
``checkpoint.pth`` files load strictly where the architecture matches (a non-distilled ViT encoder, e.g.
``segmenter_mask_vit_tiny`` = Seg-T-Mask/16). Their ``encoder.head.*`` (the ImageNet classifier, never used for
segmentation) is dropped by :meth:`Segmenter.adapt_state_dict`; every other key must match. mmsegmentation's
Segmenter checkpoints (``backbone.*`` / ``decode_head.*``) are renamed to these names first
(:func:`from_mmseg_layout`). The
``segmenter_*_vit_*`` models set the encoder's LayerNorm eps to Segmenter's 1e-5 (timm's ViTs, and so the other
backbones, keep 1e-6: ``layer_norm_eps`` changes it). One difference from Segmenter's encoder, stated rather than
hidden: an input must have the backbone's size (Segmenter resizes its position embeddings on the fly); the
sliding-window evaluation feeds windows of exactly ``input_size``.

Models take normalized images (the [0, 1] wrapper of ``load_model`` normalizes) and return per-pixel logits
``(B, num_classes, H, W)`` at the input's resolution; their contract declares ``task = "segmentation"``.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import register_model as timm_register_model
from timm.models.vision_transformer import Block
from torch import nn

from .checkpoint import CheckpointError
from .loading import create_model
from .vit import MODELS, ModelEntry

DECODERS = ("linear", "mask")
#: Mean/std of the embedded segmentation set (digit canvases, data/segmentation.py), measured on its train split.
DIGITS_SEG_MEAN = (0.1121, 0.1121, 0.1121)
DIGITS_SEG_STD = (0.2465, 0.2465, 0.2465)
#: ADE20K's 150 classes (label 0 "other" ignored, mmsegmentation's reduce_zero_label) at Segmenter's 512 px
ADE20K_CLASSES = 150


def _init_weights(m: nn.Module) -> None:
    """Segmenter's ``init_weights``: truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class LinearDecoder(nn.Module):
    """Segmenter's ``DecoderLinear``: class logits per patch token, on the patch grid."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, _ = tokens.shape
        return self.head(tokens).transpose(1, 2).reshape(B, -1, *grid)


class MaskTransformer(nn.Module):
    """Segmenter's ``MaskTransformer``: class embeddings decoded jointly with the patch tokens; the masks are
    the cosine similarities of projected patch and class embeddings, LayerNorm-ed over classes."""

    def __init__(self, embed_dim: int, num_classes: int, *, layers: int = 2, heads: int | None = None,
                 dim: int | None = None, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        dim = dim or embed_dim
        heads = heads or max(1, dim // 64)  # Segmenter: n_heads = d_encoder // 64
        if dim % heads:
            raise ValueError(f"mask decoder: dim {dim} is not divisible by {heads} heads (decoder_heads)")
        self.num_classes = num_classes
        rates = [drop_path * i / (layers - 1) if layers > 1 else 0.0 for i in range(layers)]  # Segmenter's linspace
        self.blocks = nn.ModuleList([
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout, drop_path=rate,
                  norm_layer=nn.LayerNorm) for rate in rates])
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, dim))
        self.proj_dec = nn.Linear(embed_dim, dim)
        scale = dim ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(scale * torch.randn(dim, dim))
        self.decoder_norm = nn.LayerNorm(dim)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.apply(_init_weights)
        trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.proj_dec(tokens)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches = x[:, :-self.num_classes] @ self.proj_patch
        classes = x[:, -self.num_classes:] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, N, classes)
        return masks.transpose(1, 2).reshape(masks.shape[0], -1, *grid)


def _patch_size(encoder: nn.Module) -> tuple[int, int]:
    size = getattr(getattr(encoder, "patch_embed", None), "patch_size", None)
    if size is None:
        raise TypeError(f"{type(encoder).__name__} has no patch_embed.patch_size: a Segmenter encoder must be a ViT "
                        "with a patch embedding (timm's VisionTransformer, SymViT, FAN ...)")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Segmenter(nn.Module):
    """ViT encoder + Segmenter decoder -> per-pixel logits ``(B, num_classes, H, W)`` at the input resolution."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.num_classes = num_classes
        self.patch_size = _patch_size(encoder)

    # the encoder's blocks and patch embedding are the model's: attention patching, diagnostics and the
    # contract's input size (models.data_config_of) see the backbone
    @property
    def blocks(self) -> nn.Module:
        return self.encoder.blocks

    @property
    def patch_embed(self) -> nn.Module:
        return self.encoder.patch_embed

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.encoder, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        pad_h, pad_w = -H % ph, -W % pw  # Segmenter pads to a multiple of the patch size, crops the logits
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        expected = getattr(self.encoder.patch_embed, "img_size", None)
        if expected is not None and getattr(self.encoder.patch_embed, "strict_img_size", False) \
                and tuple(x.shape[-2:]) != tuple(expected):
            raise ValueError(f"this Segmenter's encoder takes {expected[0]}x{expected[1]} images (its input_size), "
                             f"got {H}x{W}: evaluate larger images with sliding windows of the input size")
        tokens = self.encoder.forward_features(x)[:, self.num_prefix_tokens:]
        grid = (x.shape[-2] // ph, x.shape[-1] // pw)
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"the encoder returned {tokens.shape[1]} patch tokens for a {grid[0]}x{grid[1]} grid")
        masks = self.decoder(tokens, grid)
        masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return masks[:, :, :H, :W]

    def adapt_state_dict(self, sd: Mapping[str, torch.Tensor], path: Any) -> dict[str, torch.Tensor]:
        """Segmenter's checkpoints keep the encoder's ImageNet classifier (``encoder.head.*``), which
        segmentation never uses: it is dropped; every other key is matched strictly. An mmsegmentation
        checkpoint (``backbone.*`` / ``decode_head.*``) is renamed first (:func:`from_mmseg_layout`) and the
        encoder's LayerNorms take mmseg's eps 1e-6. A file of another layout (e.g. a bare ViT) is refused in
        one line."""
        if any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd):
            sd = from_mmseg_layout(sd, isinstance(self.decoder, MaskTransformer), path)
            for m in self.encoder.modules():  # mmseg's Segmenter configs: backbone LN eps 1e-6
                if isinstance(m, nn.LayerNorm):
                    m.eps = 1e-6
        if not any(k.startswith(("encoder.", "decoder.")) for k in sd):
            first = ", ".join(list(sd)[:4])
            raise CheckpointError(f"{path} is not a Segmenter checkpoint (no encoder.* / decoder.* keys, nor "
                                  f"mmsegmentation's backbone.* / decode_head.*; first keys: {first}); a backbone's "
                                  "weights load into the backbone model")
        own = self.state_dict()
        return {k: v for k, v in sd.items() if not (k.startswith("encoder.head.") and k not in own)}


#: mmsegmentation's TransformerEncoderLayer names -> timm's Block names (mmcv MultiheadAttention wraps
#: nn.MultiheadAttention, whose in_proj is q, k, v stacked as timm's qkv; FFN layers.0.0 / layers.1 = fc1 / fc2)
_MMSEG_BLOCK = (("ln1.", "norm1."), ("ln2.", "norm2."), ("attn.attn.in_proj_weight", "attn.qkv.weight"),
                ("attn.attn.in_proj_bias", "attn.qkv.bias"), ("attn.attn.out_proj.", "attn.proj."),
                ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2."))


def from_mmseg_layout(sd: Mapping[str, torch.Tensor], mask_head: bool, path: Any = "<checkpoint>"
                      ) -> dict[str, torch.Tensor]:
    """An mmsegmentation Segmenter state dict (``VisionTransformer`` backbone with ``final_norm``, and
    ``SegmenterMaskTransformerHead`` or ``FCNHead`` with ``num_convs=0`` for the linear decoder; read from
    mmseg's ``backbones/vit.py``, ``decode_heads/segmenter_mask_head.py`` and ``configs/_base_/models/
    segmenter_vit-b16_mask.py``) in this module's names. The mask head's bias-free ``patch_proj`` /
    ``classes_proj`` Linear weights are transposed into Segmenter's matrices; its unused ``conv_seg`` (every
    mmseg decode head has one) is dropped. Keys it does not know are kept as they are, so the strict match
    names them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        if key.startswith(("backbone.layers.", "decode_head.layers.")):
            head, _, rest = key.partition(".layers.")
            index, _, name = rest.partition(".")
            for old, ours in _MMSEG_BLOCK:
                if name.startswith(old):
                    name = ours + name[len(old):]
                    break
            new = f"{'encoder' if head == 'backbone' else 'decoder'}.blocks.{index}.{name}"
        elif key.startswith("backbone."):
            name = key[len("backbone."):]
            new = "encoder." + {"ln1.weight": "norm.weight", "ln1.bias": "norm.bias"}.get(name, name)
            new = new.replace("encoder.patch_embed.projection.", "encoder.patch_embed.proj.")
        elif key.startswith("decode_head."):
            name = key[len("decode_head."):]
            if name.startswith("conv_seg."):
                if mask_head:
                    continue
                new = "decoder.head." + name[len("conv_seg."):]
                value = value.flatten(1) if value.dim() == 4 else value
            elif name in ("patch_proj.weight", "classes_proj.weight"):
                new, value = "decoder." + name.replace("patch_proj.weight", "proj_patch").replace(
                    "classes_proj.weight", "proj_classes"), value.t()
            else:
                new = "decoder." + name.replace("dec_proj.", "proj_dec.")
        out[new] = value
    if not any(k.startswith("encoder.blocks.") for k in out):
        raise CheckpointError(f"{path}: mmsegmentation layout without backbone.layers.*: not a ViT Segmenter")
    return out


def build_segmenter(backbone: str, decoder: str, num_classes: int, img_size: int | tuple[int, int], *,
                    decoder_layers: int = 2, decoder_heads: int | None = None, decoder_dropout: float = 0.0,
                    decoder_drop_path: float = 0.0, layer_norm_eps: float | None = None,
                    **backbone_kwargs: Any) -> Segmenter:
    """A Segmenter on the registered (or ``timm:``) ``backbone`` built at ``img_size`` without its classifier;
    ``backbone_kwargs`` go to the backbone's factory (``rpc_iters``, ``rpc_layers``, ``attn_layer``, ...).
    ``layer_norm_eps``: set on every encoder LayerNorm (Segmenter's own encoder: 1e-5; None keeps the
    backbone's, timm's 1e-6)."""
    if decoder not in DECODERS:
        raise ValueError(f"Segmenter decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if backbone in MODELS and MODELS.get(backbone).task != "classification":
        raise ValueError(f"backbone '{backbone}' is a {MODELS.get(backbone).task} model, not a ViT backbone")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    encoder = create_model(backbone, img_size=img_size, num_classes=0, **backbone_kwargs)
    if not hasattr(encoder, "forward_features") or not hasattr(encoder, "blocks"):
        raise TypeError(f"backbone '{backbone}' ({type(encoder).__name__}) is not a ViT with blocks and "
                        "forward_features")
    if layer_norm_eps is not None:
        for m in encoder.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = float(layer_norm_eps)
    dim = int(getattr(encoder, "embed_dim", 0) or getattr(encoder, "num_features"))
    if decoder == "linear":
        head: nn.Module = LinearDecoder(dim, num_classes)
    else:
        head = MaskTransformer(dim, num_classes, layers=decoder_layers, heads=decoder_heads,
                               dropout=decoder_dropout, drop_path=decoder_drop_path)
    return Segmenter(encoder, head, num_classes)


def _register(name: str, backbone: str, decoder: str, cfg: dict[str, Any], notes: str, **defaults: Any) -> None:
    """Register ``name``: a Segmenter whose contract is ``cfg`` (input_size = the window) with ``task`` set."""
    cfg = dict(cfg, task="segmentation", crop_pct=1.0, crop_mode="center", first_conv="encoder.patch_embed.proj",
               classifier="decoder", architecture=name)

    def factory(pretrained: bool = False, **kwargs: Any) -> Segmenter:
        if pretrained:
            raise ValueError(f"{name}: robustbench-rpc downloads nothing; load Segmenter's released file or yours "
                             f"with load_model('{name}', checkpoint=PATH) or --model {name}:PATH")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        kwargs = {**defaults, **kwargs}
        chosen = kwargs.pop("backbone", backbone)
        classes = kwargs.pop("num_classes", cfg["num_classes"])
        size = kwargs.pop("img_size", cfg["input_size"][-1])
        model = build_segmenter(chosen, decoder, classes, size, **kwargs)
        own = dict(cfg)
        if chosen != backbone:  # another backbone brings its own normalization
            enc = getattr(model.encoder, "pretrained_cfg", None) or {}
            own.update({k: enc[k] for k in ("mean", "std", "interpolation") if enc.get(k) is not None})
        side = tuple(model.patch_embed.img_size) if getattr(model.patch_embed, "img_size", None) else (size, size)
        model.pretrained_cfg = model.default_cfg = dict(own, num_classes=classes, input_size=(3, *side),
                                                        backbone=chosen, decoder=decoder)
        return model

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = notes
    setattr(sys.modules[__name__], name, factory)
    timm_register_model(factory)
    MODELS.add(name, ModelEntry(name, factory, MODELS.get(backbone).attention if backbone in MODELS else "softmax",
                                notes, cfg, defaults, "", "segmentation"))


_DECODER_NOTE = {"linear": "linear decoder", "mask": "mask-transformer decoder (2 layers)"}
_MICRO = dict(input_size=(3, 64, 64), mean=DIGITS_SEG_MEAN, std=DIGITS_SEG_STD, interpolation="bilinear",
              num_classes=11, dataset="digits-seg64")
_ADE = dict(input_size=(3, 512, 512), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation="bilinear",
            num_classes=ADE20K_CLASSES, dataset="ade20k")
_VIT_ADE = dict(_ADE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # Segmenter's "vit" normalization

for _dec in DECODERS:
    _register(f"segmenter_{_dec}_symvit_micro", "symvit_micro_patch4_32", _dec, _MICRO,
              f"embedded: Segmenter ({_DECODER_NOTE[_dec]}) on SymViT micro, 64x64 digit canvases, 11 classes")
    _register(f"segmenter_{_dec}_rpc_symvit_micro", "rpc_symvit_micro_patch4_32", _dec, _MICRO,
              f"embedded: Segmenter ({_DECODER_NOTE[_dec]}) on RPC-SymViT micro (4 iters, first layer; "
              "rpc_iters / rpc_layers / rpc_lambda as model arguments), 64x64, 11 classes")
    for _size in ("tiny", "small", "base"):
        _register(f"segmenter_{_dec}_symvit_{_size}", f"symvit_{_size}_patch16_224", _dec, _ADE,
                  f"Segmenter ({_DECODER_NOTE[_dec]}) on SymViT-{_size}, ADE20K: 512 px windows, 150 classes")
        _register(f"segmenter_{_dec}_rpc_symvit_{_size}", f"rpc_symvit_{_size}_patch16_224", _dec, _ADE,
                  f"Segmenter ({_DECODER_NOTE[_dec]}) on RPC-SymViT-{_size} (rpc_iters / rpc_layers / rpc_lambda "
                  "as model arguments), ADE20K: 512 px windows, 150 classes")
        _register(f"segmenter_{_dec}_vit_{_size}", f"timm:vit_{_size}_patch16_384", _dec, _VIT_ADE,
                  f"Segmenter's Seg-{_size[0].upper()}{'-Mask' if _dec == 'mask' else ''}/16 layout (timm "
                  f"vit_{_size}_patch16_384 encoder at 512 px, 150 classes)"
                  + (": its released ADE20K checkpoint.pth loads" if _dec == "mask" else ""), layer_norm_eps=1e-5)
