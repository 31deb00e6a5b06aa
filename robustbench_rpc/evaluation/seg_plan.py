"""A segmentation suite planned: its TOML read, its dataset and models resolved and checked before any compute.

A suite is a segmentation suite when its TOML says ``task = "segmentation"`` (``quick-seg``, ``paper-seg``);
``robustbench-rpc run --suite`` hands it to :mod:`.seg_run`. Evaluations (``[[evaluation]]``):

- ``kind = "clean"``;
- ``kind = "corruption"``: ``corruptions`` (names, or ``"common"`` for the 15 of ImageNet-C), ``severities``,
  optional ``channel_order`` ("rgb", or FAN's "bgr"), generated on the fly and seeded per image
  (``corruptions.segmentation.CorruptedSegmentation``);
- ``kind = "attack"``: ``attacks`` (``pixel-pgd``, ``segpgd``, ``cospgd``), ``norm``, ``eps`` (a list),
  ``steps``; every attack of one budget takes the same steps and step size, and the report adds the per-image
  worst case over them.

``[defaults]``: ``dataset`` (``digits-seg64``, or ``ade20k`` with ``--data-root ade20k=PATH``), ``models``,
``batch_size`` (images per unit), ``seed``, ``limit`` (images, spread evenly over the set), and Segmenter's
sliding-window protocol: ``short_side`` (0 = images kept at their size), ``long_side``, ``stride`` (default the
model's window). Every problem is one line naming the suite key, model or folder, before any compute.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ..evalspec import SuiteError, parse_eps
from ..store.rows import stable_key
from ..corruptions.core import CORRUPTIONS, list_corruptions
from ..data.segmentation import SegmentationDataError, ade20k, digits_seg64
from ..models import CheckpointError, ModelContractError, load_model
from ..models.checkpoint import resolve_checkpoint, split_spec
from ..models.contract import task_of
from ..registry import UnknownNameError
from ..store.manifest import sha256_file

SEG_ATTACKS = ("pixel-pgd", "segpgd", "cospgd")
SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


@dataclasses.dataclass
class SegEval:
    kind: str  # clean | corruption | attack
    name: str  # "clean", "<corruption>-<severity>", "<attack> <norm> eps=<label>"
    params: dict[str, Any]

    def key(self, dataset: str) -> str:
        return stable_key({"task": "segmentation", "kind": self.kind, "name": self.name, "dataset": dataset,
                           "params": self.params})


@dataclasses.dataclass
class SegModel:
    spec: str
    model: Any  # the loaded, normalized model
    key: str
    info: dict[str, Any]


def suite_path(suite: str) -> Path | None:
    """The TOML file of ``--suite`` (a packaged name or a path); None when neither exists (the classification
    planner then says so)."""
    p = Path(suite)
    if p.suffix == ".toml" and p.is_file():
        return p
    packaged = SUITES_DIR / f"{suite}.toml"
    return packaged if packaged.is_file() else None


def read_suite(suite: str) -> dict | None:
    """The suite's table when ``--suite`` names a segmentation suite, else None."""
    p = suite_path(suite)
    if p is None:
        return None
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None  # the classification planner reports an unreadable suite in its own words
    return data if data.get("task") == "segmentation" else None


def _eps_list(value: Any, where: str) -> list[tuple[str, float]]:
    values = value if isinstance(value, list) else [value]
    return [(str(v), parse_eps(v, where)) for v in values]


