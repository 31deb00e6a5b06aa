"""``robustbench-rpc train`` for a segmentation recipe (a TOML with ``task = "segmentation"``).

Fine-tunes a Segmenter (``models/segmenter.py``) with per-pixel cross-entropy, pixels labelled ``ignore_index``
(255) left out of the loss, as Segmenter (rstrudel/segmenter ``segm/engine.py``: ``CrossEntropyLoss(
ignore_index=IGNORE_LABEL)``) and mmsegmentation train. The encoder may start from a classification checkpoint
of its backbone (``model.backbone_init``: a shipped file name or a path), its position embedding resampled to the
window's patch grid (timm's ``resample_abs_pos_embed``) and its classifier dropped; the decoder starts from
Segmenter's initialisation. A recipe::

    name, version, description, seed, task = "segmentation"
    [model]      name (a registered segmentation model), kwargs, backbone_init
    [data]       dataset (digits-seg64 | ade20k | folder), root, limit, scale (min, max), flip
    [optim]      lr, weight_decay, batch_size, epochs, warmup_epochs, min_lr, clip_grad
    [validation] limit, every

Training data: ``digits-seg64`` (its train canvases; validation on its test canvases), or an ADE20K-layout
folder (``images/training`` + ``annotations/training``, validation on ``validation``) or a folder of one's own
(``images/``, ``masks/``, ``classes.txt``): each image rescaled by a random factor in ``scale`` of the window /
shorter side, randomly cropped to the window (padded with the ignore index), flipped when ``flip``; as
Segmenter's ADE20K pipeline (random resize 0.5-2.0, crop 512, flip) at the model's window.

Resumable: every epoch writes ``last.safetensors`` (the weights, the recipe in the metadata), ``metrics.csv``
and ``state.pt`` (weights, optimizer, schedule, random streams), each atomically; rerunning the same command
continues after the last finished epoch, and a different recipe in the same folder is refused in one line.
Validation reports mIoU / aAcc (``metrics_seg``) on the validation images. One process (no torchrun).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.segmentation import IGNORE_INDEX, SegmentationDataError, ade20k, digits_seg64, segmentation_folder
from . import state as st
from .recipe import RECIPES_DIR, RecipeError
from ..metrics_seg import batch_areas, seg_metrics
from ..models.sliding import SlidingWindow
from ..models.checkpoint import PACKAGED_DIR, extract_state_dict, read_checkpoint_file
from ..store.manifest import sha256_file
from ..models import load_model, save_checkpoint
from ..models.contract import task_of
from ..store.lock import lock_folder, refuse_foreign_folder

DEFAULTS = {
    "model": {"name": None, "kwargs": {}, "backbone_init": None},
    "data": {"dataset": "digits-seg64", "root": None, "limit": None, "scale": [1.0, 1.0], "flip": False},
    "optim": {"lr": 1e-3, "weight_decay": 0.01, "batch_size": 32, "epochs": 10, "warmup_epochs": 1,
              "min_lr": 1e-5, "clip_grad": 1.0},
    "validation": {"limit": 100, "every": 1},
}
TOP = {"name", "version", "description", "seed", "task"}


def is_segmentation_recipe(name_or_path: str | None) -> bool:
    p = _path(name_or_path) if name_or_path else None
    if p is None:
        return False
    try:
        return tomllib.loads(p.read_text()).get("task") == "segmentation"
    except (OSError, tomllib.TOMLDecodeError):
        return False  # the classification reader reports it


def _path(name_or_path: str) -> Path | None:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = RECIPES_DIR / f"{name_or_path}.toml"
    return q if q.is_file() else None


def build_seg_recipe(name_or_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every key checked (one line naming the file and key) and overrides applied."""
    path = _path(name_or_path)
    raw = tomllib.loads(path.read_text())
    where = str(path)
    recipe: dict[str, Any] = {k: raw.get(k) for k in TOP}
    recipe["seed"] = int(raw.get("seed", 0))
    for k in raw:
        if k not in TOP and k not in DEFAULTS:
            raise RecipeError(f"{where}: unknown key '{k}' (segmentation recipes have {', '.join(sorted(TOP))} and "
                              f"[{'], ['.join(DEFAULTS)}])")
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise RecipeError(f"{where}: unknown key '{section}.{unknown[0]}' (known: {', '.join(sorted(defaults))})")
        recipe[section] = {**copy.deepcopy(defaults), **given}
    for key, value in overrides.items():
        section, _, k = key.partition(".")
        if key == "seed":
            recipe["seed"] = int(value)
            continue
        if section not in DEFAULTS or k not in DEFAULTS[section]:
            raise RecipeError(f"override {key}: no such key in a segmentation recipe")
        recipe[section][k] = value
    if not recipe["model"]["name"]:
        raise RecipeError(f"{where}: model.name is required")
    o = recipe["optim"]
    for k in ("lr", "batch_size", "epochs"):
        if not isinstance(o[k], (int, float)) or isinstance(o[k], bool) or o[k] <= 0:
            raise RecipeError(f"{where}: optim.{k} must be > 0, got {o[k]!r}")
    if recipe["data"]["dataset"] not in ("digits-seg64", "ade20k", "folder"):
        raise RecipeError(f"{where}: data.dataset must be digits-seg64, ade20k or folder, got "
                          f"{recipe['data']['dataset']!r}")
    return recipe


