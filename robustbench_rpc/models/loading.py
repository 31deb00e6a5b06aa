"""``load_model``: a name (ours, any timm model as ``timm:<name>``) plus an optional checkpoint ->
an eval-mode module on [0, 1] images that normalizes inside with the model's own mean/std.

A checkpoint in the RPC-Attention paper's training layout carries the run's ``args`` (argparse.Namespace,
see the paper's ``Attack/main.py`` / ``Scaled_Attention/main_train.py``); :func:`resolve_model` turns them
into our model arguments, so the file, not retyped kwargs, decides how the model runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import timm
from torch import nn

from ..registry import UnknownNameError
from .checkpoint import CheckpointError, extract_state_dict, load_state_dict_checked, read_checkpoint_file
from .contract import (CONTRACT_FLAGS, CONTRACT_KEYS, HOW_TO_DECLARE, REQUIRED, ModelContractError,
                       declared_contract, normalize_contract)
from .normalize import Normalized
from .vit import ARCHS, MODELS, RPC_DEFAULTS, ModelEntry


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
    out["num_classes"] = given.get("num_classes", classes if classes is not None else (declared or {}).get("num_classes"))
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


PACKAGED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: ``timm:<name>:pretrained``: timm's published weights (timm's download and cache)
PRETRAINED = "pretrained"


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> str | None:
    """The one place ``:packaged`` / ``:pretrained`` / a file path are resolved (API and CLI):
    ``packaged`` -> the shipped file of ``name``; ``pretrained`` -> kept as is (``timm:<name>`` only);
    a path -> checked to exist. Bad values raise :class:`CheckpointError` naming the model."""
    if checkpoint is None:
        return None
    if str(checkpoint) == "packaged":
        path = PACKAGED_DIR / f"{name}.safetensors"
        if not path.is_file():
            have = sorted(p.stem for p in PACKAGED_DIR.glob("*.safetensors"))
            raise CheckpointError(f"model '{name}': no packaged checkpoint (packaged: {', '.join(have) or 'none'})")
        return str(path)
    if str(checkpoint) == PRETRAINED:
        if not name.startswith("timm:"):
            raise CheckpointError(f"model '{name}': ':pretrained' means timm's published weights and applies to "
                                  f"timm:<name> models; robustbench-rpc's own models use ':packaged' or a file")
        return PRETRAINED
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"model '{name}': checkpoint file not found: {checkpoint}")
    return str(checkpoint)


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


#: Source labels recorded per setting in ``model_settings`` (model info, manifest).
FROM_FILE = "checkpoint args"
FROM_ARGUMENT = "argument"
FROM_PRESET = "preset"
FROM_DEFAULT = "model default"


@dataclass
class ResolvedModel:
    """What to build: the factory ``name``, its ``kwargs``, and where each setting came from."""

    name: str
    kwargs: dict[str, Any]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


def paper_pap_blocks(robust: bool, layer: int, depth: int) -> list[int]:
    """Blocks that run PAP in the paper's code (``Attack/softmax.py``, ``Attention.forward``): block ``i``
    runs it iff ``robust and (layer < 0 or i == layer)``; so -1 = all blocks, ``layer >= depth`` = none."""
    if not robust:
        return []
    if layer < 0:
        return list(range(depth))
    return [layer] if layer < depth else []


def _paper_args(obj: Any) -> dict[str, Any] | None:
    import argparse

    if isinstance(obj, Mapping) and isinstance(obj.get("args"), argparse.Namespace):
        return dict(vars(obj["args"]))
    return None


def _head_rows(obj: Any, path: str | Path) -> int | None:
    try:
        head = extract_state_dict(obj, path).get("head.weight")
    except CheckpointError:
        return None
    return int(head.shape[0]) if head is not None else None


def _layers_list(value: Any, depth: int) -> list[int]:
    from ..attention import resolve_layers

    return resolve_layers(list(value) if isinstance(value, (list, tuple, range)) else value, depth)


def _same(key: str, a: Any, b: Any, depth: int) -> bool:
    if a is None or b is None:
        return a is b
    if key == "rpc_layers":
        return _layers_list(a, depth) == _layers_list(b, depth)
    if key == "rpc_lambda":
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def resolve_model(name: str, checkpoint: str | Path | None = None, kwargs: Mapping[str, Any] | None = None, *,
                  override_checkpoint_args: bool = False, checkpoint_obj: Any = None,
                  trusted_globals: Any = None) -> ResolvedModel:
    """The factory name and kwargs for ``name`` + ``checkpoint``, with each setting's source.

    A file holding the paper's training ``args`` configures our ``symvit_*`` / ``rpc_symvit_*`` models:
    ``robust`` on -> PAP with ``num_iter`` iterations and ``lambd`` in the blocks ``layer`` names (-1 all,
    0..depth-1 that block, >= depth none; :func:`paper_pap_blocks`), ``robust`` off -> plain symmetric
    attention in every block. A ``symvit_*`` name meeting a robust file is built as its ``rpc_symvit_*``
    counterpart. ``scaled_*`` models take ``s_scalar`` (scalar form "alpha x Asym" vs matrix "Scaled S").
    ``nb_classes`` (else the file's head rows) gives the class count, ``input_size`` the image size unless
    ``img_size`` is passed.

    Explicit kwargs (``rpc_iters``, ``rpc_lambda``, ``rpc_layers``, ``scaled_form``, ``num_classes``), and a
    named preset's defaults (e.g. ``rpc_symvit_tiny_6iter_layer1``'s 6 iterations), that contradict the file
    raise :class:`CheckpointError` naming both values and the file, unless ``override_checkpoint_args=True``,
    in which case they win (recorded as such). Settings the file does not carry come from arguments, the
    preset, or the model's defaults. ``checkpoint_obj``: the already-read file, to avoid a second read.
    """
    kwargs = dict(kwargs or {})
    if checkpoint is not None and str(checkpoint) == PRETRAINED:
        checkpoint = None  # timm's published weights: timm's own config, nothing to read here
    entry: ModelEntry | None = MODELS.get(name) if name in MODELS else None
    if entry is None or entry.attention not in ("symmetric", "rpc", "scaled") or entry.arch not in ARCHS:
        return ResolvedModel(name, kwargs, {})  # a user's own entry: no paper arguments to apply
    args = None
    head_rows = None
    if checkpoint is not None:
        obj = checkpoint_obj if checkpoint_obj is not None else read_checkpoint_file(
            checkpoint, mmap=True, trusted_globals=trusted_globals)
        args = _paper_args(obj)
        if args is not None and args.get("nb_classes") is None:
            head_rows = _head_rows(obj, checkpoint)
    depth = int(kwargs.get("depth", ARCHS[entry.arch]["depth"]))

    # (key, file value, how the file says it) for every setting the file carries
    from_file: dict[str, tuple[Any, str]] = {}
    if args is not None:
        if entry.attention in ("symmetric", "rpc") and "robust" in args:
            robust, layer = bool(args["robust"]), int(args.get("layer", 0))
            blocks = paper_pap_blocks(robust, layer, depth)
            how = f"robust={robust}" + (f", layer={layer}" if robust else "")
            from_file["rpc_layers"] = (blocks, how)
            if blocks:
                from_file["rpc_iters"] = (int(args["num_iter"]), f"num_iter={args['num_iter']}")
                from_file["rpc_lambda"] = (float(args["lambd"]), f"lambd={args['lambd']}")
            else:  # no PAP block: iterations and lambda are unused, and asking for them contradicts the file
                from_file["rpc_iters"] = (None, how + ": PAP runs in no block")
                from_file["rpc_lambda"] = (None, how + ": PAP runs in no block")
        if entry.attention == "scaled" and "s_scalar" in args:
            form = "scalar" if args["s_scalar"] else "matrix"
            from_file["scaled_form"] = (form, f"s_scalar={bool(args['s_scalar'])}")
        if args.get("nb_classes") is not None:
            from_file["num_classes"] = (int(args["nb_classes"]), f"nb_classes={args['nb_classes']}")
        elif head_rows is not None:
            from_file["num_classes"] = (head_rows, "head.weight rows")

    rpc_keys = ["rpc_iters", "rpc_lambda", "rpc_layers"]
    keys = ["num_classes"] + (["scaled_form"] if entry.attention == "scaled" else rpc_keys
                              if entry.attention == "rpc" or "rpc_layers" in from_file else [])
    settings: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    conflicts: list[str] = []
    for key in keys:
        given, preset = key in kwargs, key in entry.defaults
        if key in from_file:
            fval, how = from_file[key]
            src_file = {"value": fval, "source": f"{FROM_FILE} ({how})"}
            other = ((kwargs[key], f"argument {key}={kwargs[key]!r} was given", FROM_ARGUMENT) if given else
                     (entry.defaults[key], f"{name} presets {key}={entry.defaults[key]!r}", f"{FROM_PRESET} {name}")
                     if preset else None)
            if other is None or _same(key, fval, other[0], depth):
                settings[key], final[key] = src_file, fval
            elif override_checkpoint_args:
                settings[key] = {"value": other[0], "source": f"{other[2]} (overrides {FROM_FILE} {how})"}
                final[key] = other[0]
            else:
                shown = fval if fval is not None else "unused"
                conflicts.append(f"{key}: the file says {shown!r} ({how}), but {other[1]}")
        elif given:
            settings[key], final[key] = {"value": kwargs[key], "source": FROM_ARGUMENT}, kwargs[key]
        elif preset:
            settings[key] = {"value": entry.defaults[key], "source": f"{FROM_PRESET} {name}"}
            final[key] = entry.defaults[key]
        elif key in RPC_DEFAULTS and entry.attention == "rpc":
            settings[key] = {"value": RPC_DEFAULTS[key], "source": FROM_DEFAULT}
            final[key] = RPC_DEFAULTS[key]
    if conflicts:
        fits = [n for n in MODELS if n != name and MODELS.get(n).arch == entry.arch
                and MODELS.get(n).attention == entry.attention
                and all(k not in from_file or _same(k, from_file[k][0], v, depth)
                        for k, v in MODELS.get(n).defaults.items())]
        raise CheckpointError(
            f"checkpoint {checkpoint} contradicts model {name}:\n  " + "\n  ".join(conflicts) +
            "\n  The file's args decide by default: drop the contradicting argument(s)"
            + (f", load it as {' or '.join(fits[:3])}" if fits else "")
            + ", or pass override_checkpoint_args=True (CLI: --override-checkpoint-args) to run what you gave.")

    if args is not None and "input_size" in args:
        size = int(args["input_size"])
        if "img_size" in kwargs:
            settings["img_size"] = {"value": kwargs["img_size"], "source": FROM_ARGUMENT,
                                    "checkpoint args": f"input_size={size}"}
        else:
            final["img_size"] = size
            settings["img_size"] = {"value": size, "source": f"{FROM_FILE} (input_size={size})"}
    if args is not None and args.get("model") is not None:
        settings["paper_model"] = {"value": args["model"], "source": f"{FROM_FILE} (model)"}

    build = entry.name
    out = {k: v for k, v in kwargs.items() if k not in keys}
    if entry.attention in ("symmetric", "rpc"):
        layers = final.get("rpc_layers", RPC_DEFAULTS["rpc_layers"] if entry.attention == "rpc" else "none")
        pap = _layers_list(layers, depth)
        if entry.attention == "symmetric" and pap:
            build = "rpc_" + name
            if build not in MODELS:
                raise CheckpointError(f"checkpoint {checkpoint}: its args run PAP ({from_file['rpc_layers'][1]}) "
                                      f"but {name} has no rpc_ counterpart to build; load it with an rpc_symvit_* "
                                      f"model of the same size")
        if build in MODELS and MODELS.get(build).attention == "rpc":
            out.update({k: final[k] for k in ("rpc_iters", "rpc_lambda") if final.get(k) is not None})
            out["rpc_layers"] = pap if pap else "none"
            settings["attention"] = {"value": "rpc" if pap else "symmetric", "blocks": pap,
                                     "source": settings.get("rpc_layers", {}).get("source", FROM_DEFAULT)}
            if build != name:
                settings["attention"]["built_as"] = build
        else:
            settings = {k: v for k, v in settings.items() if k not in ("rpc_iters", "rpc_lambda", "rpc_layers")}
            if "rpc_layers" in from_file:
                settings["attention"] = {"value": "symmetric", "blocks": [],
                                         "source": f"{FROM_FILE} ({from_file['rpc_layers'][1]})"}
    elif "scaled_form" in final:
        out["scaled_form"] = final["scaled_form"]
    if "num_classes" in final:
        out["num_classes"] = final["num_classes"]
    if "img_size" in final:
        out["img_size"] = final["img_size"]
    return ResolvedModel(build, out, settings)


def size_hint(name: str, sd: Mapping[str, Any]) -> str | None:
    """When the file's embed dim differs from ``name``'s, which registered model of the same kind fits it
    (e.g. the paper's 348-dim small for ``symvit_small_patch16_224``)."""
    entry = MODELS.get(name) if name in MODELS else None
    pe = sd.get("patch_embed.proj.weight")
    if entry is None or pe is None or entry.arch not in ARCHS:
        return None
    dim = int(pe.shape[0])
    if dim == ARCHS[entry.arch]["embed_dim"]:
        return None
    fits = [n for n in MODELS if MODELS.get(n).attention == entry.attention
            and MODELS.get(n).defaults == entry.defaults
            and ARCHS.get(MODELS.get(n).arch, {}).get("embed_dim") == dim]
    if not fits:
        return (f"the file has embed_dim {dim}, {name} has {ARCHS[entry.arch]['embed_dim']}, and no registered "
                f"{entry.attention} model has {dim}.")
    paper = " (the paper's small, Robust/models.py: 348 dims, 6 heads)" if dim == 348 else ""
    return (f"the file has embed_dim {dim}{paper} but {name} has {ARCHS[entry.arch]['embed_dim']}: "
            f"load it as {' or '.join(fits)}.")


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
    if "+" in name:  # BACKBONE+HEAD: the head checkpoint names (and pins) the backbone's
        from ..heads.model import load_head_model

        return load_head_model(name, checkpoint, device=device, **kwargs)
    checkpoint = resolve_checkpoint(name, checkpoint)
    if checkpoint == PRETRAINED:
        resolved = ResolvedModel(name, dict(kwargs), {"weights": {"value": "pretrained", "source": "timm"}})
        model = create_pretrained(name, **resolved.kwargs)
    else:
        obj = read_checkpoint_file(checkpoint, trusted_globals=trusted_globals) if checkpoint is not None else None
        resolved = resolve_model(name, checkpoint, kwargs, override_checkpoint_args=override_checkpoint_args,
                                 checkpoint_obj=obj)
        model = create_model(resolved.name, **resolved.kwargs)
        if checkpoint is not None:
            sd = extract_state_dict(obj, checkpoint, prefer_ema=prefer_ema)
            load_state_dict_checked(model, sd, checkpoint, hint=size_hint(name, sd))
    cfg = data_config_of(model, data_config, name=name)
    wrapped = Normalized(model, cfg["mean"], cfg["std"], data_config=cfg)
    wrapped.model_settings = resolved.settings
    wrapped.eval()
    if device is not None:
        wrapped.to(device)
    return wrapped
