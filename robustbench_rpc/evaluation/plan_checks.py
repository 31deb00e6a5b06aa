"""The checks :class:`robustbench_rpc.evaluation.plan.Plan` makes before any compute: each raises one
:class:`SuiteError` line naming the flag or the suite key, the model or the file."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ..attention import (UnknownVariantArgumentError, check_variant_args, get_attention, patch_attention,
                         resolve_layers)
from ..data.resolve import NEEDS_ROOT, ROOT_OF
from ..evalspec import SuiteError
from ..models import PRETRAINED, CheckpointError, ModelContractError, create_pretrained, data_config_of
from ..models.checkpoint import check_named_model
from ..models.contract import task_of
from ..models.loading import build_unloaded
from ..registry import did_you_mean

# The arguments are plan.Plan / plan.ModelSpec / plan.RunConfig objects; typed Any so that this module,
# which plan.py uses, never imports plan.py back.
Plan = ModelSpec = RunConfig = Any


def close_matches(word: str, known: list[str]) -> str:
    """' (did you mean a, b?)' or ''."""
    return did_you_mean(word, known, aside=True)


def _where(plan: "Plan", flag: str, key: str, from_cli: bool) -> str:
    return flag if from_cli else f"{plan.suite.path} [defaults] {key}"


def _whole(plan: "Plan", value: Any, flag: str, key: str, from_cli: bool, minimum: int) -> int:
    """A whole number >= minimum (not a bool, not 12.7, not a string), or one line naming flag or key."""
    where = _where(plan, flag, key, from_cli)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SuiteError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise SuiteError(f"{where} must be >= {minimum}, got {value}")
    return int(value)


def check_settings(plan: "Plan") -> None:
    """The run's settings, typed and in range (batch size, limit, seed, workers, EOT samples, precision,
    device, data roots)."""
    cfg = plan.cfg
    plan.batch_size = _whole(plan, plan.batch_size, "--batch-size", "batch_size", cfg.batch_size is not None, 1)
    if plan.limit is not None:
        plan.limit = _whole(plan, plan.limit, "--limit", "limit", cfg.limit is not None, 1)
    plan.seed = _whole(plan, plan.seed, "--seed", "seed", cfg.seed is not None, 0)
    plan.workers = _whole(plan, plan.workers, "--workers", "workers", cfg.workers is not None, 0)
    if isinstance(cfg.eot_samples, bool) or not isinstance(cfg.eot_samples, int) or cfg.eot_samples < 1:
        raise SuiteError(f"--eot-samples must be >= 1, got {cfg.eot_samples!r}")
    if plan.amp not in ("fp32", "bf16", "fp16"):
        raise SuiteError(f"--amp must be fp32, bf16 or fp16, got {plan.amp!r}")
    if not isinstance(plan.dataset, str):
        raise SuiteError(f"{_where(plan, '--dataset', 'dataset', cfg.dataset is not None)} must be a dataset name, "
                         f"got {plan.dataset!r}")
    if not isinstance(plan.device, str):
        raise SuiteError(f"{plan.suite.path} [defaults] device must be a string such as \"cpu\", got {plan.device!r}")
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"--device {plan.device}: CUDA is not available on this machine")
    roots = plan.suite.defaults.get("data_roots", {})
    if not isinstance(roots, dict) or not all(isinstance(v, str) for v in roots.values()):
        raise SuiteError(f"{plan.suite.path} [defaults] data_roots must be a table of NAME = \"PATH\", got {roots!r}")
    if plan.subset_file is not None and not isinstance(plan.subset_file, (str, Path)):
        raise SuiteError(f"{plan.suite.path} [defaults] subset must be a file path, got {plan.subset_file!r}")


def check_attention_flag(cfg: "RunConfig") -> None:
    """``--attention`` with its arguments and layers: a known variant, known argument names, valid layers."""
    get_attention(cfg.attention)  # unknown variant: did-you-mean
    try:  # the same check patch_attention makes in the API
        check_variant_args(cfg.attention, cfg.attention_args)
    except UnknownVariantArgumentError as err:
        raise SuiteError(f"--attention-arg {err.key}: {err}") from None
    try:
        resolve_layers(cfg.attention_layers, 10 ** 6)  # malformed layer spec: error now
    except ValueError as err:
        raise SuiteError(f"--attention-layers {cfg.attention_layers}: {err}") from None


def check_model(m: "ModelSpec", cfg: "RunConfig") -> dict[str, Any]:
    """Build ``m`` on the meta device (no weights allocated) with its checkpoint's settings and its
    attention patch: a bad name, keyword, checkpoint or variant value fails now, not after an hour of
    attacks. Returns the model's evaluation contract."""
    kw = dict(m.kwargs)  # a paper checkpoint's args configure the model (classes, PAP) here too
    override = bool(kw.pop("override_checkpoint_args", False))
    try:
        check_named_model(m.name, m.weights_file, override)
    except CheckpointError as err:
        raise SuiteError(str(err)) from None
    if m.checkpoint == PRETRAINED:  # timm downloads (or finds in its cache) now: offline fails here
        create_pretrained(m.name, **kw)
    try:  # load_model's own build steps, on the meta device: no weights allocated
        net, resolved = build_unloaded(m.name, m.checkpoint, kw, override=override,
                                       trusted_globals=cfg.trusted_globals, device="meta")
    except TypeError as err:  # an unknown --model-arg: the factory's own words, named
        given = ", ".join(f"{k}={v!r}" for k, v in m.kwargs.items()) or "no arguments"
        raise SuiteError(f"model {m.spec}: cannot be built with {given}: {err}") from None
    m.settings = resolved.settings
    if task_of(net) != "classification":  # per-pixel logits: scored by mIoU over sliding windows, not top-1
        raise SuiteError(f"model {m.spec} is a {task_of(net)} model (per-pixel logits), but this run's evaluations "
                         "score classifiers (top-1): score it with robustbench_rpc.metrics_seg over sliding windows "
                         "(models.sliding.SlidingWindow)")
    with torch.device("meta"):
        if m.attention:
            _patch_meta(net, m, cfg)
        try:
            return data_config_of(net, cfg.data_config, name=m.name)
        except ModelContractError as err:
            raise SuiteError(str(err)) from None


