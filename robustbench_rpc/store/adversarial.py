"""Adversarial images kept with a run: one safetensors file per unit, their manifest listing, export.

Layout: ``<run>/adversarial/<model_key>/<eval_key>/unit-000003.safetensors`` holds ``images`` (float32,
(n, C, H, W), the exact tensors the model was scored on: lossless) and ``sample_ids`` (int64, (n,)), with
a header naming the model, the evaluation, the unit and a digest per sample (sha256 of its float32 bytes,
16 hex characters), so a changed file names the changed sample even without a second run to compare with.

A unit's file is written atomically (``atomic.write_bytes``) *before* its rows enter the store: after a
kill -9 a unit either has rows and its file, or a file and no rows (it is recomputed and the file replaced
by the same name), never rows without images; one file per unit index, so nothing is ever duplicated.

Exports (``export_set``): ``.pt``, RobustBench's layout (one float32 tensor (N, C, H, W) in the order of
the evaluated sample ids, as its ``new-external-evaluations`` template asks); ``.safetensors``, ours
(images + sample_ids + what they are); a folder of 8-bit PNGs named ``<sample_id>.png``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from ..atomic import write_bytes
from ..evalspec import EvalSpec, SuiteError, describe_eval
from ..models.checkpoint import sha256_of

ADVERSARIAL_DIR = "adversarial"
#: the rows key under which a unit's adversarial images travel from the unit to the writer (never stored)
IMAGES_KEY = "_adversarial_images"
SET_FORMAT = "robustbench-rpc adversarial set"
FORMAT_VERSION = "1"
#: header bytes per file beyond the tensors (JSON header, digests): a generous bound for the estimate
_HEADER_BYTES = 4096


class AdversarialSetError(SuiteError):
    """A saved or given adversarial set that cannot be used: one line naming the file and what is wrong."""


def set_folder(run_dir: str | Path, model_key: str, eval_key: str) -> Path:
    return Path(run_dir) / ADVERSARIAL_DIR / model_key / eval_key


def unit_file(run_dir: str | Path, model_key: str, eval_key: str, unit: int) -> Path:
    return set_folder(run_dir, model_key, eval_key) / f"unit-{int(unit):06d}.safetensors"


def sample_digest(image: torch.Tensor) -> str:
    """sha256 (16 hex) of one image's float32 bytes: the identity of a saved image."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def set_bytes(n: int, image_shape: Iterable[int], units: int = 1) -> int:
    """Disk bytes of ``n`` saved images of ``image_shape`` in ``units`` files (float32 + int64 id each)."""
    return n * (4 * math.prod(int(s) for s in image_shape) + 8 + 20) + units * _HEADER_BYTES


