"""The sweep harness: models x evaluations x units -> the results store, resumable and rank-sharded.

Every evaluation is cut into fixed units (consecutive ``batch_size`` positions of the dataset), whose
composition does not depend on the number of ranks. Each unit is seeded from (seed, evaluation, unit), so
a unit gives the same rows on any rank, in any order, after any resume. Rank 0 decides what is left to do,
ranks compute their share round by round, rank 0 writes each finished unit in one transaction.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from . import dist
from .data.resolve import get_dataset
from .models import load_model, sha256_of
from .models.loading import split_spec
from .store import ResultsStore, stable_key
from .suite import EvalSpec, Suite, SuiteError, describe_eval, expand, load_suite
from .units import attack_rows, prediction_rows, unit_seed

PACKAGED = Path(__file__).parent / "checkpoints"
STORE_NAME = "results.sqlite"


@dataclass
class ModelSpec:
    """One model of a run: ``name[:checkpoint]`` as given, resolved."""

    spec: str
    name: str
    checkpoint: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    reference: bool = False
    attention: dict[str, Any] | None = None  # {"variant", "layers", **params}: patched in after loading
    sweep: dict[str, Any] | None = None  # a [sweep] grid point: {"base", "variant", "layers", **params}
    label: str | None = None  # display name of a grid point

    @classmethod
    def parse(cls, spec: str, kwargs: dict[str, Any] | None = None) -> "ModelSpec":
        name, ckpt = split_spec(spec)
        if ckpt == "packaged":
            path = PACKAGED / f"{name}.safetensors"
            if not path.is_file():
                have = sorted(p.stem for p in PACKAGED.glob("*.safetensors"))
                raise SuiteError(f"model '{name}': no packaged checkpoint (packaged: {', '.join(have) or 'none'})")
            ckpt = str(path)
        elif ckpt is not None and not Path(ckpt).is_file():
            raise SuiteError(f"model '{name}': checkpoint file not found: {ckpt}")
        return cls(spec, name, ckpt, dict(kwargs or {}))

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        name = self.name
        if self.attention:
            name += f"+{self.attention['variant']}@{self.attention.get('layers', 'all')}"
        if self.checkpoint and Path(self.checkpoint).parent != PACKAGED:
            return f"{name} ({Path(self.checkpoint).name})"
        return name


@dataclass
class RunConfig:
    suite: str | Path = "quick"
    models: list[str] = field(default_factory=list)
    out: str | Path | None = None
    device: str | None = None
    batch_size: int | None = None
    limit: int | None = None
    seed: int | None = None
    data_roots: dict[str, str] = field(default_factory=dict)
    reference_model: str | None = None
    workers: int | None = None
    amp: str | None = None
    compile: bool = False
    eot_samples: int = 8
    report: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    attention: str | None = None  # swap every model's attention for this registered variant
    attention_layers: str = "all"
    attention_args: dict[str, Any] = field(default_factory=dict)
    skip_unreadable: bool = False  # on-disk sets: leave unreadable files out and count them (else: error)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def amp_for_device(amp: Any, device: str, where: str) -> str:
    """A suite's ``amp``: one precision, or a table per device type (the paper suite: fp16 autocast on
    CUDA as the paper ran, fp32 on CPU where fp16 autocast is slow and not what anyone compares to)."""
    if isinstance(amp, dict):
        kind = torch.device(device).type
        if kind not in amp:
            raise SuiteError(f"{where}: [defaults] amp has no entry for device type '{kind}' "
                             f"(has {', '.join(sorted(amp))})")
        amp = amp[kind]
    return amp or "fp32"


class Plan:
    """A validated run: every name, file and root checked before any compute is spent."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.suite: Suite = load_suite(cfg.suite)
        d = self.suite.defaults
        self.dataset = d.get("dataset", "digits32")
        self.batch_size = int(cfg.batch_size or d.get("batch_size", 64))
        self.limit = cfg.limit if cfg.limit is not None else d.get("limit")
        self.limit = int(self.limit) if self.limit else None
        self.seed = int(cfg.seed if cfg.seed is not None else d.get("seed", 0))
        self.device = cfg.device or d.get("device") or default_device()
        self.amp = cfg.amp or amp_for_device(d.get("amp"), self.device, self.suite.path)
        # CPU: in-process (workers only add IPC on few cores); CUDA: keep the host cores generating data
        default_workers = min(8, (os.cpu_count() or 1) - 1) if self.device.startswith("cuda") else 0
        self.workers = int(cfg.workers if cfg.workers is not None else d.get("workers", default_workers))
        self.roots = {**d.get("data_roots", {}), **cfg.data_roots}
        if self.batch_size < 1:
            raise SuiteError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise SuiteError(f"--limit must be >= 1, got {self.limit}")
        if self.amp not in ("fp32", "bf16", "fp16"):
            raise SuiteError(f"--amp must be fp32, bf16 or fp16, got {self.amp!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SuiteError(f"--device {self.device}: CUDA is not available on this machine")
        specs = cfg.models or list(d.get("models", []))
        if not specs:
            raise SuiteError("no models: pass --model NAME[:CHECKPOINT] (repeatable) or list models in the suite")
        self.models = [ModelSpec.parse(s, cfg.model_kwargs) for s in specs]
        if cfg.attention:
            from .attention import get_attention, resolve_layers

            get_attention(cfg.attention)  # unknown variant: did-you-mean error now
            resolve_layers(cfg.attention_layers, 10 ** 6)  # malformed layer spec: error now
            for m in self.models:
                m.attention = {"variant": cfg.attention, "layers": cfg.attention_layers, **cfg.attention_args}
        if self.suite.sweep:
            if cfg.attention:
                raise SuiteError(f"{self.suite.path}: a suite with [sweep] patches attention itself; drop --attention")
            self.models = sweep_models(self.models, self.suite.sweep, self.suite.path)
        ref = cfg.reference_model or d.get("reference_model")
        ref_names = [m for m in self.models if ref in (m.spec, m.name)] if ref else []
        (ref_names[0] if ref_names else self.models[0]).reference = True
        from .models import create_model, data_config_of

        num_classes, configs = {}, {}
        for m in self.models:  # fail on a bad name/kwarg/checkpoint now, not after an hour of attacks
            with torch.device("meta"):  # no weights allocated
                net = create_model(m.name, **m.kwargs)
            num_classes[m.spec] = int(getattr(net, "num_classes", 0))
            configs[m.spec] = data_config_of(net)
        sizes = {spec: tuple(c["input_size"]) for spec, c in configs.items()}
        if len(set(sizes.values())) > 1:  # one preprocessing feeds every model of a run
            raise SuiteError("models of one run must share an input size (one dataset preprocessing feeds them "
                             f"all); got {sizes}: run them separately or pass --model-arg img_size=...")
        self.data_config = configs[self.models[0].spec]
        self.evals = expand(self.suite, self.dataset)
        self.clean_key = next((e.key for e in self.evals if e.kind == "clean" and e.dataset == self.dataset), None)
        from . import ood

        if self.clean_key is None and any(e.kind == "ood" and ood.in_distribution_spec(e) is None for e in self.evals):
            raise SuiteError(f"{self.suite.path}: an ood evaluation with protocol '{ood.ALL_CLASSES}' needs a clean "
                             f"evaluation of '{self.dataset}' (its confidences are the in-distribution scores)")
        self.run_name = self.suite.name
        self.out = Path(cfg.out) if cfg.out else Path("reports") / self.run_name
        self._datasets: dict[str, Dataset] = {}
        for e in self.evals:  # resolve every dataset (checks roots and class folders) before compute
            ds = self.dataset_for(e)
            if e.kind == "ood":
                continue
            classes = getattr(_innermost(ds), "classes", None)
            for spec, n in num_classes.items():
                if classes and n and len(classes) != n:
                    raise SuiteError(f"model {spec} predicts {n} classes but dataset '{e.dataset}' "
                                     f"({e.kind}:{e.name}) has {len(classes)}; pass --model-arg num_classes=... "
                                     "or evaluate on a matching dataset")

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun into the same folder to resume rather than mix two protocols."""
        return {"suite": self.suite.name, "suite_version": self.suite.version, "dataset": self.dataset,
                "batch_size": self.batch_size, "limit": self.limit, "seed": self.seed}

    def base_dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            ds = get_dataset(name, self.roots, self.data_config, skip_unreadable=self.cfg.skip_unreadable)
            if self.limit is not None and len(ds) > self.limit:
                ds = Subset(ds, range(self.limit))
            self._datasets[name] = ds
        return self._datasets[name]

    def dataset_for(self, e: EvalSpec) -> Dataset:
        if e.kind != "corruption":
            return self.base_dataset(e.dataset)
        from . import corruptions

        p = e.params
        if p["source"] == "on-the-fly":
            return corruptions.CorruptedDataset(self.base_dataset(self.dataset), p["corruption"], p["severity"],
                                                seed=self.seed, severity_table=p["severity_table"],
                                                dtype=torch.uint8)  # to float on the device: less IPC, H2D
        key = (p["source"], p["corruption"], p["severity"])
        if key not in self._datasets:
            from .data.resolve import root_for

            root = root_for(p["source"], self.roots)
            if p["source"] == "imagenet-c":
                # paper protocol: the released 224 px crops as they are; other model sizes get them resized
                size = int(self.data_config["input_size"][-1])
                transform = None
                if size != 224:
                    from .data.folders import eval_transform

                    transform = eval_transform(size, size, str(self.data_config.get("interpolation", "bilinear")))
                ds = corruptions.ImageNetCFolder(root, p["corruption"], p["severity"], transform=transform,
                                                 skip_unreadable=self.cfg.skip_unreadable)
            else:
                ds = corruptions.CIFARCNpy(root, p["corruption"], p["severity"])
            if self.limit is not None and len(ds) > self.limit:
                ds = Subset(ds, range(self.limit))
            self._datasets[key] = ds
        return self._datasets[key]

    def eval_info(self, e: EvalSpec) -> dict[str, Any]:
        params = dict(e.params)
        if e.kind == "ood":
            from .ood import in_eval_key

            params["in_eval_key"] = in_eval_key(e, self.clean_key)
        if e.kind == "corruption" and e.params["source"] == "on-the-fly":
            from . import corruptions

            c, h, w = self.data_config["input_size"]
            params["severity_table"] = corruptions.resolve_severity_table(h, w, e.params["severity_table"])
        elif e.kind == "corruption":  # released files: their own parameters, whatever the model's input size
            params["severity_table"] = f"{e.params['source']} (files on disk)"
        ds = self.dataset_for(e)
        skipped = getattr(_innermost(ds), "skipped_paths", None)
        if skipped:  # recorded with the results, so a table built on fewer files says so
            params["skipped_unreadable"] = len(skipped)
        return {"kind": e.kind, "name": e.name, "dataset": e.dataset, "params": params,
                "n_samples": len(ds), "dataset_size": len(_innermost(ds)), "seed": self.seed}


def _innermost(ds: Dataset) -> Dataset:
    """The full dataset under --limit subsets and on-the-fly corruption wrappers."""
    while True:
        if isinstance(ds, Subset):
            ds = ds.dataset
        elif hasattr(ds, "base") and isinstance(ds.base, Dataset):
            ds = ds.base
        else:
            return ds


def _sample_ids(ds: Dataset) -> list[int]:
    base, idx = ds, None
    if isinstance(ds, Subset):
        base, idx = ds.dataset, list(ds.indices)
    ids = getattr(base, "sample_ids", None)
    if ids is not None:
        ids = [int(i) for i in ids]
        return [ids[i] for i in idx] if idx is not None else ids
    return [int(ds[i][2]) for i in range(len(ds))]


def _constructor_names(cls: type) -> set[str]:
    """Named constructor parameters of an attention class and its bases (not ``*args`` / ``**kwargs``)."""
    import inspect

    names: set[str] = set()
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
    return names


def sweep_models(models: list[ModelSpec], sweep: dict[str, Any], where: str) -> list[ModelSpec]:
    """[sweep] -> one ModelSpec per (model, layers, args combination), the variant patched in at evaluation
    time; with ``include_base`` (default true) each model unpatched first. Every variant argument is tried
    on a small module now, so a bad value fails before any compute."""
    import itertools

    from .attention import get_attention, resolve_layers

    variant = sweep["attention"]
    try:
        cls = get_attention(variant)
    except Exception as e:  # UnknownNameError: did-you-mean message with the file
        raise SuiteError(f"{where} [sweep]: {e}") from None
    layers = sweep.get("layers", ["all"])
    layers = [layers] if isinstance(layers, (str, int)) else list(layers)
    for lay in layers:
        try:
            resolve_layers(lay, 10 ** 6)
        except ValueError as e:
            raise SuiteError(f"{where} [sweep] layers: {e}") from None
    args = {k: (v if isinstance(v, list) else [v]) for k, v in sweep.get("args", {}).items()}
    named = _constructor_names(cls)
    for k in args:
        if k not in named:  # variants swallow unknown kwargs (timm's contract): catch the typo here
            import difflib

            close = difflib.get_close_matches(k, sorted(named), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SuiteError(f"{where} [sweep]: attention '{variant}' has no argument '{k}'{hint}")
    combos = [dict(zip(args, vals)) for vals in itertools.product(*args.values())] or [{}]
    for c in combos:
        try:
            extra = {"num_tokens": 4} if getattr(cls, "needs_num_tokens", False) else {}
            with torch.device("meta"):
                cls(8, num_heads=2, **extra, **c)
        except (TypeError, ValueError) as e:
            raise SuiteError(f"{where} [sweep]: attention '{variant}' with {c}: {e}") from None
    out = []
    for m in models:
        if sweep.get("include_base", True):
            out.append(m)
        for lay in layers:
            for c in combos:
                g = ModelSpec(m.spec, m.name, m.checkpoint, dict(m.kwargs), attention={"variant": variant,
                              "layers": lay, **c}, sweep={"base": m.spec, "variant": variant, "layers": lay, **c})
                args_text = ",".join(f"{k}={v}" for k, v in c.items())
                g.label = f"{m.display}+{variant}@{lay}" + (f"({args_text})" if args_text else "")
                out.append(g)
    return out


class Runner:
    def __init__(self, plan: Plan, log: Callable[[str], None] = print):
        self.plan = plan
        self.log = log if dist.rank() == 0 else (lambda *_: None)
        self.store: ResultsStore | None = None

    # -- set-up -------------------------------------------------------------------------------------------
    def open_store(self) -> ResultsStore:
        p = self.plan
        p.out.mkdir(parents=True, exist_ok=True)
        store = ResultsStore(p.out / STORE_NAME)
        old = store.get_meta("settings")
        if old is not None and old != p.settings():
            diff = {k: (old.get(k), v) for k, v in p.settings().items() if old.get(k) != v}
            raise SuiteError(f"{p.out} already holds a run with other settings "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                             + "; rerun with the same settings to resume, or choose another --out")
        store.set_meta("settings", p.settings())
        store.set_meta("suite", {**p.suite.to_dict(), "reference_model": next(m.name for m in p.models if m.reference)})
        return store

    def model_info(self, m: ModelSpec, model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
        from .attention import summarize_attention

        try:
            attention = summarize_attention(model)
        except TypeError:  # not a ViT with blocks (e.g. a timm CNN baseline)
            attention = {"blocks": 0, "groups": []}
        sha = sha256_of(m.checkpoint) if m.checkpoint else None
        info = {
            "name": m.display, "spec": m.spec, "arch": m.name, "checkpoint": m.checkpoint, "checkpoint_sha256": sha,
            "attention": attention, "kwargs": m.kwargs, "precision": self.plan.amp,
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_classes": int(model.data_config.get("num_classes") or 0), "reference": m.reference,
            "mean": [float(v) for v in model.data_config.get("mean", ())],
            "std": [float(v) for v in model.data_config.get("std", ())],
            "init_seed": None if m.checkpoint else self.plan.seed,
        }
        if m.sweep:
            info["sweep"] = m.sweep
        key = stable_key({k: info[k] for k in ("arch", "checkpoint_sha256", "attention", "kwargs", "precision",
                                               "init_seed", "sweep") if k in info})
        return key, info

    def build_model(self, m: ModelSpec) -> torch.nn.Module:
        torch.manual_seed(self.plan.seed)  # weights of an un-checkpointed model are a function of the seed
        model = load_model(m.name, m.checkpoint, device=self.plan.device, **m.kwargs)
        if m.attention:
            from .attention import patch_attention

            params = {k: v for k, v in m.attention.items() if k not in ("variant", "layers")}
            patch_attention(model, m.attention["variant"], layers=m.attention["layers"], **params)
            model.eval()
        return model

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> Path:
        p = self.plan
        self.store = dist.run_everywhere(lambda: self.open_store() if dist.rank() == 0 else None, "opening the store")
        t_start = time.time()
        for m in p.models:
            model = dist.run_everywhere(lambda: self.build_model(m), f"loading model {m.spec}")
            key, info = self.model_info(m, model)
            eval_model = self.prepare(model, key)
            if self.store is not None:
                self.store.register_model(key, info)
            self.log(f"[{m.display}] {info['num_params'] / 1e6:.2f}M params, attention "
                     + "; ".join(f"{g['variant']}@{g['layers']}" for g in info["attention"]["groups"]))
            for e in p.evals:
                if e.kind == "diagnostics":  # the model's own forward (not the EOT wrapper), rank 0
                    self.run_diagnostics(model, key, m, e)
                    continue
                self.run_eval(eval_model, key, m, e)
            if dist.rank() == 0 and any(e.kind == "attack" for e in p.evals):
                self.trust_checks(eval_model, key)
        if dist.rank() == 0:
            self.write_manifest()
            self.store.export(p.out / "results", formats=("csv", "parquet"))
            self.log(f"evaluation finished in {time.time() - t_start:.0f}s; store: {p.out / STORE_NAME}")
        return p.out

    def prepare(self, model: torch.nn.Module, key: str) -> torch.nn.Module:
        """Stochastic models are detected here and evaluated with EOT; compile if asked."""
        p = self.plan
        from . import attacks

        ds = p.base_dataset(p.dataset)
        x = torch.stack([ds[i][0] for i in range(min(8, len(ds)))])
        stochastic = attacks.detect_stochastic(model, x.to(p.device))
        if self.store is not None:
            self.store.write_check(key, None, "stochastic_model", "warn" if stochastic else "pass",
                                   f"logits differ between identical passes: evaluated with EOT over "
                                   f"{p.cfg.eot_samples} samples" if stochastic else "deterministic forward pass",
                                   {"eot_samples": p.cfg.eot_samples if stochastic else 0})
        if stochastic:
            self.log(f"  model is stochastic: evaluating with EOT ({p.cfg.eot_samples} samples)")
            model = attacks.EOTModel(model, samples=p.cfg.eot_samples)
        if p.cfg.compile:
            model = torch.compile(model)
        return model

    def units_of(self, e: EvalSpec) -> int:
        return math.ceil(len(self.plan.dataset_for(e)) / self.plan.batch_size)

    def run_eval(self, model: torch.nn.Module, model_key: str, m: ModelSpec, e: EvalSpec) -> None:
        p = self.plan
        ds = p.dataset_for(e)
        n_units = self.units_of(e)
        if self.store is not None:
            self.store.register_evaluation(e.key, p.eval_info(e))
        todo = dist.broadcast(sorted(set(range(n_units)) - (self.store.done_units(model_key, e.key)
                                                           if self.store is not None else set())))
        label = describe_eval(e)
        if not todo:
            return
        world, rank = dist.world(), dist.rank()
        mine = todo[rank::world]
        bs = p.batch_size
        batches = [list(range(u * bs, min((u + 1) * bs, len(ds)))) for u in mine]
        loader = DataLoader(ds, batch_sampler=batches, num_workers=p.workers,
                            pin_memory=p.device.startswith("cuda"), persistent_workers=False)
        it = iter(loader)
        rounds = math.ceil(len(todo) / world)
        progress = self._progress(rounds, f"{m.display} {label}")
        t0 = time.time()
        for r in range(rounds):
            unit = mine[r] if r < len(mine) else None

            def compute():
                if unit is None:
                    return None
                x, y, ids = next(it)
                return unit, self.unit_rows(model, e, unit, x, y, ids)

            try:
                results = dist.run_everywhere(compute, f"{label} on {m.display}", gather=True)
            except dist.RankFailure as err:  # keep the units the healthy ranks finished
                self._write_units(model_key, e.key, getattr(err, "results", None) or [])
                raise
            self._write_units(model_key, e.key, results)
            progress.update(1)
        progress.close()
        if self.store is not None:
            s = self.store.samples(model_key, e.key)
            what = (f"mean confidence {s['confidence'].mean():.3f}" if e.kind == "ood"
                    else f"top-1 {100 * s['correct1'].mean():6.2f}%")
            self.log(f"  {label:<60s} {what}  n={len(s)}  ({time.time() - t0:.1f}s)")

    def run_diagnostics(self, model: torch.nn.Module, model_key: str, m: ModelSpec, e: EvalSpec) -> None:
        """A ``diagnostics`` evaluation: computed once on rank 0, stored whole in the meta table under
        ``diagnostics/<model_key>/<eval_key>`` (skipped when present: resumable per model)."""
        if dist.rank() != 0 or self.store is None:
            return
        from .diagnostics import diagnose_inputs

        meta_key = f"diagnostics/{model_key}/{e.key}"
        if self.store.get_meta(meta_key) is not None:
            return
        p = self.plan
        t0 = time.time()
        prm = e.params
        rows, axes = diagnose_inputs(
            model, p.base_dataset(e.dataset), names=prm["diagnostics"],
            attack=(prm["attack"], prm["attack_args"]) if prm.get("attack") else None,
            corruption=(prm["corruption"], prm["severity"]) if prm.get("corruption") else None,
            batch_size=p.batch_size, seed=p.seed)
        clean = lambda r: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}  # noqa: E731
        self.store.set_meta(meta_key, {"model": m.display, "model_key": model_key, "eval_key": e.key,
                                       "dataset": e.dataset, "params": prm, "rows": [clean(r) for r in rows],
                                       "axis_rows": [clean(r) for r in axes]})
        self.log(f"  {describe_eval(e)[:60]:<60s} {len(rows)} rows  ({time.time() - t0:.1f}s)")

    def _write_units(self, model_key: str, eval_key: str, results: list) -> None:
        """Rank 0 writes each gathered (unit, rows), one transaction per unit."""
        if self.store is None:
            return
        for res in results:
            if res is not None:
                self.store.write_unit(model_key, eval_key, res[0], res[1])

    def unit_rows(self, model, e: EvalSpec, unit: int, x, y, ids) -> dict[str, list]:
        p = self.plan
        x = x.to(p.device, non_blocking=True)
        if x.dtype == torch.uint8:  # on-the-fly corruptions travel as 8-bit images
            x = x.float().div_(255.0)
        y = y.to(p.device, non_blocking=True)
        seed = unit_seed(p.seed, e.key, unit)
        if e.kind == "attack":
            return attack_rows(model, e, x, y, ids, seed, p.device, p.amp)
        mask = None
        mask_name = e.dataset if e.kind == "shift" else e.params.get("class_mask")  # ood protocols set class_mask
        if mask_name:
            from .data import folders

            mask = folders.class_mask_for(mask_name).to(p.device)
        torch.manual_seed(seed)
        rows = prediction_rows(model, x, y, ids, p.device, p.amp, mask)
        if e.kind == "ood":  # every OOD sample is a "miss" for accuracy; only its confidence matters
            rows["correct1"] = [0] * len(rows["pred"])
            rows["correct5"] = [0] * len(rows["pred"])
        return rows

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        enabled = self.plan.cfg.progress
        disable = (dist.rank() != 0) or (enabled is False) or (enabled is None and not sys.stderr.isatty())
        return tqdm(total=total, desc=desc[:70], unit="batch", leave=False, disable=disable)

    # -- trust checks and the manifest -------------------------------------------------------------------
    def trust_checks(self, model: torch.nn.Module, model_key: str) -> None:
        """Accuracy monotone in eps; large-eps attack drives accuracy to ~0; gradient-free vs gradient
        attacks (masking); differentiability. Recomputed from the store (and seeded), so resume-safe."""
        from . import attacks

        p = self.plan
        agg = self.store.aggregates()
        evals = self.store.evaluations().set_index("eval_key")
        rows = agg[(agg["model_key"] == model_key)]
        curves: dict[str, dict[float, float]] = {}
        norms: dict[str, str] = {}
        free: set[str] = set()
        n_min = None
        for _, r in rows.iterrows():
            info = evals.loc[r["eval_key"]]
            params = info["params"]
            if info["kind"] != "attack" or params.get("eps") is None:
                continue
            extra = {k: v for k, v in params.items() if k not in ("eps", "alpha", "seed")}
            group = info["name"] + (" " + " ".join(f"{k}={v}" for k, v in sorted(extra.items())) if extra else "")
            curves.setdefault(group, {})[float(params["eps"])] = float(r["top1"])
            norms[group] = str(params.get("norm", "Linf"))
            n_min = int(r["n"]) if n_min is None else min(n_min, int(r["n"]))
            if not attacks.is_gradient_based(info["name"]):
                free.add(group)
        for group, curve in curves.items():
            if len(curve) > 1:
                self._guarded(model_key, f"monotone_in_eps[{group}]",
                              lambda curve=curve: attacks.check_monotone_in_eps(curve, n=n_min))
        if free and len(free) < len(curves):
            self._guarded(model_key, "gradient_masking",
                          lambda: attacks.check_gradient_masking(curves, free, norms=norms, n=n_min))
        ds = p.base_dataset(p.dataset)
        n = min(32, len(ds))
        x = torch.stack([ds[i][0] for i in range(n)]).to(p.device)
        y = torch.tensor([ds[i][1] for i in range(n)]).to(p.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            self._guarded(model_key, "large_eps", lambda: attacks.check_large_eps(model, x, y))
            self._guarded(model_key, "differentiability", lambda: attacks.check_differentiability(model, x[:8], y[:8]))

    def _guarded(self, model_key: str, name: str, fn: Callable[[], Any]) -> None:
        """A check that crashes is recorded as failed (with the error), never silently dropped."""
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - recorded in the store and the report
            self.store.write_check(model_key, None, name, "fail", f"check raised {type(e).__name__}: {e}", {})
            self.log(f"  trust check {name}: could not run: {e}")
            return
        self._write_check(model_key, name, res)

    def _write_check(self, model_key: str, name: str, res: Any) -> None:
        self.store.write_check(model_key, None, name, res.status, res.message, res.details)
        if res.status != "pass":
            self.log(f"  trust check {name}: {res.status.upper()}: {res.message}")

    def write_manifest(self) -> None:
        import json

        from .manifest import build_manifest

        p = self.plan
        sample_ids = {}
        for e in p.evals:
            name = e.dataset if e.kind != "corruption" else f"{e.dataset}:{e.params['source']}"
            if name not in sample_ids:
                sample_ids[name] = _sample_ids(p.dataset_for(e))
        device = p.device
        manifest = build_manifest(
            seeds={"run": p.seed}, device=device,
            checkpoints={m.display: m.checkpoint for m in p.models if m.checkpoint},
            sample_ids=sample_ids,
            extra={"suite": p.suite.name, "suite_version": p.suite.version, "settings": p.settings(),
                   "precision": p.amp, "world_size": dist.world(), "python": platform.python_version(),
                   "command": " ".join(sys.argv)},
        )
        self.store.set_meta("manifest", manifest)
        (p.out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> Path:
    """Validate, evaluate (resuming whatever is already in the store), then write the report."""
    device = cfg.device or default_device()
    dist.init(device)
    try:
        plan = Plan(cfg)
        out = Runner(plan, log).run()
        if cfg.report and dist.rank() == 0:
            from .reports import build_report

            build_report(out)
        return out
    finally:
        dist.shutdown()
