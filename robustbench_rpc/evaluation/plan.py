"""Planning a run: (suite, flags) -> a frozen, validated :class:`Plan`, before any compute is spent.

Every model name, checkpoint, attention patch, attack, corruption, dataset root and subset is resolved and
checked here; :mod:`robustbench_rpc.evaluation.harness` only runs what was planned (lm-evaluation-harness keeps the
same split between ``simple_evaluate`` and ``evaluate``).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset

from .. import corruptions, dist
from ..data.resolve import ROOT_OF, get_dataset, root_for
from ..evalspec import EVAL_PARAMS, EvalSpec, SuiteError, describe_eval
from ..models import PRETRAINED, CheckpointError, resolve_checkpoint, split_spec
from ..models.checkpoint import PACKAGED_DIR
from .suite import Suite, expand, load_suite
from ..data.subsets import SubsetError, listing_fingerprint, read_subset_file, sample_ids, subset_fingerprint
from .plan_checks import check_attention_flag, check_input_size, check_model, check_roots, check_settings, check_sweep
from . import ood
from ..data import subsets
from ..data.images import check_readable, skipped_files
from ..data.folders import eval_transform
from .ood import in_eval_key


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
    def patch_params(self) -> dict[str, Any]:
        """The attention variant's own arguments (without ``variant`` and ``layers``)."""
        return {k: v for k, v in (self.attention or {}).items() if k not in ("variant", "layers")}

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
        if self.checkpoint and Path(self.checkpoint).parent != PACKAGED_DIR:
            return f"{name} ({Path(self.checkpoint).name})"
        return name


