"""SymViT / RPC-SymViT / Scaled-ViT factories, registered into timm and into our model registry.

After ``import robustbench_rpc``, ``timm.create_model('rpc_symvit_tiny_patch16_224', rpc_iters=6)`` works.
Each entry carries its evaluation contract (input size, mean/std, crop, classes) as a timm pretrained
config, so preprocessing is derived from the model, never retyped.

Sizes follow the paper's code (``Robust/models.py``): tiny 192 dims / 3 heads, base 768 / 12, and the
paper's *small* is 348 dims / 6 heads (head dim 58), not DeiT-S's 384. ``*_small_patch16_224`` is DeiT-S
(384); ``*_small_paper_patch16_224`` and the small paper presets (``rpc_symvit_small_{4,5,6}iter_layer1``,
``rpc_symvit_small_2iter_all``) are the paper's 348-dim small, so the paper's small checkpoints load into them.

Scaled Attention (``Scaled_Attention/softmax.py``): ``scaled_vit_tiny_patch16_224`` is "Scaled S" (a learned
(heads, N, N) matrix ``s`` per block), ``scaled_alpha_vit_tiny_patch16_224`` is "alpha x Asym" (one learned
scalar ``s`` per block); both are DeiT-tiny with a 3*dim qkv, as the paper trained them.

A checkpoint file carrying the paper's training ``args`` configures the model it is loaded into (PAP on/off,
iterations, lambda, layer, classes): see :func:`robustbench_rpc.models.loading.resolve_model`.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from ..attention import patch_attention
from ..attention.symmetric import SymmetricAttention
from ..registry import Registry

#: Mean/std of the embedded default (digits upsampled to 32x32 RGB), measured on its training split.
DIGITS_MEAN = (0.3057, 0.3057, 0.3057)
DIGITS_STD = (0.3240, 0.3240, 0.3240)

ARCHS: dict[str, dict[str, Any]] = {
    "tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "small_paper": dict(img_size=224, patch_size=16, embed_dim=348, depth=12, num_heads=6),
    "base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "micro": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
}


@dataclass(frozen=True)
class ModelEntry:
    """One named model: how to build it, its attention, notes for the model table and its data contract."""

    name: str
    factory: Callable[..., Any]
    attention: str
    notes: str
    cfg: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    arch: str = ""  # key of ARCHS
    task: str = "classification"  # or "segmentation": per-pixel logits (B, C, H, W)


MODELS: Registry[ModelEntry] = Registry("model")

#: What an rpc_symvit model runs when neither a preset, an argument nor a paper checkpoint's args say.
RPC_DEFAULTS: dict[str, Any] = dict(rpc_iters=4, rpc_lambda=4.0, rpc_layers="first")


def _cfg(arch: str, **overrides: Any) -> dict[str, Any]:
    a = ARCHS[arch]
    if arch == "micro":
        base = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear", mean=DIGITS_MEAN,
                    std=DIGITS_STD, num_classes=10, dataset="digits32")
    else:
        base = dict(input_size=(3, a["img_size"], a["img_size"]), crop_pct=0.875, interpolation="bicubic",
                    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=1000, dataset="imagenet")
    return base | dict(first_conv="patch_embed.proj", classifier="head") | overrides


def _build(arch: str, attention: str, pretrained_cfg: dict[str, Any], kwargs: dict[str, Any]):
    """Build a VisionTransformer with ``arch`` defaults (user kwargs win) and the chosen attention."""
    kwargs.pop("pretrained", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    given_cfg = kwargs.pop("pretrained_cfg", None)
    rpc = {k: kwargs.pop(k) for k in ("rpc_iters", "rpc_lambda", "rpc_layers") if k in kwargs}
    scaled_form = kwargs.pop("scaled_form", None)
    if scaled_form is not None and attention != "scaled":
        raise TypeError(f"scaled_form={scaled_form!r} only applies to scaled_* models")
    accepted = inspect.signature(VisionTransformer.__init__).parameters
    unknown = sorted(k for k, v in kwargs.items() if k not in accepted and v is not None)
    if unknown:
        raise TypeError(f"unknown model argument(s) {unknown}; VisionTransformer accepts {sorted(accepted)[1:]}")
    vit_kwargs = dict(ARCHS[arch], num_classes=pretrained_cfg["num_classes"], qkv_bias=True)
    vit_kwargs.update({k: v for k, v in kwargs.items() if k in accepted})
    if attention in ("symmetric", "rpc", "rpc_keyscale"):
        vit_kwargs.setdefault("attn_layer", SymmetricAttention)
    model = VisionTransformer(**vit_kwargs)
    if attention in ("rpc", "rpc_keyscale"):
        rpc = RPC_DEFAULTS | rpc
        patch_attention(model, attention, layers=rpc["rpc_layers"], n_iter=rpc["rpc_iters"], lam=rpc["rpc_lambda"])
    elif rpc:
        raise TypeError(f"rpc_* arguments {sorted(rpc)} only apply to rpc_symvit models")
    if attention == "scaled":
        patch_attention(model, "scaled", layers="all", form=scaled_form)
    cfg = dict(pretrained_cfg)
    if isinstance(given_cfg, dict):
        cfg.update({k: v for k, v in given_cfg.items() if v is not None and k in cfg})
    cfg.update(overlay)
    cfg["num_classes"] = model.num_classes
    size = vit_kwargs.get("img_size", cfg["input_size"][-1])
    size = size if isinstance(size, (tuple, list)) else (size, size)
    cfg["input_size"] = (vit_kwargs.get("in_chans", 3), *size)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model


def _register(name: str, arch: str, attention: str, notes: str, **defaults: Any) -> None:
    cfg = _cfg(arch)
    if attention == "scaled":
        defaults.setdefault("scaled_form", "matrix")

    def factory(pretrained: bool = False, **kwargs: Any):
        if pretrained:
            raise ValueError(
                f"{name}: robustbench-rpc downloads nothing; build with pretrained=False and pass a "
                "checkpoint file (load_model(name, checkpoint=PATH))"
            )
        return _build(arch, attention, cfg, {**defaults, **kwargs})

    factory.__name__ = name
    factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = notes
    setattr(sys.modules[__name__], name, factory)
    register_model(factory)
    MODELS.add(name, ModelEntry(name, factory, attention, notes, cfg, defaults, arch))


_SIZE_NOTE = {"tiny": "", "small": " (DeiT-S: 384 dims; the paper's small is *_small_paper_*)", "base": "",
              "small_paper": " (the paper's small: 348 dims, 6 heads, Robust/models.py)"}
for _size in ("tiny", "small", "small_paper", "base"):
    _register(f"symvit_{_size}_patch16_224", _size, "symmetric",
              f"SymViT (DeiT arch, queries = keys){_SIZE_NOTE[_size]}")
    _register(f"rpc_symvit_{_size}_patch16_224", _size, "rpc",
              "RPC-SymViT: PAP in the chosen layers (default 4 iters, lambda 4, first layer; a paper "
              f"checkpoint's args set them){_SIZE_NOTE[_size]}")
_register("scaled_vit_tiny_patch16_224", "tiny", "scaled",
          "Scaled Attention 'Scaled S' (paper): softmax(QK^T)(I - S)V, S (heads, N, N) in every layer",
          scaled_form="matrix")
_register("scaled_alpha_vit_tiny_patch16_224", "tiny", "scaled",
          "Scaled Attention 'alpha x Asym' (paper): softmax(QK^T)(I - s softmax(KK^T))V, scalar s per layer",
          scaled_form="scalar")
_register("vit_micro_patch4_32", "micro", "softmax", "embedded default: softmax ViT, 32x32, 10 classes")
_register("symvit_micro_patch4_32", "micro", "symmetric", "embedded default: SymViT, 32x32, 10 classes")
_register("rpc_symvit_micro_patch4_32", "micro", "rpc",
          "embedded default: RPC-SymViT, 32x32, 10 classes (4 iters, first layer)")

_register("rpc_keyscale_symvit_micro_patch4_32", "micro", "rpc_keyscale",
          "embedded: RPC-SymViT with the scale-aware PAP threshold (rpc_keyscale), fine-tuned from SymViT",
          rpc_iters=2, rpc_lambda=8.0, rpc_layers="first")
# The same three architectures adversarially trained (PGD-AT, training/recipes/<name>.toml): the shipped
# checkpoint of each is checkpoints/<name>.safetensors, so NAME:packaged evaluates it.
_register("symvit_micro_patch4_32_pgdat", "micro", "symmetric",
          "embedded: SymViT micro, PGD-AT on digits32 (eps 8/255; recipe symvit_micro_patch4_32_pgdat)")
_register("rpc_symvit_micro_patch4_32_pgdat", "micro", "rpc",
          "embedded: RPC-SymViT micro (4 iters, first layer), PGD-AT on digits32 (eps 8/255)")
_register("rpc_keyscale_symvit_micro_patch4_32_pgdat", "micro", "rpc_keyscale",
          "embedded: RPC-SymViT with the scale-aware threshold (lambda 8, 2 iters), PGD-AT on digits32 (eps 8/255)",
          rpc_iters=2, rpc_lambda=8.0, rpc_layers="first")

# The paper's configurations as named presets ("layer 1" = the first block, the paper's layer=0). The small
# presets use the paper's small (348 dims), so the paper's checkpoints load into them.
for _size in ("tiny", "small", "base"):
    _arch = "small_paper" if _size == "small" else _size
    for _it in (4, 5, 6):
        _register(f"rpc_symvit_{_size}_{_it}iter_layer1", _arch, "rpc",
                  f"paper preset: RPC-SymViT ({_it} iters, layer 1){_SIZE_NOTE.get(_arch, '')}",
                  rpc_iters=_it, rpc_layers="first")
    _register(f"rpc_symvit_{_size}_2iter_all", _arch, "rpc",
              f"paper preset: RPC-SymViT (2 iters, all layers){_SIZE_NOTE.get(_arch, '')}",
              rpc_iters=2, rpc_layers="all")


def list_models(pattern: str | None = None) -> list[str]:
    """Names usable with ``load_model`` (any timm model is usable too, as ``timm:<name>``)."""
    return MODELS.names(pattern)
