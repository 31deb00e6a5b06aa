"""The RPC-Attention paper's checkpoints carry their training run's ``args`` (argparse.Namespace, see the
paper's ``Attack/main.py`` / ``Scaled_Attention/main_train.py``): :func:`resolve_model` translates them into our
model arguments, so the file, not retyped kwargs, decides how the model runs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import PRETRAINED, CheckpointError, extract_state_dict, read_checkpoint_file
from .vit import ARCHS, MODELS, RPC_DEFAULTS, ModelEntry
from ..attention import resolve_layers


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
    from_file = _settings_in_file(args, entry, depth, head_rows) if args is not None else {}
    keys = ["num_classes"] + (["scaled_form"] if entry.attention == "scaled" else ["rpc_iters", "rpc_lambda", "rpc_layers"]
                              if entry.attention == "rpc" or "rpc_layers" in from_file else [])
    settings, final = _merge(name, entry, keys, kwargs, from_file, override_checkpoint_args, depth, checkpoint)
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
    return _build_target(name, entry, checkpoint, {k: v for k, v in kwargs.items() if k not in keys}, final,
                         settings, from_file, depth)


def _settings_in_file(args: dict[str, Any], entry: ModelEntry, depth: int,
                      head_rows: int | None) -> dict[str, tuple[Any, str]]:
    """{key: (value, how the file says it)} for every model setting the paper's ``args`` carry."""
    from_file: dict[str, tuple[Any, str]] = {}
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
    return from_file


def _merge(name: str, entry: ModelEntry, keys: list[str], kwargs: dict[str, Any],
           from_file: dict[str, tuple[Any, str]], override: bool, depth: int,
           checkpoint: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(settings with their sources, final values): the file wins over arguments and presets unless
    ``override``; a contradiction without it raises naming both values, the file and a fitting model."""
    settings: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    conflicts: list[str] = []
    for key in keys:
        given, preset = key in kwargs, key in entry.defaults
        if key in from_file:
            fval, how = from_file[key]
            other = ((kwargs[key], f"argument {key}={kwargs[key]!r} was given", FROM_ARGUMENT) if given else
                     (entry.defaults[key], f"{name} presets {key}={entry.defaults[key]!r}", f"{FROM_PRESET} {name}")
                     if preset else None)
            if other is None or _same(key, fval, other[0], depth):
                settings[key], final[key] = {"value": fval, "source": f"{FROM_FILE} ({how})"}, fval
            elif override:
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
    return settings, final


def _build_target(name: str, entry: ModelEntry, checkpoint: Any, out: dict[str, Any], final: dict[str, Any],
                  settings: dict[str, dict[str, Any]], from_file: dict[str, tuple[Any, str]],
                  depth: int) -> ResolvedModel:
    """The factory to build (a ``symvit_*`` meeting a robust file becomes its ``rpc_`` counterpart) and its
    kwargs; the attention setting says which blocks run PAP."""
    build = entry.name
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
    for key in ("num_classes", "img_size"):
        if key in final:
            out[key] = final[key]
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