def parse_pairs(items: list[str] | None, flag: str, as_json: bool = False) -> dict[str, Any]:
    """``["k=v", ...]`` from a repeatable flag -> dict; ``as_json`` reads each value as JSON where it parses."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SuiteError(f"{flag} expects NAME=VALUE, got {item!r}")
        if as_json:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


@dataclass
class RunConfig:
    """Everything a user can say about one run (CLI flags or API keywords); None = the suite decides.

    :meth:`from_args` reads it from the ``run`` command's parsed flags, so the command line and the API
    name each setting once. :class:`Plan` validates it against the suite."""

    suite: str | Path | Suite = "quick"
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
    save_adversarial: bool = False  # keep every attack evaluation's adversarial images (store/adversarial.py)

    @classmethod
    def from_args(cls, args: Any) -> "RunConfig":
        """The ``run`` command's flags (an argparse namespace) -> a RunConfig."""
        kwargs = dict(args.model_arg and parse_pairs(args.model_arg, "--model-arg", as_json=True) or {})
        if getattr(args, "override_checkpoint_args", False):
            kwargs["override_checkpoint_args"] = True
        contract = {k: getattr(args, k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
                    if getattr(args, k, None) is not None}
        special = {
            "models": args.model or [], "reference_model": args.reference, "report": not args.no_report,
            "progress": False if args.no_progress else None, "model_kwargs": kwargs, "data_config": contract,
            "data_roots": parse_pairs(args.data_root, "--data-root"),
            "attention_args": parse_pairs(args.attention_arg, "--attention-arg", as_json=True),
            "trusted_globals": args.trust_global or [],
        }
        plain = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if f.name not in special and hasattr(args, f.name)}
        return cls(**plain, **special)


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
    """A validated run: every name, file and root checked before any compute is spent. Built in four
    steps (settings, models, evaluations, datasets); frozen once built (datasets are opened lazily and
    cached, nothing else changes)."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log if dist.rank() == 0 else (lambda *_: None)
        self.suite: Suite = load_suite(cfg.suite)
        self._datasets: dict[Any, Dataset] = {}
        self._plan_settings()
        self._plan_models()
        self._plan_evaluations()
        self._plan_datasets()
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"a Plan is frozen once validated: plan a new run to change {name!r}")
        super().__setattr__(name, value)

    # -- step 1: run settings ------------------------------------------------------------------------------
    def _plan_settings(self) -> None:
        cfg, d = self.cfg, self.suite.defaults
        self.dataset = cfg.dataset or d.get("dataset", "digits32")
        self.batch_size = cfg.batch_size if cfg.batch_size is not None else d.get("batch_size", 64)
        # CLI flags override the suite: --subset replaces the suite's limit as the way images are chosen
        self.limit = cfg.limit if cfg.limit is not None else (None if cfg.subset else d.get("limit"))
        self.seed = cfg.seed if cfg.seed is not None else d.get("seed", 0)
        self.device = cfg.device or d.get("device") or default_device()
        self.amp = cfg.amp or amp_for_device(d.get("amp"), self.device, self.suite.path)
        # CPU: in-process (the model's own torch threads need the cores between batches); CUDA: keep the
        # host cores generating data
        default_workers = min(8, (os.cpu_count() or 1) - 1) if self.device.startswith("cuda") else 0
        self.workers = cfg.workers if cfg.workers is not None else d.get("workers", default_workers)
        self.subset_file = cfg.subset or d.get("subset")
        check_settings(self)
        self.roots = {**d.get("data_roots", {}), **cfg.data_roots}
        self.subset_entries = None
        if self.subset_file:
            first_n = self.limit is not None and cfg.limit is not None and not cfg.subset
            if self.limit is not None and not first_n:
                raise SuiteError("--subset and --limit both choose the images: pass one of them")
            try:
                self.subset_entries = read_subset_file(self.subset_file)
            except SubsetError as err:
                raise SuiteError(str(err)) from None
            if first_n:  # --limit N under a suite that lists its images: the list's first N, in its order
                self.subset_entries, self.limit = self.subset_entries[:self.limit], None

    # -- step 2: models -----------------------------------------------------------------------------------
    def _plan_models(self) -> None:
        cfg, d = self.cfg, self.suite.defaults
        specs = cfg.models or list(d.get("models", []))
        if not specs:
            raise SuiteError("no models: pass --model NAME[:CHECKPOINT] (repeatable) or list models in the suite")
        self.models = [ModelSpec.parse(s, cfg.model_kwargs) for s in specs]
        if cfg.attention:
            check_attention_flag(cfg)
            for m in self.models:
                m.attention = {"variant": cfg.attention, "layers": cfg.attention_layers, **cfg.attention_args}
        if self.suite.sweep:
            if cfg.attention:
                raise SuiteError(f"{self.suite.path}: a suite with [sweep] patches attention itself; drop --attention")
            self.models = sweep_models(self.models, self.suite.sweep, self.suite.path)
        self._choose_reference()
        _refuse_twice(self.models)
        configs = {m.spec: check_model(m, cfg) for m in self.models}
        self.num_classes = {spec: int(c.get("num_classes") or 0) for spec, c in configs.items()}
        sizes = {spec: tuple(c["input_size"]) for spec, c in configs.items()}
        if len(set(sizes.values())) > 1:  # one preprocessing feeds every model of a run
            raise SuiteError("models of one run must share an input size (one dataset preprocessing feeds them "
                             f"all); got {sizes}: run them separately or pass --model-arg img_size=...")
        self.data_config = configs[self.models[0].spec]

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

    # -- step 3: evaluations ------------------------------------------------------------------------------
    def _plan_evaluations(self) -> None:
        self.evals = expand(self.suite, self.dataset, self.amp)  # attacks resolved with the run's --amp
        from .adversarial_run import plan_adversarial  # saved images, and transfer evaluations of the models

        self.evals = plan_adversarial(self.suite, self.evals, self.models, self.cfg.save_adversarial)
        self.evals = _once_each(self.evals, self.log)
        self.clean_key = next((e.key for e in self.evals if e.kind == "clean" and e.dataset == self.dataset), None)
        if self.clean_key is None and any(e.kind == "ood" and ood.in_distribution_spec(e) is None for e in self.evals):
            raise SuiteError(f"{self.suite.path}: an ood evaluation with protocol '{ood.ALL_CLASSES}' needs a clean "
                             f"evaluation of '{self.dataset}' (its confidences are the in-distribution scores)")
        self.resolved: dict[str, dict[str, Any]] = {e.key: e.resolved for e in self.evals if e.kind == "attack"}

    # -- step 4: output folder and datasets ---------------------------------------------------------------
    def _plan_datasets(self) -> None:
        self.run_name = self.suite.name
        self.out = Path(self.cfg.out) if self.cfg.out else Path("reports") / self.run_name
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is an existing file, not a folder")
        for e in self.evals:  # resolve every dataset (checks roots and class folders) before compute
            ds = self.dataset_for(e)
            if e.kind == "ood":
                continue
            classes = getattr(innermost(ds), "classes", None)
            for spec, n in self.num_classes.items():
                if classes and n and len(classes) != n:
                    raise SuiteError(f"model {spec} predicts {n} classes but dataset '{e.dataset}' "
                                     f"({e.kind}:{e.name}) has {len(classes)}; pass --model-arg num_classes=... "
                                     "or evaluate on a matching dataset")
        check_roots(self)
        check_input_size(self)

    # -- what the run reads -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What must match for a rerun into the same folder to resume rather than mix two protocols: every
        setting that changes a number, and the data read (each dataset's root and listing fingerprint)."""
        return {"suite": self.suite.name, "suite_version": self.suite.version, "dataset": self.dataset,
                "batch_size": self.batch_size, "limit": self.limit, "seed": self.seed, "amp": self.amp,
                "subset": self.subset_info(), "eot_samples": self.cfg.eot_samples, "data": self.data_read()}

    def data_read(self) -> dict[str, dict[str, Any]]:
        """{dataset: {"root": absolute path or None (shipped data), "listing_sha256": ...}} of every dataset
        the run reads; released corruption files by their source."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.evals:
            files = e.kind == "corruption" and e.params["source"] != "on-the-fly"
            name = e.params["source"] if files else e.dataset
            if name in out:
                continue
            root = self.roots.get(ROOT_OF.get(name, name))
            ds = innermost(self.base_dataset(e.dataset)) if not files else None
            out[name] = {"root": str(Path(root).expanduser().resolve()) if root else None,
                         "listing_sha256": listing_fingerprint(ds) if ds is not None else None}
        return out

    def subset_info(self) -> dict[str, Any]:
        """How the evaluated images were chosen (stored with the run, shown on the protocol card)."""
        if self.subset_entries is not None:
            return {"method": "file", "file": str(self.subset_file), "entries": len(self.subset_entries),
                    "sha256": subset_fingerprint(self.subset_entries)}
        if self.limit is not None:
            return {"method": "stratified", "limit": self.limit}
        return {"method": "all"}

    def choose(self, ds: Dataset, what: str) -> Dataset:
        """The run's images of ``ds``: all, N spread evenly over its classes, or (for the run's dataset)
        the listed ones; other sets (OOD, shifts) are used whole under ``--subset``."""
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
            ds = get_dataset(name, self.roots, self.data_config)  # every file listed: the choice never
            # depends on which decode, so --skip-unreadable on a resume moves no finished unit's images
            self._datasets[name] = check_readable(self.choose(ds, name), skip=self.cfg.skip_unreadable,
                                                  what=f"dataset '{name}'")
        return self._datasets[name]

    def dataset_for(self, e: EvalSpec) -> Dataset:
        if e.kind != "corruption":
            return self.base_dataset(e.dataset)

        p = e.params
        if p["source"] == "on-the-fly":
            return corruptions.CorruptedDataset(self.base_dataset(self.dataset), p["corruption"], p["severity"],
                                                seed=self.seed, severity_table=p["severity_table"],
                                                dtype=torch.uint8)  # to float on the device: less IPC, H2D
        key = (p["source"], p["corruption"], p["severity"])
        if key not in self._datasets:
            self._datasets[key] = self._corruption_files(p)
        return self._datasets[key]

    def _corruption_files(self, p: dict[str, Any]) -> Dataset:
        """A released corruption set (ImageNet-C folders, CIFAR-C .npy) restricted to the clean subset."""
        root = root_for(p["source"], self.roots)
        if p["source"] == "imagenet-c":
            # paper protocol: the released 224 px crops as they are; other model sizes get them resized
            size = int(self.data_config["input_size"][-1])
            transform = None
            if size != 224:
                transform = eval_transform(size, size, str(self.data_config.get("interpolation", "bilinear")))
            ds = corruptions.ImageNetCFolder(root, p["corruption"], p["severity"], transform=transform)
        else:
            ds = corruptions.CIFARCNpy(root, p["corruption"], p["severity"])
        if self.subset_entries is not None or self.limit is not None:  # the clean subset's images

            clean = self.base_dataset(self.dataset)
            what = f"{p['source']} {p['corruption']} s{p['severity']}"
            try:  # by file (a tree of only the subset's files), else by the listing's ids
                positions = subsets.match_by_relative_path(ds, clean)
                ds = subsets.take(ds, positions if positions is not None
                                  else subsets.positions_of_ids(ds, subsets.sample_ids(clean), what))
            except subsets.SubsetError as err:
                raise SuiteError(str(err)) from None

        return check_readable(ds, skip=self.cfg.skip_unreadable, what=f"{p['source']} {p['corruption']} "
                                                                      f"s{p['severity']}")

    def eval_info(self, e: EvalSpec) -> dict[str, Any]:
        """What the store records about one evaluation (kind, name, dataset, params as declared and as run)."""
        params = dict(e.params)
        if e.kind == "ood":
            params["in_eval_key"] = in_eval_key(e, self.clean_key)
        if e.kind == "corruption" and e.params["source"] == "on-the-fly":
            c, h, w = self.data_config["input_size"]
            params["severity_table"] = corruptions.resolve_severity_table(h, w, e.params["severity_table"])
        elif e.kind == "corruption":  # released files: their own parameters, whatever the model's input size
            params["severity_table"] = f"{e.params['source']} (files on disk)"
        ds = self.dataset_for(e)

        skipped = skipped_files(ds)
        if skipped:  # recorded with the results, so a table built on fewer files says so
            params["skipped_unreadable"] = len(skipped)
        info = {"kind": e.kind, "name": e.name, "dataset": e.dataset, "params": params,
                "n_samples": len(ds), "dataset_size": len(innermost(ds)),
                "subset": self.subset_info(), "seed": self.seed}
        if skipped:  # which ones: a resume that skips more is checked against the finished units (store)
            info["skipped_sample_ids"] = sorted(sid for _, sid in skipped if sid is not None)
        if e.key in self.resolved:  # params as declared; resolved: every parameter the attack ran with
            info["resolved"] = self.resolved[e.key]
        from ..data.robustbench import describe_preprocessing  # what the images went through (leaderboard)

        on_disk = e.kind == "corruption" and e.params["source"] != "on-the-fly"
        info["preprocessing"] = describe_preprocessing(self.data_config, e.params["source"] if on_disk else
                                                       self.dataset if e.kind == "corruption" else e.dataset)
        return info

    def sample_ids(self) -> dict[str, list[int]]:
        """Every dataset's evaluated sample ids (the manifest's record of what was read)."""
        out: dict[str, list[int]] = {}
        for e in self.evals:
            name = e.dataset if e.kind != "corruption" else f"{e.dataset}:{e.params['source']}"
            if name not in out:
                out[name] = _sample_ids(self.dataset_for(e))
        return out


def _once_each(evals: list[EvalSpec], log: Callable[[str], None]) -> list[EvalSpec]:
    """Attack evaluations that run the same attack with the same parameters once their defaults are filled in
    (``pgd`` and ``pgd`` with ``norm = "Linf"`` spelled out) are computed once: the first is kept and the plan
    says which it stands for. Their declared parameters differ, so their store keys would too, and the same
    numbers would be computed twice and shown as two rows."""
    unsaid = {"accuracy": "robust", "attack_amp": True, "adaptive": False}  # the evaluation-level defaults
    kept: list[EvalSpec] = []
    first: dict[str, EvalSpec] = {}
    for e in evals:
        if e.kind != "attack" or e.resolved is None:
            kept.append(e)
            continue
        settings = {k: e.params.get(k, unsaid.get(k)) for k in EVAL_PARAMS}  # not the attack's: not resolved
        ident = json.dumps([e.name, e.dataset, e.resolved, settings, getattr(e, "save_adversarial", False)],
                           sort_keys=True, default=str)
        if ident in first:
            said = lambda x: ", ".join(f"{k}={v}" for k, v in x.params.items())  # noqa: E731
            log(f"note: {describe_eval(e)} is declared twice ({said(first[ident])} and {said(e)}: the same attack "
                "once its defaults are filled in): computed once")
            continue
        first[ident] = e
        kept.append(e)
    return kept


def _refuse_twice(models: list[ModelSpec]) -> None:
    """The same model (name, checkpoint file, arguments, attention patch) listed twice would be evaluated
    twice into one store row: refused now, not after the first copy's full evaluation."""
    seen: dict[str, str] = {}
    for m in models:
        ckpt = str(Path(m.checkpoint).resolve()) if m.weights_file else m.checkpoint
        ident = json.dumps([m.name, ckpt, m.kwargs, m.attention, m.sweep], sort_keys=True, default=str)
        if ident in seen:
            same = f"as {seen[ident]} and {m.spec}" if seen[ident] != m.spec else f"as {m.spec}"
            raise SuiteError(f"model {m.name} is listed twice ({same}, same checkpoint and arguments): "
                             "give each model once")
        seen[ident] = m.spec


