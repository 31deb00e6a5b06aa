"""Training recipes: versioned TOML files, validated before any compute, with command-line overrides.

A recipe has top-level ``name``, ``version`` (the recipe's own version, recorded with the weights),
``description``, ``seed`` and five tables, every key optional except ``model.name``::

    [model]      name, kwargs, init, attention, attention_layers, attention_args, attention_reinit, data_config
    [data]       dataset, root, val_root, augment, max_shift, pad, limit, allow_missing_classes
    [optim]      optimizer, lr, weight_decay, momentum, nesterov, betas, batch_size, epochs, warmup_epochs,
                 min_lr, label_smoothing, clip_grad, ema_decay, ema_warmup
    [objective]  name (standard | pgd-at | trades), eps, steps, step_size, random_start, step_ramp_epochs, beta
    [validation] eps, steps, step_size, limit, every, select, holdout, batch_size, diagnostics, diagnostics_limit

Unknown keys are refused with close matches, values are type- and range-checked, and each error is one line
naming the file and the key. Overrides (``--epochs 5``, ``--set optim.lr=1e-3``) are checked the same way.
The defaults are the recipe of the shipped clean micro checkpoints (``train.py`` before recipes existed).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping
from ..evalspec import linf_range_problem
from ..diagnostics import list_diagnostics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .objectives import list_objectives
from ..registry import did_you_mean

RECIPES_DIR = Path(__file__).parent / "recipes"
DATASET_NAMES = ("digits32", "folder", "imagenet", "cifar10", "cifar100")
AUGMENTS = ("default", "none", "shift", "crop-flip", "rrc-flip")


class RecipeError(ValueError):
    """A recipe or override that cannot be trained; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Field:
    """One recipe key: its kind, default and range check (``check(value) -> error text or None``)."""

    kind: str  # int | float | str | bool | table | list | eps | layers
    default: Any
    check: Callable[[Any], str | None] | None = None
    optional: bool = False  # None allowed (absent)


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _at_least_one(v):
    return None if v >= 1 else "must be >= 1"


def _fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _linf_budget(v):
    """A pixel-space Linf budget: > 0 and within the [0, 1] image range, refused in ``run``'s words."""
    return _positive(v) or linf_range_problem(v)


def _choice(*options: str):
    def check(v):
        if v in options:
            return None
        return f"must be one of {', '.join(options)}" + did_you_mean(v, options, n=2, aside=True)
    return check


def _objective(v):
    return _choice(*list_objectives())(v)


def _diagnostic_names(v):
    """Opt-in per-epoch diagnostics (``validation.diagnostics``): registered names only."""
    known = list_diagnostics()
    unknown = [n for n in v if n not in known]
    if unknown or not v:
        return (f"must list registered diagnostics ({', '.join(known)})"
                + (did_you_mean(unknown[0], known, n=2, aside=True) if unknown else ""))
    return None


def _betas(v):
    if len(v) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in v):
        return "must be two numbers in [0, 1), e.g. [0.9, 0.999]"
    return None


