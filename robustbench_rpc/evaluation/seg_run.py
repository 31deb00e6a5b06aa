"""A segmentation suite run into the results store: per image, its per-class counts (``store/seg_areas.py``).

Each (model, evaluation) is cut into units of ``batch_size`` images (in the order of the planned images). A unit
runs the model through Segmenter's sliding-window protocol (``models.sliding.SlidingWindow``: the shorter side
resized to ``short_side``, ``window x window`` crops, logits averaged and resized back to the annotation's size),
on the clean images, on each image corrupted on the fly (seeded per image), or on each attack's adversarial
images (an attack runs through the same windows, so its gradient is that of the evaluated prediction). Per
image it writes a ``samples`` row (``label = -1``: no single class; ``confidence`` = the mean max-softmax over
the labelled pixels; ``linf`` / ``l2`` / ``l1`` / ``l0`` = the perturbation's size for attacks, ``l0`` counting
changed values per channel) and, in the same transaction, the image's intersect / union / pred / label areas per
class. A killed run resumes unit by unit; every metric is recomputed from the counts by the report
(``reports/seg_report.py``).

Every attack's output is checked against its budget on every image before anything is written.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evalspec import SuiteError, unit_seed
from ..metrics_seg import batch_areas
from ..store.seg_areas import seg_done_units
from .seg_plan import SegEval, SegModel, dataset_for, evaluations, load_models, read_suite, spread
from ..data.segmentation import SegmentationDataError
from ..corruptions.segmentation import CorruptedSegmentation
from ..models.sliding import SlidingWindow
from ..attacks import get_attack
from ..atomic import replacing
from ..store.lock import lock_folder
from ..store.results import ResultsStore
from ..store.rows import NORM_COLUMNS
from ..store.manifest import build_manifest, write_manifest

#: images per (model, evaluation) kept for the report's examples (image, ground truth, prediction)
EXAMPLES = 2
EXAMPLES_DIR = "seg_examples"
BUDGET_SLACK = 1e-5  # float rounding of x + delta clamped to [0, 1]


class SegRun:
    def __init__(self, suite: dict, args: Any):
        self.where = f"suite {suite.get('name', args.suite)}"
        d = dict(suite.get("defaults", {}))
        self.name = suite.get("name", str(args.suite))
        self.version = suite.get("version", 1)
        self.seed = args.seed if args.seed is not None else int(d.get("seed", 0))
        self.batch_size = args.batch_size or int(d.get("batch_size", 16))
        self.limit = args.limit if args.limit is not None else d.get("limit")
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.short_side = d.get("short_side", 512) or None
        self.long_side = d.get("long_side", 2048) or None
        self.stride = d.get("stride")
        self.window_batch = int(d.get("window_batch", 8))
        self.out = Path(args.out) if args.out else Path("reports") / self.name
        roots = {}
        for item in args.data_root or []:
            if "=" not in item:
                raise SuiteError(f"--data-root expects NAME=PATH for a segmentation suite, got {item!r}")
            k, v = item.split("=", 1)
            roots[k.strip()] = v.strip()
        self.dataset_name = args.dataset or d.get("dataset", "digits-seg64")
        self.dataset = dataset_for(self.dataset_name, roots, self.where)
        self.positions = spread(len(self.dataset), self.limit)
        self.evals = evaluations(suite, self.where)
        specs = args.model or d.get("models") or []
        if not specs:
            raise SuiteError(f"{self.where}: no models (give --model NAME[:CKPT] or [defaults] models)")
        kwargs = {}
        for item in getattr(args, "model_arg", None) or []:
            k, sep, v = item.partition("=")
            if not sep:
                raise SuiteError(f"--model-arg expects KEY=JSON, got {item!r}")
            try:
                kwargs[k.strip()] = json.loads(v)
            except ValueError:
                kwargs[k.strip()] = v  # a bare word: a string
        self.models = load_models(list(specs), self.dataset.num_classes, self.device, self.where, kwargs, self.seed)
        if hasattr(self.dataset, "pairs"):  # files: every planned mask read and checked, one line naming a bad one

            try:
                for p in self.positions:
                    self.dataset[p]
            except SegmentationDataError as e:
                raise SuiteError(str(e)) from None

    # -- data of one evaluation ----------------------------------------------------------------------------
    def data_of(self, e: SegEval):
        if e.kind != "corruption":
            return self.dataset

        return CorruptedSegmentation(self.dataset, e.params["corruption"], e.params["severity"], seed=self.seed,
                                     channel_order=e.params["channel_order"])

    def sliding(self, m: SegModel):
        return SlidingWindow(m.model, stride=self.stride, short_side=self.short_side, long_side=self.long_side,
                             batch_size=self.window_batch)

    # -- one unit ------------------------------------------------------------------------------------------
    def unit_rows(self, m: SegModel, e: SegEval, net, data, unit: int, positions: list[int]):
        items = [data[p] for p in positions]
        rows: dict[str, list] = {k: [] for k in ("sample_id", "label", "pred", "correct1", "correct5",
                                                 "confidence", *NORM_COLUMNS)}
        areas: dict[int, np.ndarray] = {}
        examples = []
        seed = unit_seed(self.seed, e.key(self.dataset_name), unit)
        groups: dict[tuple, list[int]] = {}
        for j, (x, _, _) in enumerate(items):  # images of one size go through the model together
            groups.setdefault(tuple(x.shape), []).append(j)
        ignore = self.dataset.ignore_index
        for js in groups.values():
            x = torch.stack([items[j][0] for j in js]).to(self.device)
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            y = torch.stack([torch.as_tensor(items[j][1]) for j in js]).long().to(self.device)
            ids = [int(items[j][2]) for j in js]
            if e.kind == "attack":
                x_eval = self._attack(net, e, x, y, seed, ids)
            else:
                x_eval = x
            with torch.no_grad():
                logits = net(x_eval).float()
            if not torch.isfinite(logits).all():
                raise SuiteError(f"model {m.spec} returned non-finite logits on {e.name} (sample ids {ids[:5]})")
            a = batch_areas(logits, y.cpu(), self.dataset.num_classes, ignore)
            conf = logits.softmax(1).amax(1)
            keep = y != ignore
            delta = (x_eval - x).flatten(1)
            for k, i in enumerate(ids):
                areas[i] = a[k]
                rows["sample_id"].append(i)
                rows["label"].append(-1)
                rows["pred"].append(0)
                rows["correct1"].append(0)
                rows["correct5"].append(0)
                rows["confidence"].append(float(conf[k][keep[k]].mean()) if keep[k].any() else 0.0)
                attacked = e.kind == "attack"
                rows["linf"].append(float(delta[k].abs().max()) if attacked else None)
                rows["l2"].append(float(delta[k].norm()) if attacked else None)
                rows["l1"].append(float(delta[k].abs().sum()) if attacked else None)
                rows["l0"].append(float((delta[k] != 0).sum()) if attacked else None)  # changed values, per channel
            if unit == 0 and len(examples) < EXAMPLES:
                for k in range(min(EXAMPLES - len(examples), len(ids))):
                    examples.append((ids[k], x_eval[k], y[k], logits[k].argmax(0)))
        return rows, areas, examples

    def _attack(self, net, e: SegEval, x, y, seed: int, ids: list[int]) -> torch.Tensor:
        p = e.params
        attack = get_attack(p["attack"], eps=p["eps"], norm=p["norm"], steps=p["steps"], seed=seed, progress=False)
        adv = attack(net, x, y).detach()
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if p["norm"] == "Linf" else d.norm(dim=1)
        over = (size > p["eps"] + BUDGET_SLACK) | (adv.flatten(1).amin(1) < 0) | (adv.flatten(1).amax(1) > 1)
        if over.any():
            k = int(over.nonzero()[0])
            raise SuiteError(f"attack {e.name}: sample {ids[k]} left its budget ({p['norm']} {float(size[k]):.6g} > "
                             f"eps {p['eps']:.6g}) or the [0, 1] box; nothing of this unit was stored")
        return adv

    def save_examples(self, m: SegModel, e: SegEval, examples: list) -> None:
        folder = self.out / EXAMPLES_DIR / m.key
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{e.key(self.dataset_name)}.npz"
        with replacing(path) as tmp:
            with open(tmp, "wb") as f:
                arrays = {"sample_id": np.array([i for i, *_ in examples])}
                for k, (_, x, y, p) in enumerate(examples):  # images of a set may differ in size: one key each
                    arrays[f"image{k}"] = (x.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
                    arrays[f"mask{k}"] = y.cpu().numpy().astype(np.uint8)
                    arrays[f"pred{k}"] = p.cpu().numpy().astype(np.uint8)
                np.savez_compressed(f, **arrays)

    # -- the run -------------------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        units = [self.positions[i:i + self.batch_size] for i in range(0, len(self.positions), self.batch_size)]
        ids = [int(self.dataset[p][2]) if not hasattr(self.dataset, "sample_ids") else
               int(self.dataset.sample_ids[p]) for p in self.positions]
        print(f"plan: {self.name}: {len(self.models)} segmentation model(s) x {len(self.evals)} evaluation(s) on "
              f"{len(self.positions)} {self.dataset.name} image(s), {len(units)} unit(s) each", file=sys.stderr)
        with lock_folder(self.out), ResultsStore(self.out / "results.sqlite") as store:
            store.set_meta("task", "segmentation")
            store.set_meta("planned_evaluations", {e.key(self.dataset_name): e.name for e in self.evals})
            store.set_meta("seg_suite", {"name": self.name, "version": self.version, "dataset": self.dataset_name,
                                        "classes": list(self.dataset.classes),
                                        "ignore_index": self.dataset.ignore_index})
            for m in self.models:
                store.register_model(m.key, m.info)
                net = self.sliding(m)
                for e in self.evals:
                    key = e.key(self.dataset_name)
                    store.register_evaluation(key, {"kind": e.kind, "name": e.name, "dataset": self.dataset_name,
                                                    "params": e.params, "n_samples": len(self.positions),
                                                    "task": "segmentation",
                                                    "protocol": {"short_side": self.short_side,
                                                                 "long_side": self.long_side,
                                                                 "stride": self.stride}})
                    done = seg_done_units(store, m.key, key)
                    data = self.data_of(e)
                    for u, positions in enumerate(units):
                        if u in done:
                            continue
                        rows, areas, examples = self.unit_rows(m, e, net, data, u, positions)
                        store.write_unit(m.key, key, u, rows, seg_areas=areas)
                        if examples:
                            self.save_examples(m, e, examples)
                    if progress:
                        print(f"  {m.spec}: {e.name} done", file=sys.stderr)
            self._manifest(store, ids)
        return self.out

    def _manifest(self, store, ids: list[int]) -> None:
        manifest = build_manifest(
            seeds={"run": self.seed}, device=self.device,
            checkpoints={m.spec: m.info["checkpoint"] for m in self.models if m.info["checkpoint"]},
            sample_ids={self.dataset_name: ids},
            extra={"suite": self.name, "suite_version": self.version, "task": "segmentation",
                   "settings": {"batch_size": self.batch_size, "limit": self.limit, "short_side": self.short_side,
                                "long_side": self.long_side, "stride": self.stride},
                   "command": " ".join(sys.argv)})
        store.set_meta("manifest", manifest)
        write_manifest(self.out / "manifest.json", manifest)


def run_segmentation(args: Any) -> Path | None:
    """``robustbench-rpc run`` for a segmentation suite (None when ``--suite`` is not one)."""
    suite = read_suite(args.suite)
    if suite is None:
        return None
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise SuiteError(f"suite {args.suite}: segmentation suites run on one process (no torchrun)")
    return SegRun(suite, args).run(progress=not args.no_progress)
