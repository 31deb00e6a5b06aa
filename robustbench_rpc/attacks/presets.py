"""Named attack presets: lists of attack specs ``{"name": ..., **params}`` for ``get_attack``.

* ``paper``: the RPC-Attention paper's attack rows exactly as its code runs them (rachtsy/KPCA_code,
  ``Attack/engine.py::evaluate`` and ``Attack/run_pgd.sh``, which call cleverhans v4's PyTorch attacks on
  the model's NORMALIZED input, without clipping, with ``y=None``). Every row has ``space="normalized"``,
  ``clip=False``, ``labels="predicted"`` and reports plain accuracy (top-1/top-5 of ``model(x_adv)``
  against the true label):
  FGSM (one step, Linf eps i/255, i = 1..6); PGD (20 steps, step 0.15*eps, uniform random start in
  the eps box, eps i/255); SPSA (10 iterations, lr 0.01, delta 0.01, 128 samples, eps i/255, no early
  stop, cleverhans' estimation point); SLD (L1 eps 10, step 1.0, 20 iterations, sparsity 99, cleverhans'
  rescaling, no saturation mask); CW-L2 (``cw-cleverhans``: 1000 iterations, lr 5e-3, 5 binary-search
  steps, initial c 1e-2, confidence = i/255 as the paper passes its ``--eps``); noise (uniform +-0.3 in
  normalized units, cleverhans' default, whatever the row's eps). ``attack_amp = False``: attacks run in
  fp32 as in the paper, whose autocast only wraps the final classification.
* ``paper-extras``: AutoAttack standard and Square, Linf 1/255, in the standard pixel threat model
  (clipped, true labels, robust accuracy). NOT in the paper's code: ours, next to the paper's rows. The
  reference libraries work on [0, 1] images, so these rows cannot take the paper's normalized threat model.
* ``pixel``: the same attack families in the standard pixel threat model (eps in [0, 1] pixel units,
  clipped, true labels, robust accuracy): FGSM and PGD at 1..6/255, SPSA 1/255, SLD (L1 12), CW-L2,
  uniform noise 1..6/255, AutoAttack standard 1/255. (This was called ``paper`` before version 0.2.)
* ``adaptive``: the adaptive evaluation of one budget (Linf 1/255 unless the suite sets ``eps``): APGD-CE
  and APGD-DLR (100 iterations, 5 restarts each, on the exact unrolled backward), Square with AutoAttack
  standard's settings (5000 queries, p_init 0.8, no rescaled schedule), ``bpda`` (APGD-CE, 100 iterations,
  through each RPC approximation: ``symmetric``, ``no-threshold``, ``straight-through``; on a model that
  declares none it runs with exact gradients) and ``transfer`` from ``self:no-pap`` (APGD-CE, 100
  iterations, 5 restarts, on the same weights with PAP off). All in the standard pixel threat model, robust
  accuracy; each spec says ``adaptive = true`` (``evalspec.is_adaptive``), so the report sets their worst
  case beside the standard attacks'. Cost per image, in forward+backward passes: 5 x 100 x 2 (APGD) + 3 x 100 (BPDA) + 5 x 100
  (transfer, on the surrogate) = 1800, plus up to 5000 forward passes for Square; the APGD restarts, Square
  and BPDA stop on a sample once it is fooled (robust accuracy allows it).
* ``robustbench-imagenet``: AutoAttack standard, Linf 4/255.
* ``robustbench-cifar10``: AutoAttack standard, Linf 8/255.

Specs may hold a list of eps values (a budget sweep); ``expand_sweep`` turns one into one spec per eps.
"""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry

PRESETS: Registry[Callable[[], list[dict[str, Any]]]] = Registry("attack preset")


def register_preset(name: str, *, overwrite: bool = False):
    """Decorator for a function returning a list of attack specs."""
    return PRESETS.register(name, overwrite=overwrite)


def list_presets(pattern: str | None = None) -> list[str]:
    return PRESETS.names(pattern)


def get_preset(name: str) -> list[dict[str, Any]]:
    """The specs of preset ``name`` (fresh dicts; sweeps already expanded to one eps per spec)."""
    return [s for spec in PRESETS.get(name)() for s in expand_sweep(spec)]


def eps_grid(n: int = 6, denominator: float = 255.0, start: int = 1) -> list[float]:
    """[start/denominator, ..., n/denominator], e.g. the paper's Linf 1/255 ... 6/255."""
    return [k / denominator for k in range(start, n + 1)]