SCHEMA: dict[str, dict[str, Field]] = {
    "": {"name": Field("str", ""), "version": Field("int", 1, _at_least_one), "description": Field("str", ""),
         "seed": Field("int", 0)},
    "model": {
        "name": Field("str", None, optional=True), "kwargs": Field("table", {}),
        "init": Field("str", None, optional=True),
        "attention": Field("str", None, optional=True), "attention_layers": Field("layers", "all"),
        "attention_args": Field("table", {}), "attention_reinit": Field("bool", False),
        "data_config": Field("table", {}),
    },
    "data": {
        "dataset": Field("str", "digits32", _choice(*DATASET_NAMES)), "root": Field("str", None, optional=True),
        "val_root": Field("str", None, optional=True), "augment": Field("str", "default", _choice(*AUGMENTS)),
        "max_shift": Field("int", 2, _non_negative), "pad": Field("int", 4, _non_negative),
        "limit": Field("int", 0, _non_negative), "allow_missing_classes": Field("bool", False),
    },
    "optim": {
        "optimizer": Field("str", "adamw", _choice("adamw", "sgd")), "lr": Field("float", 3e-3, _positive),
        "weight_decay": Field("float", 0.05, _non_negative), "momentum": Field("float", 0.9, _fraction),
        "nesterov": Field("bool", False), "betas": Field("list", [0.9, 0.999], _betas),
        "batch_size": Field("int", 64, _at_least_one), "epochs": Field("int", 60, _at_least_one),
        "warmup_epochs": Field("int", 2, _non_negative), "min_lr": Field("float", 0.0, _non_negative),
        "label_smoothing": Field("float", 0.1, _fraction), "clip_grad": Field("float", 1.0, _non_negative),
        "ema_decay": Field("float", 0.0, _fraction), "ema_warmup": Field("bool", False),
    },
    "objective": {
        "name": Field("str", "standard", _objective), "eps": Field("eps", 8 / 255, _linf_budget),
        "steps": Field("int", 7, _at_least_one), "step_size": Field("eps", 2 / 255, _positive),
        "random_start": Field("bool", True), "step_ramp_epochs": Field("int", 0, _non_negative),
        "beta": Field("float", 6.0, _non_negative),
    },
    "validation": {
        "eps": Field("eps", None, _linf_budget, optional=True), "steps": Field("int", 10, _non_negative),
        "step_size": Field("eps", None, _positive, optional=True), "limit": Field("int", 0, _non_negative),
        "every": Field("int", 1, _at_least_one), "select": Field("str", "auto", _choice("auto", "clean", "pgd")),
        "holdout": Field("float", None, _fraction, optional=True), "batch_size": Field("int", 128, _at_least_one),
        "diagnostics": Field("list", None, _diagnostic_names, optional=True),
        "diagnostics_limit": Field("int", None, _at_least_one, optional=True),
    },
}
SECTIONS = tuple(s for s in SCHEMA if s)
#: keys that describe the recipe, not the training it asks for (left out of the recipe hash)
_UNHASHED = {"description"}
#: opt-in keys left out of ``to_dict`` while unset, so recipes without them keep their dict and hash
_ABSENT_UNLESS_SET = (("validation", "diagnostics"), ("validation", "diagnostics_limit"))


def parse_eps(value: Any) -> float:
    """A pixel budget: a number or a fraction string like '8/255'."""
    if isinstance(value, bool):
        raise ValueError
    return float(Fraction(value.replace(" ", ""))) if isinstance(value, str) else float(value)


def _finite(value: float) -> float:
    """inf or nan passes every range check written as a comparison the wrong way (``inf > 0``) and trains to
    NaN weights, so no number of a recipe may be one."""
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return value


def _coerce(field: Field, value: Any) -> Any:
    """``value`` as ``field.kind`` or raise ValueError with what was expected."""
    kind = field.kind
    if value is None and field.optional:
        return None
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value))
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "table" and isinstance(value, Mapping):
        return dict(value)
    if kind == "list" and isinstance(value, (list, tuple)):
        return list(value)
    if kind == "eps":
        try:
            eps = parse_eps(value)
        except (ValueError, ZeroDivisionError, TypeError, AttributeError):
            raise ValueError("a number or a fraction like '8/255'") from None
        return _finite(eps)
    if kind == "layers" and (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
                             or (isinstance(value, list) and all(isinstance(i, int) for i in value))):
        return value
    expected = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "table": "a table", "list": "a list", "layers": "all, first, last or block indices"}[kind]
    raise ValueError(expected)


def _unknown(key: str, allowed: list[str], where: str) -> RecipeError:
    hint = did_you_mean(key, allowed, aside=True)
    return RecipeError(f"{where}: unknown key '{key}'{hint}; allowed: {', '.join(allowed)}")


def _set(raw: dict[str, Any], section: str, key: str, value: Any, where: str) -> None:
    fields = SCHEMA[section]
    label = f"{section}.{key}" if section else key
    if key not in fields:
        raise _unknown(label, [f"{section}.{k}" if section else k for k in fields], where)
    field = fields[key]
    try:
        value = _coerce(field, value)
    except ValueError as e:
        raise RecipeError(f"{where}: {label} must be {e}, got {value!r}") from None
    if value is not None and field.check is not None:
        problem = field.check(value)
        if problem:
            raise RecipeError(f"{where}: {label} {problem}, got {value!r}")
    (raw.setdefault(section, {}) if section else raw)[key] = value


