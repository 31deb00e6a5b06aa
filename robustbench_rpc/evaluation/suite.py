"""Suites: versioned TOML files declaring what to run, validated before any compute.

A suite has ``[defaults]`` (dataset, models, reference model, batch size, seed, limit, data roots) and a
list of ``[[evaluation]]`` tables. CLI flags override defaults. ``expand`` turns the declaration into
concrete ``EvalSpec`` items (one per attack x eps, corruption x severity, ...), each with a stable key.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from . import ood
from .. import attacks, corruptions
from ..registry import UnknownNameError
from ..diagnostics import DIAGNOSTICS
from .external import external_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..evalspec import EvalSpec, SuiteError, parse_eps, resolve_attack
from ..registry import did_you_mean

SUITES_DIR = Path(__file__).parent.parent / "suites"
KINDS = ("clean", "attack", "corruption", "ood", "shift", "diagnostics", "external", "transfer", "curve")
#: the norms a ``kind = "curve"`` evaluation may use: those the store keeps per sample (``store.rows.NORM_COLUMNS``)
CURVE_NORMS = ("L0", "L1", "L2", "Linf")
_DEFAULT_KEYS = {"dataset", "models", "reference_model", "batch_size", "seed", "limit", "subset", "data_roots",
                 "workers", "amp", "device"}
_EVAL_KEYS = {
    "clean": {"kind", "dataset"},
    "attack": None,  # any attack parameter passes through to get_attack
    "corruption": {"kind", "corruptions", "severities", "source", "severity_table", "root"},
    "ood": {"kind", "dataset", "protocol"},  # protocol: see robustbench_rpc.evaluation.ood
    "shift": {"kind", "dataset"},
    # robustbench_rpc.diagnostics on clean images and, optionally, the same images attacked / corrupted;
    # stored in the run's meta table (not per-sample rows), shown by reports/diagnostics.py
    "diagnostics": {"kind", "diagnostics", "attack", "attack_args", "corruption", "severity"},
    # a given adversarial set scored on the run's models (evaluation/external.py)
    "external": {"kind", "adversarial", "norm", "eps"},
    # every model on the sets saved from every model (evaluation/transfer.py; planned once models are known)
    "transfer": {"kind", "quantize", "sources"},
    # robust accuracy vs eps from per-sample minimal norms: one attack evaluation per entry of attacks, each
    # tagged with the curve's name (reports/curve_report.py)
    "curve": {"kind", "name", "attacks", "norm"},
}
#: [sweep]: a model grid -- every model x every layers x every combination of args, with the attention
#: variant patched in at evaluation time (see harness.sweep_models)
_SWEEP_KEYS = {"attention", "layers", "args", "include_base"}


@dataclass
class Suite:
    name: str
    version: int
    description: str
    defaults: dict[str, Any]
    evaluations: list[dict[str, Any]]
    path: str = ""
    sweep: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "description": self.description,
               "defaults": self.defaults, "evaluations": self.evaluations, "path": self.path}
        if self.sweep:
            out["sweep"] = self.sweep
        return out


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: "str | Path | Suite") -> Suite:
    """A packaged suite by name (``quick``, ``paper``, ``robustbench``), a TOML file path, or a Suite
    already built (e.g. by a command that plans one evaluation of its own)."""
    if isinstance(name_or_path, Suite):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            hint = did_you_mean(name_or_path, list_suites())
            raise SuiteError(f"unknown suite '{name_or_path}'.{hint} Packaged suites: {', '.join(list_suites())}; "
                             "or pass a .toml file path")
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: invalid TOML: {e}") from e
    return suite_from_dict(raw, str(path))


def _check_keys(given: set[str], allowed: set[str], where: str) -> None:
    for key in sorted(given - allowed):
        hint = did_you_mean(key, allowed, aside=True)
        raise SuiteError(f"{where}: unknown key '{key}'{hint}; allowed: {', '.join(sorted(allowed))}")


def _check_header(raw: dict[str, Any], path: str) -> None:
    """``name`` a non-empty string, ``version`` the suite's own revision (a whole number >= 1, stored with the run
    and compared on resume: 1.5 or "one" would be cut or crash later), ``description`` a string."""
    name, version = raw["name"], raw.get("version", 1)
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"{path}: name must be a non-empty string, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SuiteError(f"{path}: version must be a whole number >= 1 (the suite's own revision, e.g. version = 2), "
                         f"got {version!r}")
    if not isinstance(raw.get("description", ""), str):
        raise SuiteError(f"{path}: description must be a string, got {raw['description']!r}")


def suite_from_dict(raw: dict[str, Any], path: str = "<suite>") -> Suite:
    _check_keys(set(raw), {"name", "version", "description", "defaults", "evaluation", "sweep"}, path)
    for req in ("name", "evaluation"):
        if req not in raw:
            raise SuiteError(f"{path}: missing required key '{req}'")
    _check_header(raw, path)
    defaults = dict(raw.get("defaults", {}))
    _check_keys(set(defaults), _DEFAULT_KEYS, f"{path} [defaults]")
    models = defaults.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise SuiteError(f"{path} [defaults] models must be a list of names such as [\"symvit_micro_patch4_32:packaged\"], "
                         f"got {models!r}")
    for key in ("dataset", "reference_model"):
        if key in defaults and not isinstance(defaults[key], str):
            raise SuiteError(f"{path} [defaults] {key} must be a string, got {defaults[key]!r}")
    evals = raw["evaluation"]
    if not isinstance(evals, list) or not evals:
        raise SuiteError(f"{path}: 'evaluation' must be a non-empty list of [[evaluation]] tables")
    for i, ev in enumerate(evals):
        where = f"{path} [[evaluation]] #{i + 1}"
        kind = ev.get("kind")
        if kind not in KINDS:
            hint = did_you_mean(kind, KINDS, n=2, aside=True)
            raise SuiteError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}{hint}")
        allowed = _EVAL_KEYS[kind]
        if allowed is not None:
            _check_keys(set(ev), allowed, where)
        elif "attack" not in ev and "preset" not in ev:
            raise SuiteError(f"{where}: an attack evaluation needs 'attack' (a name) or 'preset'")
    sweep = dict(raw.get("sweep", {}))
    if sweep:
        _check_keys(set(sweep), _SWEEP_KEYS, f"{path} [sweep]")
        if "attention" not in sweep:
            raise SuiteError(f"{path} [sweep]: needs 'attention' (a registered attention variant)")
        if not isinstance(sweep.get("args", {}), dict):
            raise SuiteError(f"{path} [sweep]: 'args' must be a table of lists, e.g. lam = [1, 4]")
    return Suite(raw["name"], raw.get("version", 1), raw.get("description", ""), defaults, evals, path,
                 sweep)


def _ood_specs(ev: dict[str, Any], where: str) -> list[EvalSpec]:
    """An OOD evaluation, preceded by the in-distribution evaluation its protocol needs (if its own)."""
    if "dataset" not in ev:
        raise SuiteError(f"{where}: an ood evaluation needs 'dataset'")
    spec = EvalSpec("ood", ev["dataset"], ev["dataset"], ood.ood_params(ev["dataset"], ev.get("protocol"), where))
    in_spec = ood.in_distribution_spec(spec)  # its own in-distribution evaluation, planned with it
    return ([in_spec] if in_spec is not None else []) + [spec]


def _attack_evals(ev: dict[str, Any], dataset: str, amp: str | None, where: str) -> list[EvalSpec]:
    """One evaluation per attack (a preset's rows) and budget, each attack resolved once."""
    out = []
    for spec in _attack_specs(ev, where):
        name = spec.pop("attack", None) or spec.pop("name", None)
        if name is None:
            raise SuiteError(f"{where}: attack spec without a name: {spec}")
        _known(attacks.ATTACKS, name, where)
        save = spec.pop("save_adversarial", False)
        if not isinstance(save, bool):
            raise SuiteError(f"{where}: save_adversarial must be true or false, got {save!r}")
        budget = spec.get("query_budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise SuiteError(f"{where}: attack {name}: query_budget must be an integer >= 1 (forwards + backwards "
                             f"per sample), got {budget!r}")
        eps_list = spec.pop("eps", None)
        if isinstance(eps_list, list) and not eps_list:
            raise SuiteError(f"{where}: attack {name}: eps is an empty list; give at least one budget")
        for eps in eps_list if isinstance(eps_list, list) else [eps_list]:
            params = dict(spec)
            if eps is not None:
                params["eps"] = parse_eps(eps, where)
            e = EvalSpec("attack", name, dataset, params, save_adversarial=save)
            out.append(replace(e, resolved=resolve_attack(e, amp, where)))
    return out


def _curve_evals(ev: dict[str, Any], dataset: str, amp: str | None, where: str) -> list[EvalSpec]:
    """A curve's attacks (``attacks = [{attack = "fmn"}, {attack = "pgd", eps = "8/255"}, ...]``), each an attack
    evaluation in the curve's ``norm`` (one of ``CURVE_NORMS``, the per-sample norms the store keeps), tagged
    ``curve``. An attack that does not take that norm is refused by name, before any compute."""
    norm, attacks_ = ev.get("norm"), ev.get("attacks")
    if norm not in CURVE_NORMS:
        raise SuiteError(f"{where}: a curve's norm must be one of " + ", ".join(f'"{n}"' for n in CURVE_NORMS)
                         + f" (the per-sample norms the store keeps), got {norm!r}")
    if not isinstance(attacks_, list) or not attacks_ or not all(isinstance(a, dict) and "attack" in a
                                                                for a in attacks_):
        raise SuiteError(f"{where}: a curve needs attacks = [{{attack = \"fmn\"}}, ...], a list of attack tables")
    name = ev.get("name", f"{norm} curve")
    if not isinstance(name, str):
        raise SuiteError(f"{where}: the curve's name must be a string, got {name!r}")
    out = []
    for a in attacks_:
        if a.get("norm", norm) != norm:
            raise SuiteError(f"{where}: attack {a['attack']} has norm {a['norm']!r} in a {norm} curve")
        _known(attacks.ATTACKS, a["attack"], where)
        takes = getattr(attacks.ATTACKS.get(a["attack"]), "norms", None)
        if takes is not None and norm not in takes:
            raise SuiteError(f"{where}: attack {a['attack']} does not take norm {norm!r} (it takes "
                             f"{', '.join(takes)}), so it cannot be part of a {norm} curve")
        out += _attack_evals({**a, "norm": norm, "curve": name}, dataset, amp, where)
    return out


def _corruption_evals(ev: dict[str, Any], dataset: str, where: str) -> list[EvalSpec]:
    """One evaluation per corruption and severity, names and severities checked."""
    source = ev.get("source", "on-the-fly")
    if source not in ("on-the-fly", "imagenet-c", "cifar10-c", "cifar100-c"):
        raise SuiteError(f"{where}: source must be on-the-fly, imagenet-c, cifar10-c or cifar100-c, got {source!r}")
    names = ev.get("corruptions", "common")
    if isinstance(names, str):
        names = corruptions.list_corruptions(names) if names in ("common", "extra", "all") else [names]
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise SuiteError(f"{where}: corruptions must be a name, a list of names, or common/extra/all, got {names!r}")
    for c in names:
        _known(corruptions.CORRUPTIONS, c, where)
    severities = ev.get("severities", [1, 2, 3, 4, 5])
    if not isinstance(severities, list):
        raise SuiteError(f"{where}: severities must be a list such as [1, 3, 5], got {severities!r}")
    bad = [s for s in severities if isinstance(s, bool) or s not in (1, 2, 3, 4, 5)]
    if bad:
        raise SuiteError(f"{where}: severities must be within 1..5, got {bad}")
    return [EvalSpec("corruption", c, dataset if source == "on-the-fly" else source,
                     {"corruption": c, "severity": int(s), "source": source,
                      "severity_table": ev.get("severity_table", "auto")})
            for c in names for s in severities]


def _attack_specs(ev: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "preset" in ev:
        extra = {k: v for k, v in ev.items() if k not in ("kind", "preset")}
        try:
            specs = [dict(s) for s in attacks.get_preset(ev["preset"])]
        except KeyError as e:
            raise SuiteError(f"{where}: {e}") from None
        return [{**s, **extra} for s in specs]
    return [{k: v for k, v in ev.items() if k != "kind"}]


def _known(registry, name: str, where: str) -> None:
    """A registered name, or a SuiteError naming the file and the registry's did-you-mean message."""
    try:
        registry.get(name)
    except UnknownNameError as e:
        raise SuiteError(f"{where}: {e}") from None


def _diagnostics_spec(ev: dict[str, Any], dataset: str, where: str) -> EvalSpec:
    """A ``kind = "diagnostics"`` evaluation, every name and parameter checked now."""
    names = ev.get("diagnostics", DIAGNOSTICS.names())
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
        _known(DIAGNOSTICS, n, where)
    params: dict[str, Any] = {"diagnostics": names}
    if ev.get("attack"):
        _known(attacks.ATTACKS, ev["attack"], where)
        args = dict(ev.get("attack_args", {}))
        if "eps" in args:
            args["eps"] = parse_eps(args["eps"], where)
        resolve_attack(EvalSpec("attack", ev["attack"], dataset, args), None, where)
        params.update(attack=ev["attack"], attack_args=args)
    elif "attack_args" in ev:
        raise SuiteError(f"{where}: attack_args without attack")
    if ev.get("corruption"):
        _known(corruptions.CORRUPTIONS, ev["corruption"], where)
        severity = ev.get("severity", 3)
        if severity not in (1, 2, 3, 4, 5):
            raise SuiteError(f"{where}: severity must be within 1..5, got {severity!r}")
        params.update(corruption=ev["corruption"], severity=int(severity))
    return EvalSpec("diagnostics", "diagnostics", dataset, params)


def expand(suite: Suite, dataset: str, amp: str | None = None) -> list[EvalSpec]:
    """Concrete evaluations in declaration order, with names validated against the registries; every
    attack is built once (with the run's ``amp``) and carries its parameters as they will run."""
    out: list[EvalSpec] = []
    for i, ev in enumerate(suite.evaluations):
        where = f"{suite.path} [[evaluation]] #{i + 1}"
        kind = ev["kind"]
        if kind == "clean":
            out.append(EvalSpec("clean", "clean", ev.get("dataset", dataset)))
        elif kind == "shift":
            if "dataset" not in ev:
                raise SuiteError(f"{where}: a {kind} evaluation needs 'dataset'")
            out.append(EvalSpec(kind, ev["dataset"], ev["dataset"]))
        elif kind == "ood":
            *in_spec, spec = _ood_specs(ev, where)
            out += [s for s in in_spec if s not in out] + [spec]  # the in-distribution set once; the OOD set always
        elif kind == "attack":
            out += _attack_evals(ev, dataset, amp, where)
        elif kind == "diagnostics":
            out.append(_diagnostics_spec(ev, dataset, where))
        elif kind == "corruption":
            out += _corruption_evals(ev, dataset, where)
        elif kind == "curve":
            out += _curve_evals(ev, dataset, amp, where)
        elif kind == "external":
            out.append(external_spec(ev, dataset, where))
        # kind "transfer": planned with the models (evaluation/transfer.py), its keys checked there
    keys = [e.key for e in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SuiteError(f"{suite.path}: the same evaluation is declared twice: "
                         + ", ".join(f"{e.kind}:{e.name} {e.params}" for e in out if e.key in dup))
    return out