def innermost(ds: Dataset) -> Dataset:
    """The full dataset under --limit subsets and on-the-fly corruption wrappers."""
    while True:
        if isinstance(ds, Subset):
            ds = ds.dataset
        elif hasattr(ds, "base") and isinstance(ds.base, Dataset):
            ds = ds.base
        else:
            return ds


def _sample_ids(ds: Dataset) -> list[int]:
    if hasattr(ds, "base") and isinstance(ds.base, Dataset) and not isinstance(ds, Subset):
        return _sample_ids(ds.base)  # on-the-fly corruptions keep their base's ids
    return sample_ids(ds)


def sweep_models(models: list[ModelSpec], sweep: dict[str, Any], where: str) -> list[ModelSpec]:
    """[sweep] -> one ModelSpec per (model, layers, args combination), the variant patched in at evaluation
    time; with ``include_base`` (default true) each model unpatched first. Every variant argument is tried
    on a small module now, so a bad value fails before any compute."""
    variant = sweep["attention"]
    layers = sweep.get("layers", ["all"])
    layers = [layers] if isinstance(layers, (str, int)) else list(layers)
    args = {k: (v if isinstance(v, list) else [v]) for k, v in sweep.get("args", {}).items()}
    combos = [dict(zip(args, vals)) for vals in itertools.product(*args.values())] or [{}]
    check_sweep(variant, layers, args, combos, where)
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