@dataclass
class Recipe:
    """A validated recipe: ``recipe.optim.lr``; ``source`` is the file (or 'command line')."""

    name: str
    version: int
    description: str
    seed: int
    model: SimpleNamespace
    data: SimpleNamespace
    optim: SimpleNamespace
    objective: SimpleNamespace
    validation: SimpleNamespace
    source: str = "command line"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version, "description": self.description,
                               "seed": self.seed}
        for s in SECTIONS:
            out[s] = copy.deepcopy(vars(getattr(self, s)))
        for s, k in _ABSENT_UNLESS_SET:
            if out[s].get(k) is None:
                out[s].pop(k, None)
        return out

    def sha256(self) -> str:
        """Hash of what the recipe trains (its description left out): equal hashes, equal trainings."""
        body = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _finish(raw: dict[str, Any], where: str) -> Recipe:
    """Fill defaults, check cross-key rules, build the Recipe."""
    tables: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = raw if not section else raw.get(section, {})
        tables[section] = {k: copy.deepcopy(given[k]) if k in given else copy.deepcopy(f.default)
                           for k, f in fields.items()}
    model, optim, obj, val = tables["model"], tables["optim"], tables["objective"], tables["validation"]
    if not model["name"]:
        raise RecipeError(f"{where}: model.name is required (--model NAME or [model] name = ...)")
    if optim["min_lr"] > optim["lr"]:
        raise RecipeError(f"{where}: optim.min_lr ({optim['min_lr']:g}) exceeds optim.lr ({optim['lr']:g})")
    if obj["step_ramp_epochs"] and obj["name"] == "standard":
        raise RecipeError(f"{where}: objective.step_ramp_epochs only applies to pgd-at and trades")
    if obj["name"] == "trades" and not obj["random_start"]:
        raise RecipeError(f"{where}: objective.random_start = false does not apply to trades (it starts at "
                          "x + 0.001 N(0, I) as trades.py: at x the KL gradient is zero)")
    if val["eps"] is None:
        val["eps"] = obj["eps"]
    if val["step_size"] is None and val["steps"]:
        val["step_size"] = 2.5 * val["eps"] / val["steps"]  # the project's PGD default (attacks/pgd.py)
    if val["select"] == "pgd" and not val["steps"]:
        raise RecipeError(f"{where}: validation.select = 'pgd' needs validation.steps >= 1")
    if val["select"] == "auto":
        val["select"] = "clean" if obj["name"] == "standard" or not val["steps"] else "pgd"
    top = tables[""]
    name = top["name"] or f"{model['name'].replace(':', '_')}-{obj['name']}"
    return Recipe(name, top["version"], top["description"], top["seed"],
                  *(SimpleNamespace(**tables[s]) for s in SECTIONS), source=where)


def recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe by name (``robustbench_rpc/training/recipes/NAME.toml``) or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        shipped = RECIPES_DIR / f"{name_or_path}.toml"
        if shipped.is_file():
            return shipped
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
        hint = did_you_mean(name_or_path, names)
        raise RecipeError(f"unknown recipe '{name_or_path}'.{hint} Shipped recipes: {', '.join(names)}; "
                          "or pass a .toml file")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    return path


def read_recipe_file(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """The checked raw tables of a recipe file, and its path for messages."""
    path = recipe_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: invalid TOML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read it: {e}") from None
    raw: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise RecipeError(f"{path}: [{key}] must be a table")
            for k, v in value.items():
                _set(raw, key, k, v, str(path))
        elif key in SCHEMA[""]:
            _set(raw, "", key, value, str(path))
        else:
            raise _unknown(key, list(SCHEMA[""]) + [f"[{s}]" for s in SECTIONS], str(path))
    return raw, str(path)


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (``5``, ``1e-3``, ``true``, ``"a"``, ``[1, 2]``), else the
    text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_recipe(file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                 flags: Mapping[str, str] | None = None) -> Recipe:
    """Recipe file (optional) + overrides (``{"optim.lr": 1e-3, "model.kwargs": {...}}``; later wins) ->
    a validated :class:`Recipe`. Table-valued overrides of ``kwargs``/``attention_args``/``data_config``
    merge into the file's tables. ``flags``: the command-line flag that gave each override, for messages."""
    raw, where = read_recipe_file(file) if file is not None else ({}, "command line")
    every = list(SCHEMA[""]) + [f"{s}.{k}" for s in SECTIONS for k in SCHEMA[s]]
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        flag = (flags or {}).get(dotted, f"--set {dotted}")
        if (section and section not in SECTIONS) or (section == "" and key not in SCHEMA[""]):
            raise _unknown(dotted, every, flag)
        current = (raw.get(section, {}) if section else raw).get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            value = {**current, **value}
        _set(raw, section, key, value, flag)
    return _finish(raw, where)
