"""``BACKBONE+HEAD[@TAG][:CHECKPOINT]``: a frozen backbone with a trained head, evaluated like any model.

The head checkpoint (safetensors) holds the head's weights (projection included) and, in its metadata,
the head's name and constructor arguments, the backbone's name, checkpoint and SHA-256 (checked at load:
a head only makes sense on the exact features it was trained on), the training recipe and, for convex
heads, the optimality certificate. ``:packaged`` resolves to ``robustbench_rpc/checkpoints/<name>.safetensors``
like every shipped model. ``@TAG`` only names a variant (e.g. ``@adam`` for the non-convex counterpart).

The evaluated module is ``Normalized(BackboneWithHead)``: [0, 1] images in, the backbone's own mean/std
inside, logits out, differentiable end to end (white-box attacks reach the image through the head and the
frozen backbone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import ModelForm, create_model, load_checkpoint, register_model_form
from ..models.checkpoint import (CheckpointError, read_checkpoint_file, read_checkpoint_metadata, resolve_checkpoint,
                                 sha256_of)

from .base import get_head
FORMAT = "robustbench_rpc.head/1"


def is_head_spec(name: str) -> bool:
    return "+" in name


def parse_head_spec(name: str) -> tuple[str, str, str | None]:
    """'symvit_micro_patch4_32+attention@adam' -> ('symvit_micro_patch4_32', 'attention', 'adam')."""
    backbone, sep, rest = name.partition("+")
    if not sep or not backbone or not rest:
        raise ValueError(f"a head model is named BACKBONE+HEAD[@TAG], got {name!r}")
    head, _, tag = rest.partition("@")
    return backbone, head, (tag or None)


class BackboneWithHead(nn.Module):
    """``head(backbone.forward_features(x))`` with the backbone frozen (no grad to its weights, eval mode).

    Exposes the backbone's ``blocks`` / ``patch_embed`` / ``pretrained_cfg`` so attention summaries,
    ``--attention`` patching and the data contract work as for the bare backbone."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.num_classes = int(head.num_classes)
        cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        cfg["num_classes"] = self.num_classes
        self.pretrained_cfg = cfg
        self.default_cfg = cfg

    @property
    def blocks(self):
        return self.backbone.blocks

    @property
    def patch_embed(self):
        return self.backbone.patch_embed

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.backbone, "num_prefix_tokens", 1))

    @property
    def no_embed_class(self) -> bool:
        return bool(getattr(self.backbone, "no_embed_class", False))

    def train(self, mode: bool = True) -> "BackboneWithHead":
        super().train(mode)
        self.backbone.eval()  # frozen: its features are the ones the head was trained on
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))


def num_tokens_of_backbone(backbone: nn.Module) -> int:
    n = backbone.patch_embed.num_patches
    return n + (0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 1))


def create_head_model(name: str, **kwargs: Any) -> BackboneWithHead:
    """Shapes only (for plan validation, e.g. on the meta device): backbone + an untrained default head."""
    backbone_name, head_name, _ = parse_head_spec(name)
    cls = get_head(head_name)
    backbone = create_model(backbone_name, **kwargs)
    head = cls(dim=backbone.embed_dim, num_tokens=num_tokens_of_backbone(backbone),
               num_classes=backbone.num_classes)
    return BackboneWithHead(backbone, head)


def backbone_checkpoint_path(entry: dict[str, Any]) -> Path | None:
    ckpt = entry.get("checkpoint")
    if ckpt is None:
        return None
    return Path(resolve_checkpoint(entry["name"], ckpt)) if ckpt == "packaged" else Path(ckpt)


def read_head_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"head checkpoint not found: {path}")
    meta = read_checkpoint_metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a head checkpoint (no '{FORMAT}' metadata); head checkpoints "
                              "are written by `robustbench-rpc train-head`")
    return meta


def build_head(meta: dict[str, Any]) -> nn.Module:
    return get_head(meta["head"])(**meta["head_config"])


def load_head_model(name: str, checkpoint: str | Path | None, *, trusted_globals: Any = None,
                    **kwargs: Any) -> tuple[BackboneWithHead, dict[str, Any]]:
    """Backbone (its checkpoint from the head's metadata, SHA-256 checked) + trained head, and the settings
    of both; ``models.load_model`` wraps it (contract, normalization, eval, device) like every model."""
    backbone_name, head_name, _ = parse_head_spec(name)
    if checkpoint is None:
        raise CheckpointError(f"model '{name}' is a backbone with a trained head: pass the head checkpoint "
                              f"as {name}:HEAD.safetensors (or :packaged), written by `robustbench-rpc train-head`")
    checkpoint = resolve_checkpoint(name, checkpoint)
    meta = read_head_metadata(checkpoint)
    if meta["head"] != head_name or meta["backbone"]["name"] != backbone_name:
        raise CheckpointError(f"{checkpoint} holds a '{meta['head']}' head trained on '{meta['backbone']['name']}', "
                              f"not '{head_name}' on '{backbone_name}' as the model name says")
    bb_path = backbone_checkpoint_path(meta["backbone"])
    backbone = create_model(backbone_name, **{**meta["backbone"].get("kwargs", {}), **kwargs})
    if bb_path is not None:
        if not bb_path.is_file():
            raise CheckpointError(f"{checkpoint}: the head was trained on backbone checkpoint {bb_path}, "
                                  "which is not there")
        sha = sha256_of(bb_path)
        if sha != meta["backbone"].get("sha256"):
            raise CheckpointError(f"{checkpoint}: the head was trained on backbone weights with SHA-256 "
                                  f"{meta['backbone'].get('sha256', '?')[:12]}..., but {bb_path} has {sha[:12]}...; "
                                  "retrain the head on this backbone (robustbench-rpc train-head)")
        load_checkpoint(backbone, bb_path, trusted_globals=trusted_globals)
    head = build_head(meta)
    sd = read_checkpoint_file(checkpoint)
    head.load_state_dict(sd, strict=True)
    settings = {"backbone": {"value": meta["backbone"]["name"], "checkpoint": str(bb_path) if bb_path else None,
                             "source": f"head checkpoint {Path(checkpoint).name}"},
                "head": {"value": meta["head"], "source": f"head checkpoint {Path(checkpoint).name}"}}
    return BackboneWithHead(backbone, head), settings


#: ``BACKBONE+HEAD[@TAG]`` names are built here; ``models`` dispatches to this form without importing heads
HEAD_FORM = register_model_form(ModelForm("backbone+head", is_head_spec, create_head_model, load_head_model))
