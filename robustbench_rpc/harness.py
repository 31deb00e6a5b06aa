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
from torch.utils.data import Dataset, Subset

from . import dist
from .data.resolve import get_dataset
from .models import load_model, sha256_of
from .models.loading import PACKAGED_DIR, PRETRAINED, resolve_checkpoint, split_spec
from .store import ResultsStore, StoreWriteError, lock_folder, stable_key, write_error
from .suite import EvalSpec, Suite, SuiteError, describe_eval, expand, load_suite
from .units import attack_params, attack_rows, prediction_rows, unit_seed

PACKAGED = PACKAGED_DIR  # the shipped checkpoints (``name:packaged``), resolved by models.resolve_checkpoint
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
    settings: dict[str, Any] = field(default_factory=dict)  # per model setting: value and source (file/arg/...)
    sweep: dict[str, Any] | None = None  # a [sweep] grid point: {"base", "variant", "layers", **params}
    label: str | None = None  # display name of a grid point
    reinit: list[str] = field(default_factory=list)  # parameters --attention-reinit re-initialises

    @classmethod
    def parse(cls, spec: str, kwargs: dict[str, Any] | None = None) -> "ModelSpec":
        from .models import CheckpointError

        name, ckpt = split_spec(spec)
        try:  # one resolution of :packaged / :pretrained / a path for the API and the CLI
            ckpt = resolve_checkpoint(name, ckpt)
        except CheckpointError as err:
            raise SuiteError(str(err)) from None
        return cls(spec, name, ckpt, dict(kwargs or {}))

    @property
    def weights_file(self) -> str | None:
        """The checkpoint file, None for none or timm's published weights (``:pretrained``)."""
        return self.checkpoint if self.checkpoint not in (None, PRETRAINED) else None

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        name = self.name
        if self.attention:
            name += f"+{self.attention['variant']}@{self.attention.get('layers', 'all')}"
            if self.reinit:
                name += "[reinit]"
        if self.checkpoint == PRETRAINED:
            return f"{name} (pretrained)"
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
    subset: str | None = None  # a file listing the sample ids / relative paths to evaluate
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
    attention_reinit: bool = False  # allow --attention to re-initialise weights whose shapes do not fit
    dataset: str | None = None  # replaces the suite's default dataset (e.g. "folder" with --data-root folder=PATH)
    data_config: dict[str, Any] = field(default_factory=dict)  # evaluation contract: input_size, mean, std, ...
    trusted_globals: list[str] = field(default_factory=list)  # extra pickle globals trusted checkpoints may use
    skip_unreadable: bool = False  # on-disk sets: leave unreadable files out and count them (else: error)
    rank_timeout: float = dist.DEFAULT_TIMEOUT_S  # torchrun: seconds a rank may stay silent before the job ends


