"""``robustbench_rpc.benchmark(model, ...)``: the whole harness from a notebook, in RobustBench's spirit
(``robustbench.eval.benchmark(model, ...)``: a module in, numbers out), with this project's store, resume,
trust checks and report.

An ``nn.Module`` in memory enters the harness the way every model does, by name: it is registered
(:func:`robustbench_rpc.register_model`, a factory returning a thin wrapper around the instance) under
``module_<Class>_<hash>``, the hash being that of its weights and contract. The same weights give the same
name, hence the same model key: rerunning into the same ``out`` resumes, and the leaderboard treats two runs
of it as one row. RobustBench's convention holds: the module takes images in [0, 1] (it normalizes itself);
a ``data_config`` with ``mean``/``std`` says it takes normalized images instead, and the harness normalizes.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
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
    it shows it: one row per model, cells with their 95% intervals), ``tables`` (every report table by name as
    tidy numbers: fractions, interval bounds, n) and ``out`` (the run folder)."""

    out: Path
    headline: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"BenchmarkResult(out={str(self.out)!r}, tables={sorted(self.tables)})\n{self.headline.to_string()}"


class _InMemory(nn.Module):
    """The registered model: the user's instance, unchanged, as a submodule (weights shared, not copied)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


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


def _weights_hash(module: nn.Module, contract: Mapping[str, Any]) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    h.update(json.dumps(contract, sort_keys=True, default=str).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def register_module(module: nn.Module, data_config: Mapping[str, Any] | None = None) -> str:
    """Register an in-memory module under a name derived from its weights and contract; returns the name."""
    from .models import ModelContractError, register_model
    from .models.contract import HOW_TO_DECLARE, normalize_contract
    from .models.vit import MODELS

    if not isinstance(module, nn.Module):
        raise TypeError(f"benchmark: model must be an nn.Module or a registered name, got {type(module).__name__}")
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
    from .evaluation.harness import run
    from .evaluation.plan import RunConfig
    from .reports import build_report
    from .reports.data import RunData
    from .reports.tables import all_tables

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
    cfg = RunConfig(suite=suite, models=[spec], out=out, device=device, limit=limit, subset=subset,
                    data_roots=roots, dataset=dataset, data_config=cfg_contract, progress=False,
                    reference_model=reference or spec.split(":")[0], report=report)
    run(cfg, log=lambda *_: None)
    if report:
        build_report(out)
    data = RunData.load(out)
    try:
        built = all_tables(data)
    finally:
        data.close()
    lead = next((t for t in built if t.name == "headline"), built[0] if built else None)
    headline = pd.DataFrame(lead.rows, columns=lead.columns) if lead is not None else pd.DataFrame()
    return BenchmarkResult(out, headline, {t.name: t.tidy for t in built})