def expand_sweep(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A spec whose ``eps`` is a list becomes one spec per eps; ``alpha_factor`` (if present) becomes
    ``alpha = alpha_factor * eps``."""
    eps = spec.get("eps")
    values = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    out = []
    for e in values:
        s = dict(spec)
        s["eps"] = e
        factor = s.pop("alpha_factor", None)
        if factor is not None:
            s["alpha"] = factor * e
        out.append(s)
    return out


#: the RPC paper's threat model (see the module docstring): normalized input, no clip, predicted labels
PAPER_THREAT = {"space": "normalized", "clip": False, "labels": "predicted", "accuracy": "plain",
                "attack_amp": False}


@register_preset("paper")
def _paper() -> list[dict[str, Any]]:
    linf = eps_grid(6)
    rows = [
        {"name": "fgsm", "norm": "Linf", "eps": linf},
        {"name": "pgd", "norm": "Linf", "eps": linf, "steps": 20, "alpha_factor": 0.15, "random_start": True},
        {"name": "spsa", "norm": "Linf", "eps": linf, "steps": 10, "lr": 0.01, "delta": 0.01, "n_samples": 128,
         "random_start": True, "early_stop": False, "estimate_at": "cleverhans"},
        {"name": "sld", "norm": "L1", "eps": 10.0, "alpha": 1.0, "steps": 20, "sparsity": 99.0,
         "projection": "rescale", "mask_saturated": False, "random_start": False},
        *({"name": "cw-cleverhans", "norm": "L2", "eps": None, "confidence": c, "max_iterations": 1000,
           "lr": 5e-3, "binary_search_steps": 5, "initial_const": 1e-2, "clip_min": 0.0, "clip_max": 1.0}
          for c in linf),
        {"name": "noise", "norm": "Linf", "eps": 0.3},
    ]
    return [{**row, **PAPER_THREAT} for row in rows]


@register_preset("paper-extras")
def _paper_extras() -> list[dict[str, Any]]:
    return [
        {"name": "autoattack", "norm": "Linf", "eps": 1 / 255, "version": "standard"},
        {"name": "square", "norm": "Linf", "eps": 1 / 255, "n_queries": 5000},
    ]


@register_preset("pixel")
def _pixel() -> list[dict[str, Any]]:
    linf = eps_grid(6)
    return [
        {"name": "fgsm", "norm": "Linf", "eps": linf},
        {"name": "pgd", "norm": "Linf", "eps": linf, "steps": 20, "alpha_factor": 0.15, "random_start": True},
        {"name": "spsa", "norm": "Linf", "eps": 1 / 255},
        {"name": "sld", "norm": "L1", "eps": 12.0, "sparsity": 99.0},
        {"name": "cw", "norm": "L2", "eps": None, "c": 1.0, "kappa": 0.0, "steps": 50, "lr": 0.01},
        {"name": "noise", "norm": "Linf", "eps": linf},
        {"name": "autoattack", "norm": "Linf", "eps": 1 / 255, "version": "standard"},
    ]


@register_preset("robustbench-imagenet")
def _robustbench_imagenet() -> list[dict[str, Any]]:
    return [{"name": "autoattack", "norm": "Linf", "eps": 4 / 255, "version": "standard"}]


@register_preset("robustbench-cifar10")
def _robustbench_cifar10() -> list[dict[str, Any]]:
    return [{"name": "autoattack", "norm": "Linf", "eps": 8 / 255, "version": "standard"}]


#: RPC attention's BPDA approximations (attention/rpc.py), each its own evaluation in the adaptive preset
RPC_APPROXIMATIONS = ("symmetric", "no-threshold", "straight-through")


@register_preset("adaptive")
def _adaptive() -> list[dict[str, Any]]:
    eps = 1 / 255
    apgd = {"name": "apgd", "norm": "Linf", "eps": eps, "n_iter": 100, "n_restarts": 5}
    specs = [
        {**apgd, "loss": "ce"},
        {**apgd, "loss": "dlr"},
        {"name": "square", "norm": "Linf", "eps": eps, "n_queries": 5000, "p_init": 0.8, "resc_schedule": False},
        *({"name": "bpda", "norm": "Linf", "eps": eps, "approximation": a, "base": "apgd-ce",
           "base_args": {"n_iter": 100}, "undeclared": "exact"} for a in RPC_APPROXIMATIONS),
        {"name": "transfer", "norm": "Linf", "eps": eps, "surrogate": "self:no-pap", "base": "apgd-ce",
         "base_args": {"n_iter": 100, "n_restarts": 5}},
    ]
    return [{**s, "adaptive": True} for s in specs]  # evaluation-level: counted as adaptive (evalspec)