class RunFolderError(SuiteError):
    """--out cannot hold this run: a file, not writable, or in use by another run."""


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

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log if dist.rank() == 0 else (lambda *_: None)
        self.suite: Suite = load_suite(cfg.suite)
        d = self.suite.defaults
        self.dataset = cfg.dataset or d.get("dataset", "digits32")
        self.batch_size = int(cfg.batch_size or d.get("batch_size", 64))
        # CLI flags override the suite: --subset replaces the suite's limit as the way images are chosen
        self.limit = cfg.limit if cfg.limit is not None else (None if cfg.subset else d.get("limit"))
        self.limit = int(self.limit) if self.limit is not None else None  # 0 is an error below, not "no limit"
        self.seed = int(cfg.seed if cfg.seed is not None else d.get("seed", 0))
        self.device = cfg.device or d.get("device") or default_device()
        self.amp = cfg.amp or amp_for_device(d.get("amp"), self.device, self.suite.path)
        # CPU: in-process (the model's own torch threads need the cores between batches); CUDA: keep the
        # host cores generating data
        default_workers = min(8, (os.cpu_count() or 1) - 1) if self.device.startswith("cuda") else 0
        self.workers = int(cfg.workers if cfg.workers is not None else d.get("workers", default_workers))
        self.roots = {**d.get("data_roots", {}), **cfg.data_roots}
        if self.batch_size < 1:
            raise SuiteError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.subset_file = cfg.subset or d.get("subset")
        self.subset_entries = None
        if self.subset_file:
            from .data.subsets import SubsetError, read_subset_file

            if self.limit is not None:
                raise SuiteError("--subset and --limit both choose the images: pass one of them")
            try:
                self.subset_entries = read_subset_file(self.subset_file)
            except SubsetError as err:
                raise SuiteError(str(err)) from None
        if self.limit is not None and self.limit < 1:
            where = "--limit" if cfg.limit is not None else f"{self.suite.path} [defaults] limit"
            raise SuiteError(f"{where} must be >= 1, got {self.limit}")
        if isinstance(cfg.eot_samples, bool) or not isinstance(cfg.eot_samples, int) or cfg.eot_samples < 1:
            raise SuiteError(f"--eot-samples must be >= 1, got {cfg.eot_samples!r}")
        if self.workers < 0:
            raise SuiteError(f"--workers must be >= 0, got {self.workers}")
        if self.amp not in ("fp32", "bf16", "fp16"):
            raise SuiteError(f"--amp must be fp32, bf16 or fp16, got {self.amp!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SuiteError(f"--device {self.device}: CUDA is not available on this machine")
        specs = cfg.models or list(d.get("models", []))
        if not specs:
            raise SuiteError("no models: pass --model NAME[:CHECKPOINT] (repeatable) or list models in the suite")
        self.models = [ModelSpec.parse(s, cfg.model_kwargs) for s in specs]
        if cfg.attention:
            from .attention import UnknownVariantArgumentError, check_variant_args, get_attention, resolve_layers

            get_attention(cfg.attention)  # unknown variant: did-you-mean
            try:  # the same check patch_attention makes in the API
                check_variant_args(cfg.attention, cfg.attention_args)
            except UnknownVariantArgumentError as err:
                raise SuiteError(f"--attention-arg {err.key}: {err}") from None
            resolve_layers(cfg.attention_layers, 10 ** 6)  # malformed layer spec: error now
            for m in self.models:
                m.attention = {"variant": cfg.attention, "layers": cfg.attention_layers, **cfg.attention_args}
        if self.suite.sweep:
            if cfg.attention:
                raise SuiteError(f"{self.suite.path}: a suite with [sweep] patches attention itself; drop --attention")
            self.models = sweep_models(self.models, self.suite.sweep, self.suite.path)
        self._choose_reference()
        from .models import ModelContractError, create_model, data_config_of
        from .models.loading import create_pretrained, resolve_model

        num_classes, configs = {}, {}
        for m in self.models:  # fail on a bad name/kwarg/checkpoint now, not after an hour of attacks
            kw = dict(m.kwargs)  # a paper checkpoint's args configure the model (classes, PAP) here too
            resolved = resolve_model(m.name, m.checkpoint, kw, override_checkpoint_args=bool(
                kw.pop("override_checkpoint_args", False)), trusted_globals=cfg.trusted_globals)
            m.settings = resolved.settings
            if m.checkpoint == PRETRAINED:  # timm downloads (or finds in its cache) now: offline fails here
                create_pretrained(m.name, **resolved.kwargs)
            with torch.device("meta"):  # no weights allocated
                net = create_model(resolved.name, **resolved.kwargs)
                if m.attention:  # bad variant parameter values fail now too
                    from .attention import patch_attention

                    params = {k: v for k, v in m.attention.items() if k not in ("variant", "layers")}
                    try:
                        patch_attention(net, m.attention["variant"], layers=m.attention["layers"],
                                        allow_reinit=cfg.attention_reinit, **params)
                    except (ValueError, TypeError) as err:
                        raise SuiteError(f"--attention {m.attention['variant']} on model {m.spec}: {err}") from None
                    m.reinit = list(getattr(net, "attention_reinit", []))
                    if m.reinit:
                        m.settings["attention_reinit"] = {"value": m.reinit, "source": "--attention-reinit"}
                try:
                    configs[m.spec] = data_config_of(net, cfg.data_config, name=m.name)
                except ModelContractError as err:
                    raise SuiteError(str(err)) from None
            num_classes[m.spec] = int(configs[m.spec].get("num_classes") or 0)
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
        self.resolved: dict[str, dict[str, Any]] = {}
        for e in self.evals:  # with the run's --amp, and kept: every defaulted parameter is stored
            if e.kind == "attack":
                self.resolved[e.key] = self._resolve_attack(e)
        self.run_name = self.suite.name
        self.out = Path(cfg.out) if cfg.out else Path("reports") / self.run_name
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is an existing file, not a folder")
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
        self._check_roots()

    def _choose_reference(self) -> None:
        """The reference model (mCE normalization, comparisons). Rule: ``--reference NAME`` picks one of the
        run's models; else the suite's ``reference_model``, which stays in the run even when ``--model``
        replaces the suite's models (it is added, and the log says so); else the first model."""
        def hits(ref: str) -> list[ModelSpec]:
            return [m for m in self.models if ref in (m.spec, m.name, m.display, split_spec(m.spec)[0])]

        cfg, d = self.cfg, self.suite.defaults
        if cfg.reference_model:
            found = hits(cfg.reference_model)
            if not found:
                raise SuiteError(f"--reference {cfg.reference_model}: not one of the run's models "
                                 f"({', '.join(m.spec for m in self.models)})")
            found[0].reference = True
            return
        ref = d.get("reference_model")
        if not ref:
            self.models[0].reference = True
            return
        found = hits(ref) or hits(split_spec(ref)[0])
        if found:
            found[0].reference = True
            return
        spec = next((s for s in d.get("models", []) if split_spec(s)[0] == split_spec(ref)[0]), ref)
        m = ModelSpec.parse(spec, {})  # as the suite declares it: --model-arg is for the models you named
        m.reference = True
        self.models.append(m)
        why = "--model replaced the suite's models" if cfg.models else "the suite does not list it under models"
        self.log(f"note: {why}, but {self.suite.path} names reference model {ref} (mCE is relative to it): "
                 f"it is kept in the run as {spec}; pass --reference NAME to make one of your models the "
                 "reference instead")

    def _resolve_attack(self, e: EvalSpec) -> dict[str, Any]:
        """Every parameter of the attack as it will run (defaults included, the run's --amp applied)."""
        from . import attacks

        try:
            attack = attacks.get_attack(e.name, **attack_params(e, self.amp))
        except (ValueError, TypeError) as err:
            raise SuiteError(f"{self.suite.path}: attack {describe_eval(e)} with --amp {self.amp}: {err}") from None
        params = dict(getattr(attack, "params", None) or {})
        params.pop("seed", None)  # per unit: info["seed"] and the unit index determine it

        def plain(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            return str(v)

        return {k: plain(v) for k, v in params.items()}

    def _check_roots(self) -> None:
        """Every --data-root must name a dataset this run reads, from a path that exists."""
        import difflib

        from .data.resolve import NEEDS_ROOT, ROOT_OF

        reads = {self.dataset}
        for e in self.evals:
            if e.kind == "corruption" and e.params["source"] != "on-the-fly":
                reads.add(e.params["source"])
            else:
                reads.add(e.dataset)
        used = {ROOT_OF.get(r, r) for r in reads}
        for name, path in self.cfg.data_roots.items():
            flag = f"--data-root {name}={path}"
            if name not in NEEDS_ROOT:
                close = difflib.get_close_matches(name, sorted(NEEDS_ROOT), n=2)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise SuiteError(f"{flag}: unknown dataset '{name}'{hint}; datasets read from disk: "
                                 f"{', '.join(sorted(NEEDS_ROOT))}")
            if not Path(path).expanduser().exists():
                raise SuiteError(f"{flag}: {path} does not exist")
            if name not in used:
                raise SuiteError(f"{flag}: no evaluation of this run reads dataset '{name}' (it reads "
                                 f"{', '.join(sorted(reads))}); drop the flag or add an evaluation that uses it")

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun into the same folder to resume rather than mix two protocols."""
        return {"suite": self.suite.name, "suite_version": self.suite.version, "dataset": self.dataset,
                "batch_size": self.batch_size, "limit": self.limit, "seed": self.seed, "amp": self.amp,
                "subset": self.subset_info()}

    def subset_info(self) -> dict[str, Any]:
        """How the evaluated images were chosen (stored with the run, shown on the protocol card)."""
        if self.subset_entries is not None:
            from .data.subsets import subset_fingerprint

            return {"method": "file", "file": str(self.subset_file), "entries": len(self.subset_entries),
                    "sha256": subset_fingerprint(self.subset_entries)}
        if self.limit is not None:
            return {"method": "stratified", "limit": self.limit}
        return {"method": "all"}

    def _choose(self, ds: Dataset, what: str) -> Dataset:
        """The run's images of ``ds``: all, N spread evenly over its classes, or (for the run's dataset)
        the listed ones; other sets (OOD, shifts) are used whole under ``--subset``."""
        from .data import subsets

        try:
            if self.subset_entries is not None:
                if what != self.dataset:
                    return ds
                return subsets.take(ds, subsets.subset_from_entries(ds, self.subset_entries,
                                                                    f"--subset {self.subset_file} on {what}"))
            if self.limit is not None and len(ds) > self.limit:
                return subsets.take(ds, subsets.stratified_indices(subsets.labels_of(ds), self.limit))
        except subsets.SubsetError as err:
            raise SuiteError(str(err)) from None
        return ds

    def base_dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            ds = get_dataset(name, self.roots, self.data_config, skip_unreadable=self.cfg.skip_unreadable)
            self._datasets[name] = self._choose(ds, name)
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
            if self.subset_entries is not None or self.limit is not None:  # the clean subset's images
                from .data import subsets

                clean = self.base_dataset(self.dataset)
                try:
                    ds = subsets.take(ds, subsets.positions_of_ids(ds, subsets.sample_ids(clean),
                                                                   f"{p['source']} {p['corruption']} s{p['severity']}"))
                except subsets.SubsetError as err:
                    raise SuiteError(str(err)) from None
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
        info = {"kind": e.kind, "name": e.name, "dataset": e.dataset, "params": params,
                "n_samples": len(ds), "dataset_size": len(_innermost(ds)),
                "subset": self.subset_info(), "seed": self.seed}
        if e.key in self.resolved:  # params as declared; resolved: every parameter the attack ran with
            info["resolved"] = self.resolved[e.key]
        return info


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
    from .data.subsets import sample_ids

    if hasattr(ds, "base") and isinstance(ds.base, Dataset) and not isinstance(ds, Subset):
        return _sample_ids(ds.base)  # on-the-fly corruptions keep their base's ids
    return sample_ids(ds)


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
        self._lock = None
        self._loader = None
        self.num_classes: dict[str, int] = {}  # model key -> classes (chance level)

    # -- set-up -------------------------------------------------------------------------------------------
    def open_store(self) -> ResultsStore:
        """Rank 0: lock --out for the run's duration (a second run into it is refused), open the store and
        refuse settings or evaluations that would mix two protocols in one folder."""
        import sqlite3

        from .store import FolderBusyError

        p = self.plan
        try:
            p.out.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(p.out)
            store = ResultsStore(p.out / STORE_NAME)
        except FolderBusyError as err:
            raise RunFolderError(f"--out {err}") from None
        except (OSError, sqlite3.Error, StoreWriteError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise RunFolderError(f"--out {p.out}: cannot write the results store there ({reason})") from None
        self.store = store
        old = store.get_meta("settings")
        if old is not None and "amp" not in old:  # written before the precision was a setting
            stored = (store.get_meta("manifest") or {}).get("extra", {}).get("precision") or next(
                iter(store.models().get("precision", [])), None)
            old = {**old, "amp": stored or p.amp}
        if old is not None and "subset" not in old:  # written when --limit took the first N files
            old = {**old, "subset": {"method": "first-n (before 0.2)", "limit": old.get("limit")}
                   if old.get("limit") is not None else {"method": "all"}}
        if old is not None and old != p.settings():
            diff = {k: (old.get(k), v) for k, v in p.settings().items() if old.get(k) != v}
            raise SuiteError(f"{p.out} already holds a run with other settings "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                             + "; rerun with the same settings to resume, or choose another --out")
        planned = {e.key: describe_eval(e) for e in p.evals}
        before = store.get_meta("planned_evaluations")
        if before is None:  # a store from before this record: what it registered so far
            evals = store.evaluations()
            before = {k: f"{kind} {name}" for k, kind, name in
                      zip(evals.get("eval_key", []), evals.get("kind", []), evals.get("name", []))}
        gone = [label for k, label in before.items() if k not in planned]
        if gone:
            raise SuiteError(f"{p.out} already holds a run whose evaluations differ from {p.suite.path}: "
                             f"{len(gone)} stored evaluation(s) are not planned now ({'; '.join(gone[:5])}"
                             f"{'; ...' if len(gone) > 5 else ''}); rerun the suite as it was to resume, or choose "
                             "another --out")
        added = [label for k, label in planned.items() if k not in before]
        if added and before:
            self.log(f"{p.out}: adding {len(added)} evaluation(s) to the stored run: {'; '.join(added)}")
        store.set_meta("settings", p.settings())
        store.set_meta("planned_evaluations", {**before, **planned})
        store.set_meta("suite", {**p.suite.to_dict(), "reference_model": next(m.name for m in p.models if m.reference)})
        return store

    def close(self) -> None:
        """Close the store and release --out's lock (also after an error)."""
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def model_info(self, m: ModelSpec, model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
        from .attention import summarize_attention

        try:
            attention = summarize_attention(model)
        except TypeError:  # not a ViT with blocks (e.g. a timm CNN baseline)
            attention = {"blocks": 0, "groups": []}
        sha = sha256_of(m.weights_file) if m.weights_file else None
        info = {
            "name": m.display, "spec": m.spec, "arch": m.name, "checkpoint": m.checkpoint, "checkpoint_sha256": sha,
            "attention": attention, "kwargs": m.kwargs, "precision": self.plan.amp,
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_classes": int(model.data_config.get("num_classes") or 0), "reference": m.reference,
            "mean": [float(v) for v in model.data_config.get("mean", ())],
            "std": [float(v) for v in model.data_config.get("std", ())],
            "init_seed": None if m.checkpoint and not m.reinit else self.plan.seed,
            "settings": {**(getattr(model, "model_settings", None) or {}), **m.settings},
            "contract": model.data_config.get("contract_source"),
            "attention_reinit": m.reinit or None,
        }
        if m.sweep:
            info["sweep"] = m.sweep
        key = stable_key({k: info[k] for k in ("arch", "checkpoint_sha256", "attention", "kwargs", "precision",
                                               "init_seed", "sweep") if k in info})
        return key, info

    def build_model(self, m: ModelSpec) -> torch.nn.Module:
        torch.manual_seed(self.plan.seed)  # weights of an un-checkpointed model are a function of the seed
        model = load_model(m.name, m.checkpoint, device=self.plan.device, data_config=self.plan.cfg.data_config,
                           trusted_globals=self.plan.cfg.trusted_globals, **m.kwargs)
        if m.attention:
            from .attention import patch_attention

            params = {k: v for k, v in m.attention.items() if k not in ("variant", "layers")}
            patch_attention(model, m.attention["variant"], layers=m.attention["layers"],
                            allow_reinit=self.plan.cfg.attention_reinit, **params)
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
            self.num_classes[key] = info["num_classes"]
            eval_model = self.prepare(model, key, m)
            if self.store is not None:
                self.store.register_model(key, info)
            self.log(f"[{m.display}] {info['num_params'] / 1e6:.2f}M params, attention "
                     + "; ".join(f"{g['variant']}@{g['layers']}" for g in info["attention"]["groups"]))
            for e in p.evals:
                if e.kind == "diagnostics":  # the model's own forward (not the EOT wrapper), rank 0
                    self.run_diagnostics(model, key, m, e)
                    continue
                self.run_eval(eval_model, key, m, e)
            if dist.rank() == 0 and (p.clean_key or any(e.kind == "attack" for e in p.evals)):
                self.trust_checks(eval_model, key)
        if dist.rank() == 0:
            self.write_manifest()
            self.store.export(p.out / "results", formats=("csv", "parquet"))
            self.log(f"evaluation finished in {time.time() - t_start:.0f}s; store: {p.out / STORE_NAME}")
        return p.out

    def prepare(self, model: torch.nn.Module, key: str, m: ModelSpec | None = None) -> torch.nn.Module:
        """Stochastic models are detected here and evaluated with EOT; compile if asked. NaN/inf logits
        end the run here, named, rather than being mistaken for randomness."""
        p = self.plan
        from . import attacks
        from .attacks.evaluate import NonFiniteLogitsError

        ds = p.base_dataset(p.dataset)
        x = torch.stack([ds[i][0] for i in range(min(8, len(ds)))])
        try:
            stochastic = attacks.detect_stochastic(model, x.to(p.device))
        except NonFiniteLogitsError as err:
            raise NonFiniteLogitsError(err.count, err.total, f"of {p.dataset} {err.where} (first images, before "
                                       "any evaluation)", f"model {m.display if m else key}") from None
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

    def loader(self) -> "RunLoader":
        """The run's data workers: started once and shared by every evaluation (see data/pool.py)."""
        if self._loader is None:
            from .data.pool import RunLoader

            p = self.plan
            self._loader = RunLoader({e.key: p.dataset_for(e) for e in p.evals}, p.workers,
                                     pin_memory=p.device.startswith("cuda"))
        return self._loader

    def units_of(self, e: EvalSpec) -> int:
        return math.ceil(len(self.plan.dataset_for(e)) / self.plan.batch_size)

    def run_eval(self, model: torch.nn.Module, model_key: str, m: ModelSpec, e: EvalSpec) -> None:
        from .attacks.evaluate import NonFiniteLogitsError

        p = self.plan
        ds = p.dataset_for(e)
        n_units = self.units_of(e)
        if self.store is not None:  # stores from before info["resolved"] gain it instead of a conflict
            self.store.register_evaluation(e.key, p.eval_info(e))
        label = describe_eval(e)
        todo = dist.broadcast(sorted(set(range(n_units)) - (self.store.done_units(model_key, e.key)
                                                           if self.store is not None else set())),
                              f"planning {label} on {m.display}")
        if not todo:
            return
        world, rank = dist.world(), dist.rank()
        mine = todo[rank::world]
        bs = p.batch_size
        batches = [list(range(u * bs, min((u + 1) * bs, len(ds)))) for u in mine]
        it = self.loader().batches(e.key, batches)
        rounds = math.ceil(len(todo) / world)
        progress = self._progress(rounds, f"{m.display} {label}")
        t0 = time.time()
        for r in range(rounds):
            unit = mine[r] if r < len(mine) else None

            def compute():
                if unit is None:
                    return None
                x, y, ids = next(it)
                try:
                    return unit, self.unit_rows(model, e, unit, x, y, ids)
                except NonFiniteLogitsError as err:  # name the model, the evaluation and the unit
                    raise NonFiniteLogitsError(err.count, err.total, f"{err.where + ' ' if err.where else ''}"
                                               f"in unit {unit} of {label} (units finished before are kept)",
                                               f"model {m.display}") from None

            try:
                results = dist.run_everywhere(compute, f"{label} on {m.display}", gather=True)
            except dist.RankFailure as err:  # keep the units the healthy ranks finished
                self._write_units(model_key, e.key, getattr(err, "results", None) or [])
                raise
            # every rank waits for rank 0's write: a full disk ends all ranks now, named, not at the timeout
            dist.run_everywhere(lambda: self._write_units(model_key, e.key, results),
                                f"writing {label} on {m.display} to {p.out / STORE_NAME}")
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
        import sqlite3

        if self.store is None:
            return
        for res in results:
            if res is not None:
                try:
                    self.store.write_unit(model_key, eval_key, res[0], res[1])
                except (OSError, sqlite3.OperationalError) as err:  # disk full, I/O error: one line, resumable
                    raise write_error(self.store.path, err) from None

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
        """Clean accuracy above chance; accuracy monotone in eps; large-eps attack drives accuracy to ~0;
        gradient-free vs gradient attacks (masking); differentiability. Recomputed from the store (and seeded),
        so resume-safe."""
        from . import attacks
        from .attacks.checks import check_chance_level

        p = self.plan
        if p.clean_key is not None:
            s = self.store.samples(model_key, p.clean_key)
            classes = self.num_classes.get(model_key) or int(getattr(model, "num_classes", 0) or 0)
            self._guarded(model_key, "chance_level",
                          lambda: check_chance_level(int(s["correct1"].sum()), len(s), classes))
        if not any(e.kind == "attack" for e in p.evals):
            return
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
            checkpoints={m.display: m.weights_file for m in p.models if m.weights_file},
            sample_ids=sample_ids,
            extra={"suite": p.suite.name, "suite_version": p.suite.version, "settings": p.settings(),
                   "precision": p.amp, "world_size": dist.world(), "python": platform.python_version(),
                   "command": " ".join(sys.argv),
                   "model_settings": {m.display: m.settings for m in p.models},
                   "pretrained": [m.display for m in p.models if m.checkpoint == PRETRAINED]},
        )
        self.store.set_meta("manifest", manifest)
        (p.out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> Path:
    """Validate, evaluate (resuming whatever is already in the store), then write the report."""
    device = cfg.device or default_device()
    if isinstance(cfg.rank_timeout, bool) or not isinstance(cfg.rank_timeout, (int, float)) or not cfg.rank_timeout > 0:
        raise SuiteError(f"--rank-timeout must be > 0 seconds, got {cfg.rank_timeout!r}")
    dist.init(device, float(cfg.rank_timeout))
    runner = None
    try:
        plan = Plan(cfg, log)
        runner = Runner(plan, log)
        out = runner.run()
        if cfg.report and dist.rank() == 0:
            from .reports import build_report

            build_report(out)
        return out
    finally:
        if runner is not None:
            runner.close()  # releases --out's lock, also after an error
        dist.shutdown()