def evaluations(suite: dict, where: str) -> list[SegEval]:
    out: list[SegEval] = []
    for i, ev in enumerate(suite.get("evaluation", [])):
        at = f"{where}: [[evaluation]] {i + 1}"
        kind = ev.get("kind")
        if kind == "clean":
            out.append(SegEval("clean", "clean", {}))
        elif kind == "corruption":
            names = ev.get("corruptions", "common")
            names = list_corruptions(names) if isinstance(names, str) else list(names)
            unknown = [c for c in names if c not in CORRUPTIONS]
            if unknown:
                raise SuiteError(f"{at}: unknown corruption '{unknown[0]}' (known: {', '.join(sorted(CORRUPTIONS))})")
            severities = ev.get("severities", [1, 2, 3, 4, 5])
            if not severities or any(s not in (1, 2, 3, 4, 5) for s in severities):
                raise SuiteError(f"{at}: severities must be a list of 1..5, got {severities!r}")
            order = ev.get("channel_order", "rgb")
            if order not in ("rgb", "bgr"):
                raise SuiteError(f"{at}: channel_order must be 'rgb' or 'bgr', got {order!r}")
            for c in names:
                for s in severities:
                    out.append(SegEval("corruption", f"{c}-{s}", {"corruption": c, "severity": int(s),
                                                                 "channel_order": order}))
        elif kind == "attack":
            attacks = ev.get("attacks", list(SEG_ATTACKS))
            bad = [a for a in attacks if a not in SEG_ATTACKS]
            if bad:
                raise SuiteError(f"{at}: '{bad[0]}' is not a segmentation attack ({', '.join(SEG_ATTACKS)})")
            norm = ev.get("norm", "Linf")
            if norm not in ("Linf", "L2"):
                raise SuiteError(f"{at}: norm must be Linf or L2, got {norm!r}")
            steps = ev.get("steps", 10)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise SuiteError(f"{at}: steps must be an integer >= 1, got {steps!r}")
            for label, eps in _eps_list(ev.get("eps", "4/255"), f"{at} eps"):
                for a in attacks:
                    out.append(SegEval("attack", f"{a} {norm} eps={label}",
                                       {"attack": a, "norm": norm, "eps": eps, "eps_label": label, "steps": steps}))
        else:
            raise SuiteError(f"{at}: kind must be clean, corruption or attack in a segmentation suite, got {kind!r}")
    if not out:
        raise SuiteError(f"{where}: no [[evaluation]] tables")
    return out


def dataset_for(name: str, roots: dict[str, str], where: str):
    """The clean segmentation set ``name`` (``digits-seg64`` or ``ade20k`` with its root)."""
    if name == "digits-seg64":
        return digits_seg64("test")
    if name == "ade20k":
        root = roots.get("ade20k")
        if not root:
            raise SuiteError(f"{where}: dataset ade20k needs its folder: --data-root ade20k=PATH "
                             "(the ADEChallengeData2016 layout: images/validation, annotations/validation)")
        try:
            return ade20k(root, "validation")
        except SegmentationDataError as e:
            raise SuiteError(str(e)) from None
    raise SuiteError(f"{where}: unknown segmentation dataset '{name}' (digits-seg64, ade20k)")


def spread(n: int, limit: int | None) -> list[int]:
    """``limit`` positions spread evenly over ``n`` images (all of them without a limit)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, limit)})


def load_models(specs: list[str], num_classes: int, device: str, where: str,
                kwargs: dict[str, Any] | None = None, seed: int = 0) -> list[SegModel]:
    """Each model built and loaded, its task and class count checked against the set: one line otherwise. The
    torch seed is set before each build, so a model without a checkpoint has the same weights on a resume."""
    import torch

    out = []
    for spec in specs:
        torch.manual_seed(seed)
        try:
            model = load_model(spec, device=device, **(kwargs or {}))
        except (CheckpointError, ModelContractError, UnknownNameError, FileNotFoundError, TypeError, ValueError) as e:
            raise SuiteError(f"model {spec}: {e}") from None
        task = task_of(model)
        if task != "segmentation":
            raise SuiteError(f"model {spec} is a {task} model (one class per image), but {where} scores "
                             "per-pixel logits (a segmentation model, e.g. segmenter_linear_symvit_micro)")
        classes = int(model.data_config.get("num_classes") or 0)
        if classes != num_classes:
            raise SuiteError(f"model {spec} predicts {classes} classes, the dataset has {num_classes}")
        name, ckpt = split_spec(spec)
        path = resolve_checkpoint(name, ckpt) if ckpt else None
        sha = sha256_file(path) if path else None
        info = {"name": spec, "spec": spec, "arch": name, "checkpoint": str(path) if path else None,
                "checkpoint_sha256": sha, "num_classes": classes, "task": "segmentation",
                "num_params": sum(p.numel() for p in model.parameters()),
                "window": list(model.data_config["input_size"][-2:])}
        if kwargs:
            info["kwargs"] = dict(kwargs)
        out.append(SegModel(spec, model, stable_key({"name": name, "sha256": sha, "kwargs": kwargs or {}}), info))
    return out