def _sha(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# -- data ----------------------------------------------------------------------------------------------------
def datasets(recipe: dict):
    d = recipe["data"]
    try:
        if d["dataset"] == "digits-seg64":
            return digits_seg64("train"), digits_seg64("test")
        if not d["root"]:
            raise RecipeError(f"data.dataset {d['dataset']} needs data.root (or --data-root PATH)")
        if d["dataset"] == "ade20k":
            return ade20k(d["root"], "training"), ade20k(d["root"], "validation")
        root = Path(d["root"])
        return segmentation_folder(root / "train"), segmentation_folder(root / "val")
    except SegmentationDataError as e:
        raise RecipeError(str(e)) from None


def _sample(x: torch.Tensor, y: torch.Tensor, window: int, scale: tuple[float, float], flip: bool,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rescale (of the shorter side to window x factor), crop to window x window (pad: ignore), flip."""
    lo, hi = scale
    factor = lo + (hi - lo) * float(torch.rand((), generator=gen))
    short = max(1, int(round(window * factor)))
    H, W = x.shape[-2:]
    if (H, W) != (window, window) or factor != 1.0:
        s = short / min(H, W)
        size = (max(1, int(round(H * s))), max(1, int(round(W * s))))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
    H, W = x.shape[-2:]
    ph, pw = max(0, window - H), max(0, window - W)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
    H, W = x.shape[-2:]
    top = int(torch.randint(0, H - window + 1, (), generator=gen))
    left = int(torch.randint(0, W - window + 1, (), generator=gen))
    x, y = x[:, top:top + window, left:left + window], y[top:top + window, left:left + window]
    if flip and float(torch.rand((), generator=gen)) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def batches(train, recipe: dict, window: int, epoch: int, gen: torch.Generator):
    d, bs = recipe["data"], int(recipe["optim"]["batch_size"])
    n = len(train) if not d["limit"] else min(len(train), int(d["limit"]))
    order = torch.randperm(n, generator=gen).tolist()
    for i in range(0, n - bs + 1 if n >= bs else 1, bs):
        xs, ys = [], []
        for j in order[i:i + bs]:
            x, y, _ = train[j]
            if x.dtype == torch.uint8:
                x = x.float() / 255
            x, y = _sample(x, torch.as_tensor(y).long(), window, tuple(d["scale"]), bool(d["flip"]), gen)
            xs.append(x)
            ys.append(y)
        yield torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def validate(model, val, limit: int, device: str) -> dict[str, float]:
    model.eval()
    net = SlidingWindow(model, short_side=None if val[0][0].shape[-1] == model.data_config["input_size"][-1]
                        else 512)
    areas = []
    for i in range(min(limit, len(val))):
        x, y, _ = val[i]
        x = (x.float() / 255 if x.dtype == torch.uint8 else x)[None].to(device)
        areas.append(batch_areas(net(x), torch.as_tensor(y)[None], val.num_classes, val.ignore_index)[0])
    model.train()
    m = seg_metrics(np.stack(areas))
    return {"val_mIoU": m["mIoU"], "val_aAcc": m["aAcc"], "val_mAcc": m["mAcc"]}


# -- model ---------------------------------------------------------------------------------------------------
def init_backbone(model, init: str) -> dict[str, Any]:
    """Load a classification checkpoint of the backbone into the Segmenter's encoder (head dropped, position
    embedding resampled to the window's grid)."""
    from timm.layers import resample_abs_pos_embed

    path = Path(init).expanduser()
    if not path.is_file():
        path = PACKAGED_DIR / init
    if not path.is_file():
        raise RecipeError(f"model.backbone_init: no checkpoint file {init} (neither a path nor a shipped file)")
    sd = extract_state_dict(read_checkpoint_file(path), path)
    enc = model.model.encoder
    own = enc.state_dict()
    sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.") and k in own}
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        grid = enc.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid),
                                                 num_prefix_tokens=int(getattr(enc, "num_prefix_tokens", 1)))
    missing = sorted(k for k in own if k not in sd)
    if missing:
        raise RecipeError(f"model.backbone_init {path}: {len(missing)} encoder weight(s) missing from it, e.g. "
                          f"{missing[0]} (a checkpoint of another backbone?)")
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise RecipeError(f"model.backbone_init {path}: {bad[0]} has shape {tuple(sd[bad[0]].shape)}, the encoder "
                          f"{tuple(own[bad[0]].shape)}")
    enc.load_state_dict(sd)
    return {"file": str(init), "path": str(path), "sha256": sha256_file(path)}


