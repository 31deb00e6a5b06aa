"""Checkpoint files in every layout researchers have: read safely, match strictly, explain mismatches.

Reads the RPC-Attention paper's DeiT layout ``{'model': sd, 'args': argparse.Namespace, 'epoch', 'optimizer',
...}`` (optionally ``model_ema``), DDP ``module.`` / torch.compile ``_orig_mod.`` prefixes, plain state dicts,
timm checkpoints (``state_dict``) and ``.safetensors``. Pickles are opened with ``weights_only=True`` plus an
allow-list (argparse.Namespace), so a file whose pickle would call e.g. ``os.system`` is refused, not run.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

SAFE_GLOBALS = [argparse.Namespace]
_PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and what is wrong."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_trusted_globals(names: Iterable[Any] | None) -> list[Any]:
    """``--trust-global`` / ``trusted_globals``: dotted names (``numpy.core.multiarray.scalar``) or the objects
    themselves -> the objects ``torch.load`` may additionally construct. An unknown name is a CheckpointError."""
    out = []
    for item in names or ():
        if not isinstance(item, str):
            out.append(item)
            continue
        module, _, attr = item.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError):
            raise CheckpointError(f"trusted global '{item}': cannot import it (expected module.name, e.g. "
                                  "numpy.core.multiarray.scalar)") from None
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "argparse.Namespace", "builtins.set", "builtins.frozenset",
                  "_codecs.encode")


def _torch_reason(err: BaseException) -> str:
    """torch.load's error without its ANSI codes, advice (weights_only=False, filing issues) or links."""
    text = _ANSI.sub("", str(err))
    keep = [ln.strip() for ln in text.splitlines() if ln.strip() and not re.search(
        r"weights_only|file an issue|Check the documentation|do those steps|Alternatively|add_safe_globals", ln)]
    reason = keep[-1] if keep else ""
    reason = re.sub(r"^(\(\d\)\s*)?WeightsUnpickler error:\s*", "", reason)
    return f"{type(err).__name__}: {reason}"[:160] if reason else type(err).__name__


def _refused_global(err: BaseException, path: Path) -> str | None:
    """The global a refused pickle names: from torch's message, else by scanning the pickle's opcodes
    (``pickletools`` reads, never executes) for the first global outside tensors/containers."""
    text = _ANSI.sub("", str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"allowlisted via .*but got <class '([\w.]+)'>", text)
    if found:
        return found.group(1)
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return None
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    name = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = f"{strings[-2]}.{strings[-1]}"
                else:
                    if isinstance(arg, str):
                        strings.append(arg)
                    continue
                if not name.startswith(_SAFE_PREFIXES):
                    return name
    except Exception:  # noqa: BLE001 - not a pickle stream at all
        return None
    return None


# torch.save (PyTorchFileWriter) stores every member of its zip uncompressed (ZIP_STORED; torch's
# caffe2/serialize/inline_container.h: "All files are stored uncompressed"): a member's size in memory is its
# size in the file, so reading it never allocates more than the file holds, however large the checkpoint (the
# paper's files are such zips). A compressed member comes from another zip tool, and torch.load allocates its
# declared size and inflates it whole before any key is checked: deflate reaches ~1032x, so a 10 MB file could
# ask for 10 GB. Honest compression of checkpoints gains little (float weights ~1.1x, pickles 3-10x); only runs
# of equal bytes (zero buffers) go beyond. So compressed members may inflate to 32x what they take in the file,
# or to 64 MiB in all whatever their ratio; anything beyond is refused before torch.load.
MAX_INFLATION = 32
INFLATION_ALLOWANCE = 64 * 2**20


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def check_zip_members(path: Path) -> None:
    """Refuse a zip-format checkpoint whose members would make torch.load allocate far more than the file
    holds (see MAX_INFLATION): read from the archive's central directory only, nothing is inflated."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # legacy (pre-1.6) torch format or not a checkpoint: torch.load decides
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: a damaged zip archive ({err}); expected a file written by torch.save") from None
    inflated = packed = 0
    for m in members:
        if m.header_offset + m.compress_size > size:
            raise CheckpointError(f"{path}: member {m.filename} claims {_mib(m.compress_size)} at offset "
                                  f"{m.header_offset} of a {_mib(size)} file (truncated or forged)")
        if m.compress_type == zipfile.ZIP_STORED:
            if m.file_size != m.compress_size:
                raise CheckpointError(f"{path}: stored member {m.filename} declares {_mib(m.file_size)} but holds "
                                      f"{_mib(m.compress_size)} (a forged archive)")
            continue
        inflated, packed = inflated + m.file_size, packed + m.compress_size
        if inflated > max(MAX_INFLATION * packed, INFLATION_ALLOWANCE):
            raise CheckpointError(
                f"{path}: compressed member {m.filename} inflates {_mib(m.compress_size)} to {_mib(m.file_size)} "
                f"({m.file_size / max(m.compress_size, 1):.0f}x; compressed members in all: {_mib(packed)} -> "
                f"{_mib(inflated)}): refused before reading it, as a zip bomb (torch.save stores members "
                f"uncompressed; re-save the weights with torch.save)")


def read_checkpoint_file(path: str | Path, *, mmap: bool = False, trusted_globals: Iterable[Any] | None = None) -> Any:
    """Deserialize a checkpoint without executing arbitrary pickled code.

    ``mmap=True`` maps a (zip-format) ``.pth`` instead of reading it, for a cheap look at its ``args`` and
    shapes; legacy-format files are then read normally. ``trusted_globals``: extra globals (dotted names or
    objects) the file may construct, for files you trust (CLI ``--trust-global``). A zip whose members would
    inflate far beyond the file's size is refused before it is read (:func:`check_zip_members`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointError(f"{path}: not a readable safetensors file ({_torch_reason(e)})") from None
    check_zip_members(path)
    extra = resolve_trusted_globals(trusted_globals)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + extra):
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # legacy (non-zip) format cannot be mapped
                    pass
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files (KeyError, IndexError, ...)
        refused = _refused_global(e, path) if isinstance(e, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: its pickle references {refused}, which is not on the allow-list "
                f"(tensors, containers, argparse.Namespace), and loading it could run arbitrary code; save a "
                f"state dict instead: torch.save(model.state_dict(), path) (or, only for a file you trust, allow "
                f"it: --trust-global {refused}, API trusted_globals=['{refused}'])") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.load cannot read it: {_torch_reason(e)}); "
                              "expected a file written by torch.save or a .safetensors file") from None


