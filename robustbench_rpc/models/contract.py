"""A model's evaluation contract (input size, mean/std, interpolation, crop, classes), declared, never guessed.

Every model the suite evaluates must declare how its data is preprocessed: ours and ``timm:<name>`` models
carry it as their (timm) pretrained config; a model of your own declares it once with
:func:`register_model`, or per run with ``load_model(..., data_config={...})`` / the run flags
``--input-size --mean --std --interpolation --crop-pct``. A model without one is refused with
:class:`ModelContractError` (timm would silently fall back to ImageNet's mean/std at 224 px).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import timm
from torch import nn

from .vit import MODELS, ModelEntry
from ..registry import did_you_mean

#: contract key -> the run flag that gives it
CONTRACT_FLAGS = {"input_size": "--input-size", "mean": "--mean", "std": "--std",
                  "interpolation": "--interpolation", "crop_pct": "--crop-pct"}
CONTRACT_KEYS = tuple(CONTRACT_FLAGS) + ("num_classes",)
#: what a contract must state; interpolation and crop default as in register_model (bilinear, 1.0)
REQUIRED = ("input_size", "mean", "std")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
#: what a model's output means: "classification" = logits (B, num_classes); "segmentation" = per-pixel logits
#: (B, num_classes, H, W) at the input's resolution (input_size is then the window a sliding evaluation uses)
TASKS = ("classification", "segmentation")
HOW_TO_DECLARE = (
    "declare it once with @robustbench_rpc.register_model(NAME, input_size=(3, H, W), mean=(...), std=(...), "
    "num_classes=K) (README: 'Evaluate your own model'), or per run with --input-size 3,H,W --mean R,G,B "
    "--std R,G,B [--interpolation bilinear --crop-pct 1.0] (API: load_model(..., data_config={...}))")


class ModelContractError(ValueError):
    """A model whose evaluation contract is missing or malformed; the message names the model and the fix."""


def _floats(value: Any, key: str, n: int = 3) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [p for p in value.replace(" ", "").split(",") if p]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelContractError(f"contract {key}: expected {n} numbers like 0.5,0.5,0.5, got {value!r}") from None
    if len(out) == 1:
        out = out * n
    if len(out) != n:
        raise ModelContractError(f"contract {key}: expected {n} numbers (one per channel), got {len(out)}: {value!r}")
    return out


def normalize_contract(given: Mapping[str, Any] | None, where: str = "contract") -> dict[str, Any]:
    """Check and normalize contract values: ``input_size`` 32 | '3,32,32' | (3, 32, 32) -> (3, 32, 32),
    mean/std 1 or 3 numbers, interpolation a known name, crop_pct in (0, 1], num_classes >= 1. None = absent."""
    out: dict[str, Any] = {}
    for key, value in (given or {}).items():
        if value is None:
            continue
        if key not in CONTRACT_KEYS:
            hint = did_you_mean(key, CONTRACT_KEYS, n=2)
            raise ModelContractError(f"{where}: unknown key '{key}'.{hint} Keys: {', '.join(CONTRACT_KEYS)}")
        if key == "input_size":
            size = value
            if isinstance(size, str):
                size = [p for p in size.replace("x", ",").replace(" ", "").split(",") if p]
            size = [size] if isinstance(size, (int, float)) else list(size)
            try:
                size = [int(s) for s in size]
            except (TypeError, ValueError):
                raise ModelContractError(f"{where} input_size: expected C,H,W or a side like 32, got {value!r}") from None
            if len(size) == 1:
                size = [3, size[0], size[0]]
            elif len(size) == 2:
                size = [3, *size]
            if len(size) != 3 or min(size) < 1:
                raise ModelContractError(f"{where} input_size: expected C,H,W with positive sizes, got {value!r}")
            out[key] = tuple(size)
        elif key in ("mean", "std"):
            vals = _floats(value, f"{where} {key}")
            if key == "std" and min(vals) <= 0:
                raise ModelContractError(f"{where} std must be > 0, got {vals}")
            out[key] = vals
        elif key == "interpolation":
            if value not in INTERPOLATIONS:
                raise ModelContractError(f"{where} interpolation '{value}': use one of {', '.join(INTERPOLATIONS)}")
            out[key] = str(value)
        elif key == "crop_pct":
            try:
                pct = float(value)
            except (TypeError, ValueError):
                raise ModelContractError(f"{where} crop_pct: expected a number in (0, 1], got {value!r}") from None
            if not 0 < pct <= 1:
                raise ModelContractError(f"{where} crop_pct must be in (0, 1] (1.0 = no crop), got {value!r}")
            out[key] = pct
        else:  # num_classes
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelContractError(f"{where} num_classes must be an integer >= 1, got {value!r}")
            out[key] = value
    if "mean" in out and "input_size" in out and len(out["mean"]) != out["input_size"][0]:
        raise ModelContractError(f"{where}: mean has {len(out['mean'])} values but input_size has "
                                 f"{out['input_size'][0]} channels")
    return out


def declared_contract(model: nn.Module) -> dict[str, Any] | None:
    """The contract a built model carries (its timm pretrained config), or None if it declares none."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and all(cfg.get(k) is not None for k in REQUIRED):
        return dict(cfg)
    return None