def train_segmentation(recipe_name: str, overrides: dict[str, Any], out: Path, device: str | None = None,
                       log=print) -> dict[str, Any]:
    recipe = build_seg_recipe(recipe_name, overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    refuse_foreign_folder(out, st.STATE_FILE, "train", writes=st.OUTPUTS, error=RecipeError)
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    m = recipe["model"]
    try:
        model = load_model(m["name"], **m["kwargs"])
    except Exception as e:  # noqa: BLE001 - a name or kwargs that do not build: one line
        raise RecipeError(f"model.name {m['name']}: {' '.join(str(e).split())}") from None
    if task_of(model) != "segmentation":
        raise RecipeError(f"model.name {m['name']} is a {task_of(model)} model; a segmentation recipe trains a "
                          "segmentation model (e.g. segmenter_linear_symvit_micro)")
    train, val = datasets(recipe)
    if model.data_config["num_classes"] != train.num_classes:
        raise RecipeError(f"model {m['name']} predicts {model.data_config['num_classes']} classes, {train.name} has "
                          f"{train.num_classes}: set model.kwargs num_classes")
    init = init_backbone(model, m["backbone_init"]) if m["backbone_init"] else None
    window = int(model.data_config["input_size"][-1])
    model.to(device).train()
    o = recipe["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": o["weight_decay"]},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=o["lr"])
    n = len(train) if not recipe["data"]["limit"] else min(len(train), int(recipe["data"]["limit"]))
    steps_per_epoch = max(1, n // int(o["batch_size"]))
    total, warm = o["epochs"] * steps_per_epoch, o["warmup_epochs"] * steps_per_epoch

    def factor(s: int) -> float:  # linear warmup, cosine to min_lr
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, total - warm)
        return (o["min_lr"] + (o["lr"] - o["min_lr"]) * 0.5 * (1 + math.cos(math.pi * t))) / o["lr"]

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out)
    try:
        state = st.load_state(out)
        history: list[dict] = []
        start = 0
        if state is not None:
            if state.get("recipe_sha256") != _sha(recipe):
                raise RecipeError(f"--out {out} holds a training of another recipe (or other overrides); use a new "
                                  "folder, or the same recipe to resume")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["data_rng"])
            st.set_rng_state(state["rng"])
            history, start = list(state["history"]), int(state["epoch"])
            log(f"{out}: resuming after epoch {start}/{o['epochs']}")
        log(f"model {m['name']}" + (f", encoder from {init['path']}" if init else "") + f"; data {train.name}: "
            f"{n} images, validation {val.name}; AdamW lr {o['lr']:g}, {o['epochs']} epochs x {steps_per_epoch} "
            f"steps of {o['batch_size']}; out {out}")
        for epoch in range(start, int(o["epochs"])):
            t0, loss_sum, seen = time.perf_counter(), 0.0, 0
            for x, y in batches(train, recipe, window, epoch, gen):
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x).float(), y, ignore_index=IGNORE_INDEX)
                if not torch.isfinite(loss):
                    raise RecipeError(f"epoch {epoch + 1}: the loss is {float(loss)}; lower optim.lr (the last "
                                      "finished epoch is kept)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if o["clip_grad"]:
                    torch.nn.utils.clip_grad_norm_(params, o["clip_grad"])
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(x)
                seen += len(x)
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": loss_sum / max(seen, 1),
                   "train_s": time.perf_counter() - t0}
            every = int(recipe["validation"]["every"])
            if (epoch + 1) % every == 0 or epoch + 1 == o["epochs"]:
                row.update(validate(model, val, int(recipe["validation"]["limit"]), device))
            history.append(row)
            meta = {"recipe": recipe, "recipe_sha256": _sha(recipe), "task": "segmentation",
                    "checkpoint": {"kind": "last", "epoch": epoch + 1}, "init": init, "metrics": history,
                    "dataset": f"{train.name}", "torch": torch.__version__}
            st.atomic_write(out / "last.safetensors", lambda tmp: save_checkpoint(model, tmp, meta))
            st.atomic_write(out / "metrics.csv", lambda tmp: _write_csv(tmp, history))
            st.save_state(out, {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "data_rng": gen.get_state(), "rng": st.rng_state(),
                                "history": history, "recipe_sha256": _sha(recipe)})
            log(f"epoch {epoch + 1}/{o['epochs']}: loss {row['loss']:.4f}" + (
                f", val mIoU {100 * row['val_mIoU']:.1f}%, aAcc {100 * row['val_aAcc']:.1f}%" if "val_mIoU" in row
                else "") + f" ({row['train_s']:.1f} s)")
    finally:
        lock.release()
    return {**(history[-1] if history else {}), "last_checkpoint": str(out / "last.safetensors")}


def _write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
