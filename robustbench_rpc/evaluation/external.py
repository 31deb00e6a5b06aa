"""External evaluations: robust accuracy of a model on adversarial images made elsewhere.

RobustBench takes evaluations it did not run as a ``.pt`` tensor of the test set's adversarial images (its
``new-external-evaluations`` issue template: "a .pt tensor of the same size of the corresponding test set")
and scores ``model(x_adv)`` on them. A given set here is one of:

* ``.pt`` / ``.pth``: RobustBench's layout, one float tensor (N, C, H, W) in the order of the evaluated sample
  ids (a ``--subset`` file's order, e.g. RobustBench's 5,000 ImageNet ids; ascending ids otherwise);
* ``.safetensors``: ours (``store/adversarial.py``: ``images`` + ``sample_ids``), as ``export-adversarial`` or
  a run's unit files write it;
* a folder of PNG files named ``<sample_id>.png`` (8-bit: each value may sit up to half a step, 0.5/255, from
  the float it stood for, which the budget check allows and records as ``quantization_tolerance``).

Every image is checked against its clean image before any model runs (``check_given``): the ids (none
missing, none twice), the shape, finite values in [0, 1] and the budget, measured as every attack's output is
(``attacks.budget.measure_budget``: float rounding allowed, nothing more). A fault is one line: how many
images, the worst excess. Rows are computed as an attack's (``attacks.attack_outcomes`` on the given images):
``correct1`` = clean-correct AND correct on ``x_adv``, RobustBench's robust accuracy.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..evalspec import EvalSpec, STOCHASTIC_EVAL_REPEATS, SuiteError, eps_label, linf_range_problem, parse_eps
from ..store.adversarial import AdversarialSetError, read_set
from ..store.rows import NORM_COLUMNS
from ..models.checkpoint import sha256_of
from ..attacks.budget import canonical_norm, measure_budget
from ..data.subsets import sample_ids
from .. import attacks
from ..attacks.base import amp_dtype_of

FORMATS = ("robustbench-pt", "safetensors", "png-folder")
#: eval key -> (unit, sample ids) -> the given images of those ids (registered before the units run)
_GIVEN: dict[str, Callable[[int, list[int]], torch.Tensor]] = {}


@dataclass
class GivenSet:
    """An adversarial set as read from disk: images, their ids (None: RobustBench's layout, ids by order)."""

    path: Path
    fmt: str
    sha256: str
    images: torch.Tensor | None
    ids: list[int] | None


def set_format(path: Path) -> str:
    if path.is_dir():
        return "png-folder"
    if path.suffix in (".pt", ".pth"):
        return "robustbench-pt"
    if path.suffix == ".safetensors":
        return "safetensors"
    raise AdversarialSetError(f"--adversarial {path}: not a .pt (RobustBench), .safetensors (ours) or a folder of "
                              "<sample_id>.png files")


def set_sha256(path: Path) -> str:
    """sha256 of the file; of a PNG folder, of its sorted (name, file sha256) list."""
    if not path.is_dir():
        return sha256_of(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.png")):
        h.update(f"{f.name}:{sha256_of(f)}\n".encode())
    return h.hexdigest()


def read_given(path: str | Path) -> GivenSet:
    """Read a given set (any of the three formats); one line naming the file when it cannot be."""
    path = Path(path)
    if not path.exists():
        raise AdversarialSetError(f"--adversarial {path}: no such file or folder")
    fmt = set_format(path)
    sha = set_sha256(path)
    if fmt == "safetensors":
        ids, images, _ = read_set(path)
        return GivenSet(path, fmt, sha, images, ids)
    if fmt == "robustbench-pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors: one line naming the file
            raise AdversarialSetError(f"--adversarial {path}: cannot be read as a tensor file ({err})") from None
        if isinstance(obj, dict):  # torchattacks' save(): {"adv_inputs": ..., "labels": ...}
            obj = next((obj[k] for k in ("adv_inputs", "x_adv", "images", "adv") if k in obj), obj)
        if not isinstance(obj, torch.Tensor):
            raise AdversarialSetError(f"--adversarial {path}: holds a {type(obj).__name__}, RobustBench's layout is "
                                      "one tensor (N, C, H, W)")
        return GivenSet(path, fmt, sha, obj.float(), None)
    return _read_pngs(path, sha)


def _read_pngs(folder: Path, sha: str) -> GivenSet:
    import numpy as np
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    if not files:
        raise AdversarialSetError(f"--adversarial {folder}: a folder without <sample_id>.png files")
    bad = [f.name for f in files if not f.stem.isdigit()]
    if bad:
        raise AdversarialSetError(f"--adversarial {folder}: {len(bad)} PNG file(s) not named by a sample id, e.g. "
                                  f"{bad[0]} (expected <sample_id>.png)")
    ids, images = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
        except OSError as err:
            raise AdversarialSetError(f"--adversarial {f}: not a readable PNG ({err})") from None
        t = torch.from_numpy(arr.copy())
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        ids.append(int(f.stem))
        images.append(t.float() / 255)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise AdversarialSetError(f"--adversarial {folder}: PNG files of different sizes {sorted(shapes)[:3]}")
    return GivenSet(folder, "png-folder", sha, torch.stack(images), ids)


def external_spec(ev: dict[str, Any], dataset: str, where: str) -> EvalSpec:
    """A ``kind = "external"`` evaluation: the file's sha256 and the budget are its identity (not its path)."""
    for key in ("adversarial", "eps"):
        if key not in ev:
            raise SuiteError(f"{where}: an external evaluation needs '{key}'")
    try:
        norm = canonical_norm(ev.get("norm", "Linf"))
    except ValueError as err:
        raise SuiteError(f"{where}: {err}") from None
    eps = parse_eps(ev["eps"], where)
    beyond = linf_range_problem(eps) if norm == "Linf" else None  # every set would pass such a budget
    if beyond:
        raise SuiteError(f"{where}: eps={eps:g} {beyond}")
    path = Path(str(ev["adversarial"])).expanduser()
    if not path.exists():
        raise AdversarialSetError(f"{where}: adversarial set {path} not found")
    fmt, sha = set_format(path), set_sha256(path)
    params = {"external": True, "adversarial_sha256": sha, "adversarial_format": fmt, "norm": norm, "eps": eps,
              "accuracy": "robust"}
    if fmt == "png-folder":
        params["quantization_tolerance"] = 0.5 / 255
    name = f"external {norm} eps={eps_label(eps)} sha256:{sha[:12]}"
    return EvalSpec("external", name, dataset, params, resolved={"file": str(path.resolve())})


# ------------------------------------------------------------------------------------------------ checks
def _png_tolerance(norm: str, numel: int, step: float) -> float:
    """The largest norm of a per-value rounding of at most ``step``."""
    return step if norm == "Linf" else step * (math.sqrt(numel) if norm == "L2" else numel)


def check_given(given: GivenSet, clean: torch.utils.data.Dataset, eps: float, norm: str, where: str,
                quantization: float = 0.0) -> tuple[list[int], torch.Tensor]:
    """(evaluated ids, their images in that order), every image checked against its clean image: ids,
    shape, finite, [0, 1] and the budget (``measure_budget``'s rounding bound plus ``quantization`` per value).
    Faults raise one AdversarialSetError line before any model runs."""
    ids = [int(i) for i in sample_ids(clean)]
    n = len(ids)
    images = given.images
    if given.ids is None:  # RobustBench's layout: one image per evaluated id, in order
        if images.dim() != 4 or images.shape[0] != n:
            raise AdversarialSetError(
                f"{where}: {given.path} holds a tensor of shape {tuple(images.shape)}; the evaluated set has {n} "
                f"images (RobustBench's layout: one (N, C, H, W) tensor, N = {n}, in the order of the sample ids)")
        ordered = images
    else:
        seen: dict[int, int] = {}
        twice = [i for k, i in enumerate(given.ids) if seen.setdefault(i, k) != k]
        if twice:
            raise AdversarialSetError(f"{where}: {given.path} holds {len(twice)} sample id(s) twice, e.g. {twice[:5]}")
        missing = [i for i in ids if i not in seen]
        if missing:
            raise AdversarialSetError(f"{where}: {len(missing)} of the {n} evaluated sample ids have no image in "
                                      f"{given.path}, e.g. {missing[:5]}; nothing was evaluated")
        ordered = images[torch.tensor([seen[i] for i in ids], dtype=torch.long)] if n else images[:0]
    x0 = clean[0][0] if n else None
    if n and tuple(ordered.shape[1:]) != tuple(x0.shape):
        raise AdversarialSetError(f"{where}: images of {given.path} have shape {tuple(ordered.shape[1:])}, the clean "
                                  f"images {tuple(x0.shape)} (C, H, W); nothing was evaluated")
    tol = _png_tolerance(norm, int(x0.numel()), quantization) if n and quantization else 0.0
    counts = {"nonfinite": 0, "outside": 0, "over": 0}
    worst_excess, lo, hi = -math.inf, math.inf, -math.inf
    chunk = 256
    for s in range(0, n, chunk):
        x = torch.stack([clean[i][0] for i in range(s, min(s + chunk, n))]).float()
        r = measure_budget(x, ordered[s:s + chunk], eps, norm, clip=True, extra_tol=tol)
        counts["nonfinite"] += r.nonfinite
        counts["outside"] += r.outside_box
        if r.norms is not None:
            counts["over"] += r.over_budget
            worst_excess = max(worst_excess, r.worst_excess)
        lo, hi = min(lo, r.box_range[0]), max(hi, r.box_range[1])
    if any(counts.values()):
        parts = []
        if counts["nonfinite"]:
            parts.append(f"{counts['nonfinite']} hold NaN/inf")
        if counts["outside"]:
            parts.append(f"{counts['outside']} leave [0, 1] (min {lo:.6g}, max {hi:.6g})")
        if counts["over"]:
            parts.append(f"{counts['over']} exceed {norm} eps={eps_label(eps)} (worst excess {worst_excess:.3g} = "
                         f"{worst_excess * 255:.3g}/255" + (f", beyond the 8-bit rounding {tol:.3g} allowed" if tol
                                                            else "") + ")")
        raise AdversarialSetError(f"{where}: {sum(counts.values())} fault(s) in {n} images of {given.path}: "
                                  + "; ".join(parts) + "; nothing was evaluated")
    return ids, ordered.contiguous()


def register_given(eval_key: str, lookup: Callable[[int, list[int]], torch.Tensor]) -> None:
    _GIVEN[eval_key] = lookup


def register_checked(eval_key: str, ids: list[int], images: torch.Tensor) -> None:
    """Serve the checked images of an external evaluation to its units by sample id."""
    index = {sid: k for k, sid in enumerate(ids)}

    def lookup(unit: int, wanted: list[int]) -> torch.Tensor:
        return images[torch.tensor([index[int(i)] for i in wanted], dtype=torch.long)]

    register_given(eval_key, lookup)


# -------------------------------------------------------------------------------------------------- rows
class GivenImages:
    """An 'attack' that returns given images: ``attack_outcomes`` then checks and scores them exactly as it
    scores an attack's output (same classification passes, same budget check)."""

    space, clip = "pixel", True

    def __init__(self, images: torch.Tensor, eps: float | None, norm: str | None, name: str,
                 tolerance: float = 0.0):
        self.images, self.eps, self.norm, self.name, self.tolerance = images, eps, norm, name, tolerance

    def __call__(self, model, x, y):
        if self.images.shape != x.shape:
            raise AdversarialSetError(f"{self.name}: images of shape {tuple(self.images.shape[1:])} for clean images "
                                      f"of shape {tuple(x.shape[1:])}")
        return self.images.to(x.device, x.dtype)


def given_rows(model: torch.nn.Module, e: EvalSpec, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
               unit: int, device: str, amp: str | None) -> dict[str, list]:
    """The per-sample rows of one unit of an ``external`` or ``transfer`` evaluation (robust accuracy)."""
    if e.key not in _GIVEN:
        raise AdversarialSetError(f"{e.name}: its adversarial images were not loaded before the run")
    images = _GIVEN[e.key](unit, [int(i) for i in ids.tolist()])
    p = e.params
    eps = None if p.get("quantize") else p.get("eps")
    tol = _png_tolerance(p["norm"], int(x[0].numel()), p["quantization_tolerance"]) \
        if p.get("quantization_tolerance") and eps is not None else 0.0
    given = GivenImages(images, eps, p.get("norm"), e.name)
    stochastic = isinstance(getattr(model, "_orig_mod", model), attacks.EOTModel)
    out = attacks.attack_outcomes(model, given, x, y, amp=amp_dtype_of(amp), tol=tol,
                                  repeats=STOCHASTIC_EVAL_REPEATS if stochastic else 1)
    return {
        "sample_id": ids.tolist(), "label": y.tolist(), "pred": out.adv_pred.tolist(),
        "correct1": out.adv_correct1.int().tolist(), "correct5": out.adv_correct5.int().tolist(),
        "confidence": out.adv_confidence.float().tolist(),
        "clean_correct1": out.clean_correct1.int().tolist(), "clean_correct5": out.clean_correct5.int().tolist(),
        "plain_correct1": out.plain_correct1.int().tolist(), "plain_correct5": out.plain_correct5.int().tolist(),
        **{k: getattr(out, k).float().tolist() for k in NORM_COLUMNS},
    }