def task_of(model: nn.Module) -> str:
    """What a built (or loaded, [0, 1]-wrapped) model's output means: its declared ``task``, else
    "classification" (every model declared before tasks existed is a classifier)."""
    inner = getattr(model, "model", model) if hasattr(model, "mean") and hasattr(model, "std") else model
    cfg = getattr(inner, "pretrained_cfg", None)
    task = cfg.get("task") if isinstance(cfg, Mapping) else None
    return task or "classification"


def register_model(name: str, *, input_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                   num_classes: int, interpolation: str = "bilinear", crop_pct: float = 1.0,
                   task: str = "classification",
                   notes: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model of your own, with its evaluation contract, under ``name``::

        @robustbench_rpc.register_model("my_cnn", input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                                         num_classes=10)
        def my_cnn(**kwargs) -> nn.Module: ...

    The factory is a plain function returning an ``nn.Module`` that takes *normalized* images and returns
    logits (``task="segmentation"``: per-pixel logits ``(B, num_classes, H, W)`` at the input's resolution,
    ``input_size`` being the window a sliding evaluation feeds it); it receives only the run's ``--model-arg`` values (timm's ``pretrained*`` arguments are handled
    here). Then ``load_model("my_cnn", checkpoint=...)``, ``--model my_cnn[:weights.pth]`` (with
    ``--plugin file.py``) and ``timm.create_model("my_cnn")`` all work. Returns the factory unchanged.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"model name must be a non-empty string without ':', got {name!r}")
    if task not in TASKS:
        raise ModelContractError(f"register_model('{name}'): task {task!r} is not one of {', '.join(TASKS)}")
    contract = normalize_contract(dict(input_size=input_size, mean=mean, std=std, num_classes=num_classes,
                                       interpolation=interpolation, crop_pct=crop_pct), f"register_model('{name}')")
    missing = [k for k in CONTRACT_KEYS if k not in contract]
    if missing:
        raise ModelContractError(f"register_model('{name}'): {', '.join(missing)} must be given")
    cfg = dict(contract, crop_mode="center", first_conv="", classifier="", task=task)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise TypeError(f"register_model('{name}') decorates a factory function, got {type(fn).__name__}")
        if name in MODELS:
            raise ValueError(f"model '{name}' is already registered (registered models: robustbench-rpc models)")
        if timm.is_model(name):
            raise ValueError(f"model '{name}' is already a timm model name; choose another name")

        def factory(pretrained: bool = False, **kwargs: Any) -> nn.Module:
            if pretrained:
                raise ValueError(f"{name}: a model of your own has no published weights; load yours with "
                                 f"load_model('{name}', checkpoint=PATH) or --model {name}:PATH")
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            model = fn(**kwargs)
            if not isinstance(model, nn.Module):
                raise TypeError(f"model '{name}': the factory returned {type(model).__name__}, not an nn.Module")
            classes = int(kwargs.get("num_classes", contract["num_classes"]))
            built = getattr(model, "num_classes", None)
            if built is not None and int(built) != classes:
                raise ModelContractError(f"model '{name}' declares num_classes={classes} but its factory built a "
                                         f"model with num_classes={built}")
            if built is None:
                try:
                    model.num_classes = classes
                except AttributeError:  # a read-only property: leave it
                    pass
            model.pretrained_cfg = model.default_cfg = dict(cfg, num_classes=classes)
            return model

        factory.__name__ = factory.__qualname__ = name
        factory.__module__ = __name__
        factory.__doc__ = notes or fn.__doc__
        from timm.models import register_model as timm_register

        timm_register(factory)
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', '?')}"
        MODELS.add(name, ModelEntry(name, factory, "custom", notes or f"your model ({where})", cfg, {}, "", task))
        return fn

    return deco
