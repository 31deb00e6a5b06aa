"""``load_model``: a name (ours, any timm model as ``timm:<name>``, a form another room registers such as
``BACKBONE+HEAD``) plus an optional checkpoint -> an eval-mode module on [0, 1] images that normalizes inside
with the model's own mean/std.

Names resolve in timm's manner (``timm/models/_factory.py``): a registered model name, ``timm:<name>``, or a
*model form* that matches the name (:func:`register_model_form`; ``heads`` registers ``BACKBONE+HEAD``), so this
room never imports the rooms that define forms. Whatever builds the network, :func:`load_model` wraps it once:
contract, normalization, eval mode, device.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import timm
import torch
from torch import nn

from ..registry import UnknownNameError
from .checkpoint import (
    PRETRAINED, CheckpointError, check_named_model, extract_state_dict, load_state_dict_checked,
    read_checkpoint_file, resolve_checkpoint, split_spec,
)
from .contract import (
    CONTRACT_FLAGS, CONTRACT_KEYS, HOW_TO_DECLARE, REQUIRED, ModelContractError, declared_contract,
    normalize_contract,
)
from .normalize import Normalized
from .paper_args import ResolvedModel, resolve_model, size_hint
from .trained import apply_recorded_attention, build_kwargs, recorded_build
from .vit import MODELS


@dataclass(frozen=True)
class ModelForm:
    """A family of model names built by another room (e.g. ``BACKBONE+HEAD`` by ``heads``).

    ``create(name, **kwargs)`` builds the bare module (shapes only, for planning on the meta device);
    ``load(name, checkpoint, *, trusted_globals, **kwargs)`` builds it with its weights and returns
    ``(module, settings)``; :func:`load_model` adds the contract, normalization, eval mode and device."""

    name: str
    matches: Callable[[str], bool]
    create: Callable[..., nn.Module]
    load: Callable[..., tuple[nn.Module, dict[str, Any]]]


_FORMS: list[ModelForm] = []


def register_model_form(form: ModelForm) -> ModelForm:
    """Make a family of names buildable by :func:`create_model` / :func:`load_model` (re-registering a
    form of the same name replaces it)."""
    _FORMS[:] = [f for f in _FORMS if f.name != form.name] + [form]
    return form


def form_of(name: str) -> ModelForm | None:
    return next((f for f in _FORMS if f.matches(name)), None)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """The bare timm-convention module (normalized inputs) for one of our names, ``timm:<name>`` or a
    registered form's name (``BACKBONE+HEAD``: the backbone with an untrained head of that kind)."""
    form = form_of(name)
    if form is not None:
        return form.create(name, **kwargs)
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


def data_config_of(model: nn.Module, data_config: Mapping[str, Any] | None = None, *,
                   name: str | None = None) -> dict[str, Any]:
    """The model's evaluation contract (input size, mean/std, crop, interpolation, classes).

    Declared by the model (ours, ``timm:<name>``, :func:`register_model`) or given (``data_config``, the run's
    ``--input-size/--mean/--std/--interpolation/--crop-pct``; given values win). A model that declares none
    and is not given input size, mean and std raises :class:`ModelContractError`: no silent ImageNet default.
    ``contract_source`` in the result says where it came from."""
    given = normalize_contract(data_config, "data_config")
    declared = declared_contract(model)
    label = f"model '{name}'" if name else f"model {type(model).__name__}"
    if declared is None:
        missing = [k for k in REQUIRED if k not in given]
        if missing:
            flags = ", ".join(CONTRACT_FLAGS[k] for k in missing)
            raise ModelContractError(
                f"{label} declares no evaluation contract (missing {flags}) and robustbench-rpc will not guess "
                f"one (timm's fallback, ImageNet mean/std at 224 px, is wrong for most own models): {HOW_TO_DECLARE}")
        out = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", **given}
        out["contract_source"] = "given (" + ", ".join(k for k in CONTRACT_KEYS if k in given) + ")"
    else:
        resolved = timm.data.resolve_data_config({}, model=model)
        out = {**resolved, **{k: declared[k] for k in ("dataset",) if k in declared}, **given}
        out["contract_source"] = "model" + (" (given: " + ", ".join(k for k in CONTRACT_KEYS if k in given) + ")"
                                            if given else "")
    classes = getattr(model, "num_classes", None)
    fallback = classes if classes is not None else (declared or {}).get("num_classes")
    out["num_classes"] = given.get("num_classes", fallback)
    if out["num_classes"] is None:
        raise ModelContractError(f"{label} has no num_classes attribute and none was given: {HOW_TO_DECLARE}")
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # the built model, not the pretrained default, decides the input size
        img_size = tuple(img_size)
        if "input_size" in given and tuple(given["input_size"][-2:]) != img_size:
            raise ModelContractError(f"{label} is built for {img_size[0]}x{img_size[1]} images (patch_embed.img_size) "
                                     f"but input size {given['input_size']} was given; build it at that size with "
                                     f"--model-arg img_size={given['input_size'][-1]} or drop --input-size")
        out["input_size"] = (out["input_size"][0], *img_size)
    return out