def extract_state_dict(obj: Any, path: str | Path = "<checkpoint>",
                       prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the model weights inside any of the supported layouts and strip wrapper prefixes."""
    sd = obj
    if isinstance(obj, Mapping):
        order = (("model_ema", "state_dict_ema", "model", "state_dict", "module") if prefer_ema  # timm: *_ema
                 else ("model", "state_dict", "module", "model_ema", "state_dict_ema"))
        for key in order:
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: found no state dict (expected tensors, or a dict with 'model' / 'state_dict')")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the state dict holds no tensors (keys: {list(sd)[:8]})")
    for prefix in _PREFIXES:
        body = [k for k in tensors if k not in ("mean", "std")] if prefix == "model." else list(tensors)
        if body and all(k.startswith(prefix) for k in body):  # DDP / compile / our [0,1] wrapper
            tensors = {k[len(prefix):]: tensors[k] for k in body}
    return tensors


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    """What architecture a ViT state dict looks like, e.g. 'symmetric ViT (qkv has 2*dim rows), dim 192...'."""
    parts = []
    pe = sd.get("patch_embed.proj.weight")
    dim = None
    if pe is not None:
        dim = pe.shape[0]
        parts.append(f"embed_dim {dim}, patch {pe.shape[-1]}, {pe.shape[1]} input channels")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if depth:
        parts.append(f"depth {depth}")
    qkv = sd.get("blocks.0.attn.qkv.weight")
    if qkv is not None and dim:
        rows = qkv.shape[0] / dim
        kind = {2: "a symmetric model (SymViT / RPC-SymViT)", 3: "an asymmetric softmax model (ViT / DeiT)"}
        parts.insert(0, f"qkv has {rows:g}*dim rows: {kind.get(rows, 'an unknown attention layout')}")
    s = sd.get("blocks.0.attn.s")
    if s is not None:
        parts.append("Scaled Attention " + ("'alpha x Asym' (one scalar s per block)" if tuple(s.shape) == (1,)
                                            else f"'Scaled S' (s of shape {tuple(s.shape)})" if s.dim() == 3
                                            else f"s of shape {tuple(s.shape)} (not the paper's layout)"))
    head = sd.get("head.weight")
    if head is not None:
        parts.append(f"{head.shape[0]} classes")
    pos = sd.get("pos_embed")
    if pos is not None:
        parts.append(f"{pos.shape[1]} position embeddings")
    return "; ".join(parts) or "no recognisable ViT keys"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model) if hasattr(model, "mean") and hasattr(model, "std") else model


def match_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path,
                     hint: str | None = None) -> None:
    """Raise one clear error listing missing / unexpected / mis-shaped keys and what the file looks like
    (``hint``, e.g. which registered model fits the file, goes on the first line)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if not (missing or unexpected or misshaped):
        return

    def show(keys: list[str], fmt=lambda k: k) -> str:
        return ", ".join(fmt(k) for k in keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

    lines = [f"checkpoint {path} does not fit {type(model).__name__}:" + (f" {hint}" if hint else "")]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if misshaped:
        lines.append("  mis-shaped keys (%d): %s" % (len(misshaped), show(
            misshaped, lambda k: f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")))
    lines.append(f"  the file looks like: {describe_state_dict(sd)}")
    lines.append(f"  the model is:        {describe_state_dict(own)}")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(model: nn.Module, path: str | Path, *, prefer_ema: bool = False, strict: bool = True,
                    trusted_globals: Iterable[Any] | None = None) -> nn.Module:
    """Load a checkpoint file into a timm-convention model (or our [0,1] wrapper around one)."""
    sd = extract_state_dict(read_checkpoint_file(path, trusted_globals=trusted_globals), path, prefer_ema=prefer_ema)
    return load_state_dict_checked(model, sd, path, strict=strict)


def load_state_dict_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path, *,
                            strict: bool = True, hint: str | None = None) -> nn.Module:
    """Load an extracted state dict (from ``path``) strictly, with :func:`match_state_dict`'s explanation.
    A model with its own loader conventions renames (or refuses, in one line) first: ``adapt_state_dict(sd,
    path)``, as timm's ``pretrained_filter_fn`` (FAN's key filter, models/fan.py)."""
    target = _unwrap(model)
    adapt = getattr(target, "adapt_state_dict", None)
    if callable(adapt):
        sd = adapt(sd, path)
    if strict:
        match_state_dict(target, sd, path, hint)
    ref = next(target.parameters())
    target.load_state_dict({k: v.to(ref.device) for k, v in sd.items()}, strict=strict)
    return model


def read_checkpoint_metadata(path: str | Path, trusted_globals: Iterable[Any] | None = None) -> dict[str, Any]:
    """The architecture kwargs a file carries (our safetensors metadata, or the paper's ``args``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in meta.items()}
    obj = read_checkpoint_file(path, trusted_globals=trusted_globals)
    if isinstance(obj, Mapping) and isinstance(obj.get("args"), argparse.Namespace):
        return {"args": vars(obj["args"])}
    return {}


def save_checkpoint(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write weights as ``.safetensors`` (with JSON metadata) or a plain ``.pt``/``.pth`` state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    else:
        torch.save({"model": sd, "meta": dict(metadata or {})}, path)
    return path


# -- checkpoint names: the one place :packaged / :pretrained / a path are resolved ------------------------
#: the shipped checkpoints (``NAME:packaged`` = ``PACKAGED_DIR/NAME.safetensors``)
PACKAGED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: ``timm:<name>:pretrained``: timm's published weights (timm's download and cache)
PRETRAINED = "pretrained"


def split_spec(spec: str) -> tuple[str, str | None]:
    """'name[:checkpoint]' -> (name, checkpoint); 'timm:<name>[:ckpt]' keeps its prefix."""
    prefix = ""
    if spec.startswith("timm:"):
        prefix, spec = "timm:", spec[len("timm:"):]
    name, sep, ckpt = spec.partition(":")
    return prefix + name, (ckpt or None) if sep else None


def shipped_file(filename: str) -> Path | None:
    """A shipped checkpoint by its file name (``symvit_micro_patch4_32.safetensors``), or None."""
    path = PACKAGED_DIR / filename
    return path if path.is_file() else None


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> str | None:
    """The one place ``:packaged`` / ``:pretrained`` / a file path are resolved (API and CLI):
    ``packaged`` -> the shipped file of ``name``; ``pretrained`` -> kept as is (``timm:<name>`` only);
    a path -> checked to exist. Bad values raise :class:`CheckpointError` naming the model."""
    if checkpoint is None:
        return None
    if str(checkpoint) == "packaged":
        path = shipped_file(f"{name}.safetensors")
        if path is None:
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


def named_model(path: str | Path | None) -> str | None:
    """The model a checkpoint says it holds: ``train``'s recipe or build record in its metadata (None for
    files that do not say, e.g. plain state dicts)."""
    if path is None or Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    meta = read_checkpoint_metadata(path)
    for key in ("build", "recipe"):
        entry = meta.get(key)
        if isinstance(entry, Mapping) and isinstance(entry.get("model"), str):
            return entry["model"]
    return None


def check_named_model(name: str, path: str | Path | None, allow_other: bool = False) -> None:
    """Weights of another model with the same shapes load silently (an RPC checkpoint into SymViT: 40.6 %
    clean accuracy); a file that names its model must be loaded as that model, unless ``allow_other``
    (``--override-checkpoint-args``; fine-tuning with ``train --init``)."""
    named = named_model(path)
    if named is not None and named != name and not allow_other:
        raise CheckpointError(f"checkpoint {path} holds model {named} (its metadata says so), not {name}: evaluate "
                              f"it as --model {named}:{path}, or pass --override-checkpoint-args to load it as {name}")
