"""What a checkpoint written by ``robustbench-rpc train`` says about the model it holds.

``train`` writes the build under the safetensors metadata key :data:`BUILD_KEY`: the model name, its
constructor kwargs and the attention variant patched into it (variant, layers, arguments), so a loader can
rebuild the trained module before loading the weights, e.g. a plug-in variant whose parameters the
registered model does not have. This module only reads and applies that record; it never imports code a
file names (a plug-in variant must be registered first, ``--plugin FILE``, and the error says which file
the training used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .checkpoint import CheckpointError, read_checkpoint_metadata
from ..attention import ATTENTIONS, patch_attention

#: safetensors metadata key of the build record: {"model", "kwargs", "attention", "plugins"}
BUILD_KEY = "build"


def recorded_build(path: str | Path | None) -> dict[str, Any] | None:
    """The build record of a checkpoint written by ``train``, or None for any other file."""
    if path is None or Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    build = read_checkpoint_metadata(path).get(BUILD_KEY)
    return dict(build) if isinstance(build, Mapping) else None


def build_kwargs(name: str, build: Mapping[str, Any], kwargs: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The constructor kwargs to use: the recorded ones, with given ones that agree (a contradicting kwarg
    raises :class:`CheckpointError` naming both: the file decides what it holds). Loaded as another model
    (e.g. SymViT weights as RPC-SymViT) the record does not apply, unless it patched an attention variant in:
    then the weights are not that model's, and the error says which name to use."""
    if build.get("model") != name:
        if build.get("attention"):
            raise CheckpointError(f"checkpoint {path} holds {build.get('model')} with attention "
                                  f"'{build['attention']['variant']}' patched in, not {name}: evaluate it as "
                                  f"--model {build.get('model')}:{path}")
        return dict(kwargs)
    out = dict(build.get("kwargs") or {})
    for key, value in kwargs.items():
        if key in out and out[key] != value:
            raise CheckpointError(f"checkpoint {path} was trained with {key}={out[key]!r}, but {key}={value!r} "
                                  f"was given; drop the argument")
        out[key] = value
    return out


def apply_recorded_attention(model: nn.Module, build: Mapping[str, Any], path: str | Path,
                             name: str | None = None) -> nn.Module:
    """Patch the recorded attention variant into a freshly built ``model`` (its weights are loaded next, so
    nothing trained is re-initialised). An unregistered variant is a :class:`CheckpointError` naming the
    plug-in file the training loaded."""
    att = build.get("attention")
    if not att or (name is not None and build.get("model") != name):
        return model

    variant = att["variant"]
    if variant not in ATTENTIONS:
        plugins = build.get("plugins") or []
        hint = f" (the training loaded --plugin {' --plugin '.join(plugins)})" if plugins else ""
        raise CheckpointError(f"checkpoint {path} was trained with attention variant '{variant}', which is not "
                              f"registered: pass the plug-in that defines it{hint}")
    patch_attention(model, variant, layers=att.get("layers", "all"), allow_reinit=True, **(att.get("args") or {}))
    for m in (model, getattr(model, "model", None)):
        if m is not None and hasattr(m, "attention_reinit"):
            del m.attention_reinit  # the trained weights are loaded into every re-shaped parameter next
    return model