def create_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """``timm:<name>`` with timm's published weights, through timm's own download and cache. Without a
    network (and no cached copy) this is one CheckpointError saying so; nothing else is tried."""
    timm_name = name[len("timm:"):]
    if not timm.is_model(timm_name):
        raise UnknownNameError("timm model", timm_name, timm.list_models())
    if not timm.models.get_pretrained_cfg(timm_name):
        raise CheckpointError(f"model '{name}': timm publishes no pretrained weights for {timm_name}")
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        import re

        text = re.sub(r"\s+", " ", str(err)).strip()[:200]
        offline = any(w in f"{type(err).__name__} {text}".lower() for w in (
            "connection", "offline", "network", "resolve", "timed out", "timeout", "localentrynotfound",
            "cannot find the requested files", "urlopen", "unreachable", "max retries"))
        why = ("no network (or HF_HUB_OFFLINE) and no cached copy" if offline else "the download or load failed")
        raise CheckpointError(f"model '{name}:pretrained': timm could not provide its pretrained weights: {why} "
                              f"({type(err).__name__}: {text}); run once where the machine has a network to fill "
                              f"timm's cache, or pass a checkpoint file as {name}:PATH") from None


def build_unloaded(name: str, checkpoint: str | Path | None, kwargs: Mapping[str, Any], *, override: bool = False,
                   checkpoint_obj: Any = None, trusted_globals: Any = None,
                   device: str | None = None) -> tuple[nn.Module, ResolvedModel]:
    """The one model-building path, weights not loaded: ``train``'s recorded build (its kwargs and attention
    patch decide), a paper checkpoint's ``args`` (:func:`resolve_model`), the factory. :func:`load_model`
    fills in the weights afterwards; planning builds on ``device="meta"`` (nothing allocated), so a bad name,
    keyword or variant fails before compute exactly as it would at load time."""
    build = recorded_build(checkpoint)
    if build is not None:
        kwargs = build_kwargs(name, build, dict(kwargs), checkpoint)
    resolved = resolve_model(name, checkpoint, kwargs, override_checkpoint_args=override,
                             checkpoint_obj=checkpoint_obj, trusted_globals=trusted_globals)
    with torch.device(device) if device else contextlib.nullcontext():
        model = create_model(resolved.name, **resolved.kwargs)
        if build is not None:
            apply_recorded_attention(model, build, checkpoint, name)
    return model, resolved


def load_model(name: str, checkpoint: str | Path | None = None, *, device: str | None = None,
               prefer_ema: bool = False, override_checkpoint_args: bool = False,
               data_config: Mapping[str, Any] | None = None, trusted_globals: Any = None,
               **kwargs: Any) -> Normalized:
    """Build ``name`` (our registry, :func:`register_model`, or ``timm:<name>``), load ``checkpoint`` if given,
    wrap so it takes [0, 1] images, and return it in eval mode. ``name`` may carry the checkpoint as
    ``name:checkpoint``. ``checkpoint``: a file, ``"packaged"`` (the shipped file, as the CLI's ``:packaged``)
    or, for ``timm:<name>``, ``"pretrained"`` (timm's published weights, downloaded and cached by timm).

    A paper-layout checkpoint's ``args`` configure the model (see :func:`resolve_model`); kwargs that
    contradict them raise unless ``override_checkpoint_args=True``. The wrapper's ``model_settings`` says
    where each setting came from, e.g. ``{"rpc_iters": {"value": 3, "source": "checkpoint args (num_iter=3)"}}``.
    Loading is strict: a file whose shapes do not fit raises, naming the keys (and a fitting model if any).
    ``data_config``: the evaluation contract (input_size, mean, std, interpolation, crop_pct, num_classes) for
    a model that declares none, or values that replace the declared ones (see :func:`data_config_of`).
    ``trusted_globals``: extra pickle globals a trusted file may construct (e.g. ``["numpy.dtype"]``).
    """
    if checkpoint is None:
        name, checkpoint = split_spec(name)
    form = form_of(name)
    if form is not None:  # e.g. BACKBONE+HEAD: the head checkpoint names (and pins) the backbone's
        model, settings = form.load(name, checkpoint, trusted_globals=trusted_globals, **kwargs)
        return _wrap(model, name, settings, data_config, device)
    checkpoint = resolve_checkpoint(name, checkpoint)
    check_named_model(name, checkpoint if checkpoint != PRETRAINED else None, override_checkpoint_args)
    if checkpoint == PRETRAINED:
        resolved = ResolvedModel(name, dict(kwargs), {"weights": {"value": "pretrained", "source": "timm"}})
        model = create_pretrained(name, **resolved.kwargs)
    else:
        obj = read_checkpoint_file(checkpoint, trusted_globals=trusted_globals) if checkpoint is not None else None
        model, resolved = build_unloaded(name, checkpoint, kwargs, override=override_checkpoint_args,
                                         checkpoint_obj=obj)
        if checkpoint is not None:
            sd = extract_state_dict(obj, checkpoint, prefer_ema=prefer_ema)
            load_state_dict_checked(model, sd, checkpoint, hint=size_hint(name, sd))
    return _wrap(model, name, resolved.settings, data_config, device)


def _wrap(model: nn.Module, name: str, settings: dict[str, Any], data_config: Mapping[str, Any] | None,
          device: str | None) -> Normalized:
    """The one wrapping every loaded model gets: its contract (given values win), normalization inside,
    where each setting came from, eval mode, device."""
    cfg = data_config_of(model, data_config, name=name)
    wrapped = Normalized(model, cfg["mean"], cfg["std"], data_config=cfg)
    wrapped.model_settings = settings
    wrapped.eval()
    if device is not None:
        wrapped.to(device)
    return wrapped