def _patch_meta(net: torch.nn.Module, m: "ModelSpec", cfg: "RunConfig") -> None:
    try:  # bad variant parameter values fail now too
        patch_attention(net, m.attention["variant"], layers=m.attention["layers"],
                        allow_reinit=cfg.attention_reinit, **m.patch_params)
    except (ValueError, TypeError) as err:
        raise SuiteError(f"--attention {m.attention['variant']} on model {m.spec}: {err}") from None
    m.reinit = list(getattr(net, "attention_reinit", []))
    if m.reinit:
        m.settings["attention_reinit"] = {"value": m.reinit, "source": "--attention-reinit"}


def check_roots(plan: "Plan") -> None:
    """Every --data-root must name a dataset this run reads, from a path that exists."""
    reads = {plan.dataset}
    for e in plan.evals:
        if e.kind == "corruption" and e.params["source"] != "on-the-fly":
            reads.add(e.params["source"])
        else:
            reads.add(e.dataset)
    used = {ROOT_OF.get(r, r) for r in reads}
    for name, path in plan.cfg.data_roots.items():
        flag = f"--data-root {name}={path}"
        if name not in NEEDS_ROOT:
            raise SuiteError(f"{flag}: unknown dataset '{name}'{close_matches(name, sorted(NEEDS_ROOT))}; datasets "
                             f"read from disk: {', '.join(sorted(NEEDS_ROOT))}")
        if not Path(path).expanduser().exists():
            raise SuiteError(f"{flag}: {path} does not exist")
        if name not in used:
            raise SuiteError(f"{flag}: no evaluation of this run reads dataset '{name}' (it reads "
                             f"{', '.join(sorted(reads))}); drop the flag or add an evaluation that uses it")


def check_input_size(plan: "Plan") -> None:
    """The images each dataset gives must have the size the models' contract declares: a dataset of fixed-size
    images (digits32, CIFAR) is not resized by the contract, so a contract that says otherwise (a typo in
    --input-size or data_config) would be silently ignored and the models fed images of another size."""
    want = tuple(int(v) for v in plan.data_config["input_size"])
    seen: set[str] = set()
    for e in plan.evals:
        on_the_fly = e.kind == "corruption" and e.params["source"] == "on-the-fly"
        if e.dataset in seen or not (on_the_fly or e.kind in ("clean", "attack", "ood", "shift", "diagnostics")):
            continue
        seen.add(e.dataset)
        ds = plan.base_dataset(e.dataset)
        if not len(ds):
            continue
        shape = tuple(getattr(ds[0][0], "shape", ()))
        if shape and shape != want:
            models = ", ".join(m.spec for m in plan.models)
            raise SuiteError(f"input size {want} of {models} (its evaluation contract, or data_config / "
                             f"--input-size) disagrees with dataset '{e.dataset}', whose images are {shape} and are "
                             f"not resized to the contract: declare input_size={shape}, or evaluate on a dataset the "
                             "contract's preprocessing resizes (folder, imagenet)")


def _constructor_names(cls: type) -> set[str]:
    """Named constructor parameters of an attention class and its bases (not ``*args`` / ``**kwargs``)."""
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


def check_sweep(variant: str, layers: list, args: dict[str, list], combos: list[dict], where: str) -> None:
    """A [sweep] grid: a known variant, valid layers, known argument names, and every combination tried
    on a small module on the meta device."""
    try:
        cls = get_attention(variant)
    except Exception as e:  # UnknownNameError: did-you-mean message with the file
        raise SuiteError(f"{where} [sweep]: {e}") from None
    for lay in layers:
        try:
            resolve_layers(lay, 10 ** 6)
        except ValueError as e:
            raise SuiteError(f"{where} [sweep] layers: {e}") from None
    named = _constructor_names(cls)
    for k in args:
        if k not in named:  # variants swallow unknown kwargs (timm's contract): catch the typo here
            raise SuiteError(f"{where} [sweep]: attention '{variant}' has no argument '{k}'{close_matches(k, named)}")
    for c in combos:
        try:
            extra = {"num_tokens": 4} if getattr(cls, "needs_num_tokens", False) else {}
            with torch.device("meta"):
                cls(8, num_heads=2, **extra, **c)
        except (TypeError, ValueError) as e:
            raise SuiteError(f"{where} [sweep]: attention '{variant}' with {c}: {e}") from None
