"""The model a recipe trains: any name ``load_model`` builds (ours, ``timm:<name>``, ``register_model``
plug-ins), optionally started from a checkpoint (``init``: fine-tuning) and with an attention variant
patched in (``attention``, ``attention_layers``, ``attention_args``), checked against the data before any
step. The build is recorded in the checkpoint (``models.trained``) so ``run`` rebuilds the same module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..models import PACKAGED_DIR, CheckpointError, ModelContractError, load_model, sha256_of
from ..models.checkpoint import shipped_file
from ..models.trained import BUILD_KEY
from .recipe import RecipeError
from ..attention import patch_attention


def resolve_init(init: str | None, name: str) -> Path | None:
    """``init``: a file, a shipped checkpoint's file name (``symvit_micro_patch4_32.safetensors``) or
    ``packaged`` (the model's own shipped checkpoint)."""
    if not init:
        return None
    if init == "packaged":
        init = f"{name}.safetensors"
    path = Path(init).expanduser()
    if path.is_file():
        return path
    if shipped_file(init) is not None:
        return shipped_file(init)
    shipped = ", ".join(sorted(p.name for p in PACKAGED_DIR.glob("*.safetensors") if "+" not in p.name))
    raise RecipeError(f"model.init: no checkpoint file {init} (neither a path nor a shipped file: {shipped})")


def build_model(recipe, plugins: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(the [0, 1]-input model in training mode on CPU, its build record and init provenance)."""
    m = recipe.model
    name = m.name
    bare = name[len("timm:"):] if name.startswith("timm:") else name
    if ":" in bare:
        raise RecipeError(f"model.name {name!r}: train takes a model name; start from weights with --init CKPT")
    init = resolve_init(m.init, name)
    try:
        # fine-tuning may start from another model's weights (the keyscale RPC from SymViT): allowed here
        model = load_model(name, init, data_config=m.data_config or None, override_checkpoint_args=init is not None,
                           **m.kwargs)
    except (CheckpointError, ModelContractError) as e:
        raise RecipeError("; ".join(line.strip() for line in str(e).splitlines() if line.strip())) from None
    except TypeError as e:
        raise RecipeError(f"model.kwargs of {name}: {e}") from None
    attention = None
    if m.attention:
        try:
            patch_attention(model, m.attention, layers=m.attention_layers, allow_reinit=m.attention_reinit,
                            **m.attention_args)
        except (ValueError, TypeError) as e:
            raise RecipeError(f"--attention {m.attention} on {name}: {' '.join(str(e).split())}") from None
        attention = {"variant": m.attention, "layers": m.attention_layers, "args": dict(m.attention_args),
                     "reinit": list(getattr(model, "attention_reinit", []))}
        for mod in (model, model.model):
            if hasattr(mod, "attention_reinit"):
                del mod.attention_reinit  # trained from here on: nothing is left re-initialised in the result
    model.train()
    record = {BUILD_KEY: {"model": name, "kwargs": dict(m.kwargs), "attention": attention,
                          "plugins": list(plugins or [])},
              "init": {"file": str(m.init), "path": str(init), "sha256": sha256_of(init)} if init else None,
              "data_config": {k: v for k, v in model.data_config.items() if k != "contract_source"}}
    return model, record


def check_fits(model: nn.Module, data, name: str) -> None:
    """The model's classes and input size must be the data's (one line naming both and the fix)."""
    classes = model.num_classes
    if classes != len(data.classes):
        raise RecipeError(f"model {name} predicts {classes} classes but {data.name} has {len(data.classes)}: "
                          f"build it with --model-arg num_classes={len(data.classes)}")
    size = tuple(int(s) for s in model.data_config["input_size"])
    if tuple(data.image_size) != size:
        raise RecipeError(f"model {name} takes {'x'.join(map(str, size))} images but {data.name} has "
                          f"{'x'.join(map(str, data.image_size))}: build it with --model-arg "
                          f"img_size={data.image_size[-1]}")
