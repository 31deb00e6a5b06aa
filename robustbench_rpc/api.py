"""``robustbench_rpc.benchmark(model, ...)``: the whole harness from a notebook, in RobustBench's spirit
(``robustbench.eval.benchmark(model, ...)``: a module in, numbers out), with this project's store, resume,
trust checks and report.

An ``nn.Module`` in memory enters the harness the way every model does, by name: it is registered
(:func:`robustbench_rpc.register_model`, a factory returning a thin wrapper around the instance) under
``module_<Class>_<hash>``, the hash being that of what defines its behaviour: its weights and contract, its
class's source and its output on a fixed probe input (so a changed ``forward`` with the same weights is another
model, never served the old numbers). The same module gives the same name, hence the same model key: rerunning
into the same ``out`` resumes (an ``out`` holding another model's results is refused), and the leaderboard
treats two runs of it as one row. RobustBench's convention holds: the module takes images in [0, 1] (it
normalizes itself); a ``data_config`` with ``mean``/``std`` says it takes normalized images instead, and the
harness normalizes.
"""
from __future__ import annotations

# The harness, the plan and the reports are imported inside benchmark(), on purpose: ``import robustbench_rpc``
# imports this module, and a notebook that only loads a model must not pay for the evaluation machinery.
import hashlib
import inspect
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn

_INSTANCES: dict[str, nn.Module] = {}
_CONTRACT_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes")


@dataclass
class BenchmarkResult:
    """What ``benchmark`` measured, read back from the run's store: ``headline`` (the report's headline table as
    it shows it: one row per model, cells with their 95% intervals), ``tables`` (the report's tables by name as
    tidy numbers: fractions, interval bounds, n; the diagnostics and adversarial-set tables, which come with
    their plots, are in the run folder's ``tables/``), ``out`` (the run folder) and ``checks`` (every trust check:
    check, status, message); ``failed_checks`` names the checks that FAILed: the numbers they concern are not
    to be trusted as they stand (``benchmark`` also warns)."""

    out: Path
    headline: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def failed_checks(self) -> list[str]:
        if self.checks.empty:
            return []
        return sorted(set(self.checks.loc[self.checks["status"] == "fail", "check"]))

    def __repr__(self) -> str:
        failed = f", FAILED trust checks: {', '.join(self.failed_checks)}" if self.failed_checks else ""
        return (f"BenchmarkResult(out={str(self.out)!r}, tables={sorted(self.tables)}{failed})\n"
                f"{self.headline.to_string()}")


class _InMemory(nn.Module):
    """The registered model: the user's instance, unchanged, as a submodule (weights shared, not copied). A
    module whose weights are float64 gets its images in float64 and gives float32 logits back, as every other
    model does (the harness's images are float32)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _float_dtype(self.module)
        if dtype is not None and dtype != x.dtype and x.is_floating_point():
            out = self.module(x.to(dtype))
            return out.to(x.dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out
        return self.module(x)


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    """float64 when the module's floating-point parameters are float64 (else None: images as they are)."""
    for t in module.parameters():
        if t.is_floating_point():
            return torch.float64 if t.dtype == torch.float64 else None
    return None


def _refuse_unusable(module: nn.Module) -> None:
    """A module without values (meta device) or with weights in a type the harness does not feed: one line."""
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_meta for t in tensors):
        raise ValueError(f"benchmark: the {type(module).__name__} module has tensors on the meta device (shapes "
                         "without values): materialize and load its weights first (e.g. module.to_empty(device="
                         "'cpu') then module.load_state_dict(...))")
    odd = sorted({str(t.dtype) for t in module.parameters() if t.is_floating_point()
                  and t.dtype not in (torch.float32, torch.float64)})
    if odd:
        raise ValueError(f"benchmark: the {type(module).__name__} module has {', '.join(odd)} weights; give it in "
                         "float32 (or float64) and use the suite's amp setting for reduced precision")


def _declared(module: nn.Module) -> dict[str, Any] | None:
    """The contract a module carries: a robustbench_rpc model's ``data_config`` (it takes [0, 1] images) or a
    timm model's ``pretrained_cfg`` (it takes normalized images)."""
    cfg = getattr(module, "data_config", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return {k: cfg[k] for k in _CONTRACT_KEYS if k in cfg and k not in ("mean", "std")}
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size") and cfg.get("mean"):
        out = {k: cfg[k] for k in _CONTRACT_KEYS if cfg.get(k) is not None}
        out.setdefault("num_classes", getattr(module, "num_classes", None))
        return out
    return None


#: libraries whose classes are identified by their output on the probe, not by their source (an upgrade of
#: torch rewrites nn.Linear's file without changing what a model computes; if it does, the probe says so)
_LIBRARIES = ("torch.", "torchvision.", "timm.")


def _class_source(module: nn.Module) -> str:
    """The source of every class of the user's in the module tree (its name where Python has no source, e.g.
    a class defined in a REPL)."""
    parts = []
    classes = {type(m) for m in module.modules() if not type(m).__module__.startswith(_LIBRARIES)}
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):
            parts.append(f"{cls.__module__}.{cls.__qualname__}")
    return "\n".join(parts)