def encode(images: torch.Tensor, sample_ids: Iterable[int], meta: dict[str, Any]) -> bytes:
    """The safetensors bytes of a set: float32 images, int64 ids, ``meta`` and per-sample digests."""
    from safetensors.torch import save

    imgs = images.detach().to("cpu", torch.float32).contiguous()
    ids = torch.as_tensor(list(sample_ids), dtype=torch.int64)
    if imgs.dim() != 4 or len(ids) != imgs.shape[0]:
        raise ValueError(f"an adversarial set needs (n, C, H, W) images and n ids; got {tuple(imgs.shape)} "
                         f"and {len(ids)} ids")
    header = {"format": SET_FORMAT, "version": FORMAT_VERSION,
              "digests": json.dumps([sample_digest(im) for im in imgs]),
              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    return save({"images": imgs, "sample_ids": ids}, metadata=header)


def write_unit_images(run_dir: str | Path, model_key: str, eval_key: str, unit: int,
                      sample_ids: Iterable[int], images: torch.Tensor) -> Path:
    """Write one unit's adversarial images atomically (the previous file, if any, or the new one whole)."""
    path = unit_file(run_dir, model_key, eval_key, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode(images, sample_ids, {"model_key": model_key, "eval_key": eval_key, "unit": str(int(unit))})
    return write_bytes(path, data)


def read_header(path: str | Path) -> dict[str, str] | None:
    """A set file's metadata, or None when the file is absent or not a readable safetensors set."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 - absent, cut short, not safetensors: not a usable file
        return None
    return meta if meta.get("format") == SET_FORMAT and {"images", "sample_ids"} <= keys else None


def read_set(path: str | Path) -> tuple[list[int], torch.Tensor, dict[str, str]]:
    """(sample ids, float32 images, header) of a set file; AdversarialSetError naming the file otherwise."""
    from safetensors.torch import load

    path = Path(path)
    try:
        tensors = load(path.read_bytes())
    except OSError as err:
        raise AdversarialSetError(f"cannot read the adversarial set {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise AdversarialSetError(f"{path} is not a readable safetensors file ({err})") from None
    header = read_header(path)
    if header is None or "images" not in tensors or "sample_ids" not in tensors:
        raise AdversarialSetError(f"{path} is not a {SET_FORMAT} (it needs tensors 'images' and 'sample_ids' "
                                  f"and format {SET_FORMAT!r} in its metadata)")
    ids = [int(i) for i in tensors["sample_ids"].tolist()]
    images = tensors["images"]
    if images.dim() != 4 or images.shape[0] != len(ids):
        raise AdversarialSetError(f"{path}: images of shape {tuple(images.shape)} for {len(ids)} sample ids")
    return ids, images.float(), header


def unit_files(run_dir: str | Path, model_key: str, eval_key: str) -> dict[int, Path]:
    """{unit: file} of the unit files present for one (model, evaluation)."""
    folder = set_folder(run_dir, model_key, eval_key)
    out = {}
    for f in sorted(folder.glob("unit-*.safetensors")) if folder.is_dir() else ():
        try:
            out[int(f.stem.split("-", 1)[1])] = f
        except ValueError:
            continue
    return out


def unit_saved(run_dir: str | Path, model_key: str, eval_key: str, unit: int, n: int | None = None) -> bool:
    """Whether unit ``unit`` has a readable file holding ``n`` images (any number when None)."""
    header = read_header(unit_file(run_dir, model_key, eval_key, unit))
    if header is None:
        return False
    try:
        return n is None or len(json.loads(header["digests"])) == int(n)
    except (KeyError, ValueError, TypeError):
        return False


def load_saved(run_dir: str | Path, model_key: str, eval_key: str,
               units: Iterable[int] | None = None) -> tuple[list[int], torch.Tensor]:
    """(sample ids, images) of one saved (model, evaluation), units in order (= the dataset's order)."""
    files = unit_files(run_dir, model_key, eval_key)
    wanted = sorted(files) if units is None else list(units)
    missing = [u for u in wanted if u not in files]
    if not files or missing:
        raise AdversarialSetError(f"no saved adversarial images of model {model_key} on evaluation {eval_key} in "
                                  f"{set_folder(run_dir, model_key, eval_key)}"
                                  + (f" for unit(s) {missing[:5]}" if files else "")
                                  + " (run it with --save-adversarial, or save_adversarial = true in the suite)")
    ids: list[int] = []
    parts = []
    for u in wanted:
        i, im, _ = read_set(files[u])
        ids += i
        parts.append(im)
    return ids, torch.cat(parts)


def listing(run_dir: str | Path, done: dict[tuple[str, str], dict[int, int]],
            labels: dict[tuple[str, str], tuple[str, str]]) -> list[dict[str, Any]]:
    """The manifest's record of the saved sets: per stored unit with a file, its path, n and sha256.

    ``done``: {(model_key, eval_key): {unit: n}} of the units in the store; only their files are listed (a
    file whose rows are not stored is not a result). ``labels``: (model name, evaluation label) per pair."""
    run_dir = Path(run_dir)
    out = []
    for (mk, ek), units in sorted(done.items()):
        files = unit_files(run_dir, mk, ek)
        for u in sorted(set(units) & set(files)):
            model, evaluation = labels.get((mk, ek), (mk, ek))
            out.append({"model": model, "model_key": mk, "evaluation": evaluation, "eval_key": ek, "unit": u,
                        "n": units[u], "file": files[u].relative_to(run_dir).as_posix(),
                        "sha256": sha256_of(files[u]), "bytes": files[u].stat().st_size})
    return out


def evaluation_label(info: dict) -> str:
    """'attack pgd eps=8/255 steps=10 ...': an evaluation as the manifest and export-adversarial name it."""
    if not info:
        return "?"
    try:
        return describe_eval(EvalSpec(info.get("kind", "?"), info.get("name", "?"), info.get("dataset", "?"),
                                      dict(info.get("params") or {})))
    except (KeyError, TypeError):
        return f"{info.get('kind')} {info.get('name')}"


# ------------------------------------------------------------------------------------------------ export
def export_set(images: torch.Tensor, sample_ids: list[int], dest: str | Path, meta: dict[str, Any]) -> Path:
    """Write a set as ``.pt`` (RobustBench: one tensor, in the order given), ``.safetensors`` (ours) or, for a
    path without a suffix, a folder of 8-bit PNGs named by sample id; each file atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix in (".pt", ".pth"):
        buf = io.BytesIO()
        torch.save(images.detach().to("cpu", torch.float32).contiguous(), buf)
        return write_bytes(dest, buf.getvalue())
    if dest.suffix == ".safetensors":
        return write_bytes(dest, encode(images, sample_ids, meta))
    if dest.suffix:
        raise AdversarialSetError(f"--out {dest}: export as .pt (RobustBench), .safetensors (with the sample ids) "
                                  "or a folder name without a suffix (8-bit PNGs named by sample id)")
    dest.mkdir(parents=True, exist_ok=True)
    for sid, img in zip(sample_ids, images):
        write_bytes(dest / f"{int(sid)}.png", png_bytes(img))
    return dest


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """The images as an 8-bit PNG stores them: round(255 x) / 255 (values in [0, 1])."""
    return (images.clamp(0, 1) * 255).round() / 255


def png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (quantize_8bit(image.detach().float().cpu()) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- gallery
#: the rows key under which unit 0's display images travel to the writer (never stored in the database)
GALLERY_KEY = "_gallery_images"
GALLERY_DIR = "gallery"
GALLERY_SAMPLES = 3  # the first images of unit 0 shown per model
GALLERY_PIXELS = 128  # display images are at most this many pixels on a side


def _display(images: torch.Tensor, smooth: bool = True) -> torch.Tensor:
    """uint8 display copies, at most GALLERY_PIXELS a side (antialiased; nearest for a perturbation's texture)."""
    import torch.nn.functional as F

    x = images.detach().to("cpu", torch.float32).clamp(0, 1)
    side = max(x.shape[-2:])
    if side > GALLERY_PIXELS:
        size = [max(1, round(s * GALLERY_PIXELS / side)) for s in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False) if smooth \
            else F.interpolate(x, size=size, mode="nearest")
    return (x * 255).round().to(torch.uint8)


def gallery_images(x: torch.Tensor, adversarial: torch.Tensor | None, eps: float | None = None,
                   first: int | None = None) -> dict[str, torch.Tensor]:
    """Unit 0's first images as the report's gallery shows them: clean, and for an attack the adversarial
    image and its perturbation amplified so +-eps spans black to white (``scale``; by the largest change
    where the attack has no budget). Small uint8 copies: the page loads fast and the folder stays small."""
    n = min(first or GALLERY_SAMPLES, x.shape[0])
    clean = x[:n].detach().to("cpu", torch.float32)
    out = {"clean": _display(clean)}
    if adversarial is not None:
        adv = adversarial[:n].detach().to("cpu", torch.float32)
        delta = adv - clean
        biggest = delta.abs().flatten(1).amax(1).clamp_min(1e-12)
        scale = torch.full((n,), 0.5 / float(eps)) if eps else 0.5 / biggest
        out.update(adversarial=_display(adv), perturbation=_display(0.5 + delta * scale.view(-1, 1, 1, 1), False),
                   scale=scale.float())
    return out


def gallery_file(run_dir: str | Path, model_key: str, eval_key: str) -> Path:
    return Path(run_dir) / GALLERY_DIR / model_key / f"{eval_key}.safetensors"


def write_gallery(run_dir: str | Path, model_key: str, eval_key: str, sample_ids: Iterable[int],
                  tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save

    ids = list(sample_ids)[: next(iter(tensors.values())).shape[0]]
    path = gallery_file(run_dir, model_key, eval_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({**{k: v.contiguous() for k, v in tensors.items()},
                 "sample_ids": torch.as_tensor(ids, dtype=torch.int64)}, metadata={"format": "robustbench-rpc gallery"})
    return write_bytes(path, data, durable=False)  # display copies: whole or absent, no fsync per unit 0


def read_gallery(run_dir: str | Path, model_key: str, eval_key: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load

    path = gallery_file(run_dir, model_key, eval_key)
    try:
        return load(path.read_bytes())
    except Exception:  # noqa: BLE001 - absent or damaged: the gallery recomputes or leaves it out
        return None
