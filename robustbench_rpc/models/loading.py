"""``load_model``: a name (ours, any timm model as ``timm:<name>``) plus an optional checkpoint ->
an eval-mode module on [0, 1] images that normalizes inside with the model's own mean/std."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from ..registry import UnknownNameError
from .checkpoint import load_checkpoint
from .normalize import Normalized
from .vit import MODELS


def split_spec(spec: str) -> tuple[str, str | None]:
    """'name[:checkpoint]' -> (name, checkpoint); 'timm:<name>[:ckpt]' keeps its prefix."""
    prefix = ""
    if spec.startswith("timm:"):
        prefix, spec = "timm:", spec[len("timm:"):]
    name, sep, ckpt = spec.partition(":")
    return prefix + name, (ckpt or None) if sep else None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """The bare timm-convention module (normalized inputs) for one of our names or ``timm:<name>``.
    ``BACKBONE+HEAD`` builds the backbone with an untrained head of that kind (shapes only; see heads)."""
    if "+" in name:
        from ..heads.model import create_head_model

        return create_head_model(name, **kwargs)
    if name.startswith("timm:"):
        timm_name = name[len("timm:"):]
        if not timm.is_model(timm_name):
            raise UnknownNameError("timm model", timm_name, timm.list_models())
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if name not in MODELS:
        known = MODELS.names()
        if timm.is_model(name):
            raise UnknownNameError("model", name, known + [f"timm:{name}"])
        raise UnknownNameError("model", name, known)
    return MODELS.get(name).factory(**kwargs)


def data_config_of(model: nn.Module) -> dict[str, Any]:
    """The model's evaluation contract (input size, mean/std, crop, interpolation, classes)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    resolved = timm.data.resolve_data_config({}, model=model)
    out = {**resolved, **{k: cfg[k] for k in ("dataset",) if k in cfg}}
    out["num_classes"] = getattr(model, "num_classes", cfg.get("num_classes"))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # the built model, not the pretrained default, decides the input size
        out["input_size"] = (out["input_size"][0], *tuple(img_size))
    return out


def load_model(name: str, checkpoint: str | Path | None = None, *, device: str | None = None,
               prefer_ema: bool = False, **kwargs: Any) -> Normalized:
    """Build ``name`` (our registry or ``timm:<name>``), load ``checkpoint`` if given, wrap so it takes
    [0, 1] images, and return it in eval mode. ``name`` may carry the checkpoint as ``name:path``."""
    if checkpoint is None:
        name, checkpoint = split_spec(name)
    if "+" in name:  # BACKBONE+HEAD: the head checkpoint names (and pins) the backbone's
        from ..heads.model import load_head_model

        return load_head_model(name, checkpoint, device=device, **kwargs)
    model = create_model(name, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, prefer_ema=prefer_ema)
    cfg = data_config_of(model)
    wrapped = Normalized(model, cfg["mean"], cfg["std"], data_config=cfg)
    wrapped.eval()
    if device is not None:
        wrapped.to(device)
    return wrapped