@torch.no_grad()
def _probe_output(module: nn.Module, contract: Mapping[str, Any]) -> bytes:
    """The module's output (eval mode) on a fixed input of the contract's size: what its forward computes,
    whatever the code that computes it (an edited class, a patched ``forward``). A module whose output differs
    between two identical calls (random in eval mode) is fingerprinted by its output's shape and type only."""
    size = tuple(int(v) for v in contract["input_size"])
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.rand((2, *size), generator=torch.Generator().manual_seed(0)).to(device)
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:  # the user's random state is left as it was (a stochastic forward draws from it)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            outs = [_InMemory(module)(x) for _ in range(2)]
    except Exception as err:  # noqa: BLE001 - the preflight names what the forward does wrong
        return f"forward raised {type(err).__name__}".encode()
    finally:
        for m, flag in flags:
            m.training = flag
    a, b = outs
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return f"output {type(a).__name__}".encode()
    head = f"{tuple(a.shape)} {a.dtype}".encode()
    if a.shape != b.shape or not torch.equal(a, b):
        return head + b" stochastic"
    return head + a.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _weights_hash(module: nn.Module, contract: Mapping[str, Any]) -> str:
    """What defines the module's behaviour: class, contract, weights, class source and output on a probe."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    h.update(json.dumps(contract, sort_keys=True, default=str).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(_class_source(module).encode())
    h.update(_probe_output(module, contract))
    return h.hexdigest()[:12]


def register_module(module: nn.Module, data_config: Mapping[str, Any] | None = None) -> str:
    """Register an in-memory module under a name derived from its weights and contract; returns the name."""
    from .models import ModelContractError, register_model
    from .models.contract import HOW_TO_DECLARE, normalize_contract
    from .models.vit import MODELS

    if not isinstance(module, nn.Module):
        raise TypeError(f"benchmark: model must be an nn.Module or a registered name, got {type(module).__name__}")
    _refuse_unusable(module)
    declared = _declared(module)
    given = normalize_contract(dict(data_config or {}), "benchmark data_config")
    contract = {**(declared or {}), **given}
    if "input_size" not in contract or not contract.get("num_classes"):
        raise ModelContractError(
            f"benchmark: the {type(module).__name__} module declares no evaluation contract; pass "
            "data_config={'input_size': (3, H, W), 'num_classes': K} (plus interpolation, crop_pct; mean/std only "
            f"if it takes normalized images, else it takes [0, 1]), as {HOW_TO_DECLARE}")
    contract = normalize_contract(contract, "benchmark data_config")
    takes_unit = "mean" not in given and not (declared and "mean" in declared)
    mean = (0.0,) * 3 if takes_unit else contract["mean"]
    std = (1.0,) * 3 if takes_unit else contract["std"]
    name = f"module_{type(module).__name__.lower()}_{_weights_hash(module, contract)}"
    _INSTANCES[name] = module
    if name not in MODELS:
        register_model(name, input_size=contract["input_size"], mean=mean, std=std,
                       num_classes=int(contract["num_classes"]),
                       interpolation=contract.get("interpolation", "bilinear"), crop_pct=contract.get("crop_pct", 1.0),
                       notes=f"in-memory {type(module).__name__} given to benchmark() "
                             f"({'[0, 1] input' if takes_unit else 'normalized input'})")(
            lambda **kwargs: _InMemory(_INSTANCES[name]))
    return name


def benchmark(model: nn.Module | str, *, suite: str = "quick", data_config: Mapping[str, Any] | None = None,
              dataset: str | None = None, data_root: Mapping[str, str] | str | None = None,
              limit: int | None = None, out: str | Path | None = None, device: str | None = None,
              reference: str | None = None, subset: str | None = None, report: bool = True) -> BenchmarkResult:
    """Evaluate ``model`` over ``suite`` with the harness of ``robustbench-rpc run`` and return its tables.

    ``model``: an ``nn.Module`` taking [0, 1] images (RobustBench's convention) or a registered name /
    ``NAME:CHECKPOINT``. ``data_config``: its contract (``input_size``, ``num_classes``, ``interpolation``,
    ``crop_pct``; ``mean``/``std`` only for a module that takes normalized images), required for a module that
    declares none. ``dataset`` / ``data_root`` (``{"imagenet": "/data/val"}``, or a path for ``dataset``'s own
    root) / ``limit`` / ``subset`` / ``device`` as the run flags. ``out``: the run folder (default: a new
    temporary folder); rerunning into it resumes. The model alone is evaluated (``reference`` defaults to it).
    ``report``: also write the run's report (``out/index.html``), as ``robustbench-rpc run`` does.
    """
    from .evaluation.harness import STORE_NAME, run
    from .evaluation.plan import RunConfig
    from .reports import build_report
    from .reports.data import RunData
    from .reports.curve_report import curves_section
    from .reports.queries_report import indicators_table, queries_table
    from .reports.tables import all_tables
    from .store.results import ResultsStore

    if isinstance(model, str):
        spec, cfg_contract = model, dict(data_config or {})
    else:
        spec, cfg_contract = register_module(model, data_config), {}
    roots = dict(data_root) if isinstance(data_root, Mapping) else {}
    if isinstance(data_root, (str, Path)):
        if not dataset:
            raise ValueError("benchmark: data_root given as a path needs dataset=NAME (or pass {NAME: PATH})")
        roots[dataset] = str(data_root)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="rbrpc-benchmark-"))
    _refuse_another_models_folder(out, spec)
    cfg = RunConfig(suite=suite, models=[spec], out=out, device=device, limit=limit, subset=subset,
                    data_roots=roots, dataset=dataset, data_config=cfg_contract, progress=False,
                    reference_model=reference or spec.split(":")[0], report=report)
    with _as_given(model):
        run(cfg, log=lambda *_: None)
    if report:
        build_report(out)
    data = RunData.load(out)
    try:
        built = all_tables(data) + curves_section(data, None)[0]  # kind = "curve": robust accuracy vs eps
        built += [t for t in (queries_table(data), indicators_table(data)) if t is not None]  # attack costs
    finally:
        data.close()
    with ResultsStore(out / STORE_NAME, readonly=True) as store:
        checks = store.checks()[["check", "status", "message"]].reset_index(drop=True)
    lead = next((t for t in built if t.name == "headline"), built[0] if built else None)
    headline = pd.DataFrame(lead.rows, columns=lead.columns) if lead is not None else pd.DataFrame()
    result = BenchmarkResult(out, headline, {t.name: t.tidy for t in built}, checks)
    if result.failed_checks:
        failed = checks[checks["status"] == "fail"]
        warnings.warn(f"benchmark: trust checks FAILED in {out}: " + "; ".join(
            f"{r.check}: {r.message}" for r in failed.itertuples()), TrustCheckWarning, stacklevel=2)
    return result


class TrustCheckWarning(UserWarning):
    """A trust check of the run FAILED: the numbers it concerns are not to be trusted as they stand."""


def _refuse_another_models_folder(out: Path, spec: str) -> None:
    """``out`` may resume this model's run, never add it beside another model's results: the tables would hold
    both, and an in-memory module changed since (its forward, its weights) would read as the old one's row."""
    from .evaluation.harness import STORE_NAME
    from .store.results import ResultsStore

    if not (out / STORE_NAME).is_file():
        return
    with ResultsStore(out / STORE_NAME, readonly=True) as store:
        models = store.models()
    held = sorted(set(models["spec"])) if "spec" in models else []
    if held and held != [spec]:
        raise ValueError(f"benchmark: out {out} holds results of another model ({', '.join(held)}), not of {spec}"
                         + (" (this module's weights, code or output on a probe input differ from the one run "
                            "there)" if spec.startswith("module_") else "")
                         + ": pass a new out (rerunning the same model into its out resumes)")


class _as_given:
    """The user's module comes back as it was given: each submodule's train/eval flag and its device (the
    harness puts a model in eval mode on the run's device)."""

    def __init__(self, model: Any):
        self.model = model if isinstance(model, nn.Module) else None

    def __enter__(self):
        if self.model is not None:
            self.flags = [(m, m.training) for m in self.model.modules()]
            self.devices = {t.device for t in self.model.parameters()} | {t.device for t in self.model.buffers()}
        return self

    def __exit__(self, *exc):
        if self.model is not None:
            if len(self.devices) == 1:
                self.model.to(next(iter(self.devices)))
            for m, flag in self.flags:
                m.training = flag
        return False
