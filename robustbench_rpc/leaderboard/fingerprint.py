"""Protocol fingerprints: what must agree for two stored numbers to share a leaderboard column.

A fingerprint is a flat dict of named fields read from a run's store (evaluation info, model info, settings,
manifest) and nothing else:

- ``dataset`` and ``kind`` (clean / attack / external / corruption / shift) and the evaluation's ``name``;
  an external evaluation (a given adversarial set) states its threat model like an attack and its set by
  ``attack.adversarial_sha256``;
- ``samples.selection`` (how the images were chosen: all, stratified N, or a list by its sha256; ``first-N``
  covering the whole set counts as all) and ``samples.ids`` (sha256 of the evaluated sample ids);
- the threat model of attacks: ``threat.norm``, ``threat.eps``, ``threat.space``, ``threat.clip``,
  ``threat.labels``, ``threat.accuracy`` (absent = pixel, True, true, robust, as the store documents);
- ``attack.<param>``: every parameter the attack ran with (the store's ``resolved``), ``attack.code``: the
  library versions that implement it (robustbench-rpc, pyautoattack, torchattacks from the manifest);
- corruptions: ``corruption.name``, ``corruption.severity``, ``corruption.source``, ``corruption.table``;
- ``contract.*``: the model's evaluation contract as recorded (normalization, and input size / crop /
  interpolation where the store records them), ``precision``, ``seed`` where randomness enters.

Fields a store does not record are absent, never guessed; a published RobustBench row states only the
fields it knows, and joins a column when every one of them agrees (:func:`agrees`).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from ..evalspec import THREAT_DEFAULTS, eps_label, is_adaptive, threat_of
from ..store.manifest import sample_ids_digest
from ..store.rows import stable_key

AUTOATTACK_STANDARD = {"version": "standard"}
#: AutoAttack parameters at which "standard" means the reference's standard run
_AA_STANDARD_DEFAULTS = {"n_iter": 100, "n_queries": 5000, "n_restarts": 1}
CODE_PACKAGES = ("robustbench-rpc", "pyautoattack", "torchattacks", "imagecorruptions-imaug", "torch")


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 12)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def selection_of(subset: Mapping[str, Any] | None, dataset_size: int | None, n: int) -> str:
    """How the images were chosen, as one comparable string."""
    subset = dict(subset or {})
    method = subset.get("method", "all")
    if method == "file":
        name = str(subset.get("file", ""))
        if name.startswith("first-") and name[6:].isdigit() and dataset_size and int(name[6:]) >= dataset_size:
            return "all"
        return f"list sha256:{str(subset.get('sha256', ''))[:16]}"
    if method == "stratified":
        return "all" if dataset_size and int(subset.get("limit") or 0) >= dataset_size else \
            f"stratified {subset.get('limit')}"
    return str(method) if method != "all" else "all"


def ids_digest(ids: Iterable[int]) -> str:
    return str(sample_ids_digest(ids)["sha256"])[:16]


def evaluation_fingerprint(info: Mapping[str, Any], ids_key: str | None, model_info: Mapping[str, Any],
                           code: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of one stored evaluation of one model (see the module docstring). ``ids_key``: the
    :func:`ids_digest` of the evaluation's planned sample ids (None: unrecorded)."""
    kind = str(info.get("kind"))
    params = dict(info.get("params") or {})
    n = int(info.get("n_samples") or 0)
    fp: dict[str, Any] = {"dataset": info.get("dataset"), "kind": kind, "name": info.get("name"),
                          "samples.selection": selection_of(info.get("subset"), info.get("dataset_size"), n),
                          "samples.n": n}
    if ids_key:
        fp["samples.ids"] = ids_key
    for key in ("mean", "std", "input_size", "interpolation", "crop_pct"):
        if model_info.get(key) is not None:
            fp[f"contract.{key}"] = _plain(model_info[key])
    prep = info.get("preprocessing")
    if isinstance(prep, Mapping):
        fp.update({f"contract.preprocessing.{k}": _plain(v) for k, v in prep.items()})
    if model_info.get("precision"):
        fp["precision"] = model_info["precision"]
    if kind in ("attack", "external"):
        # an external evaluation (a given adversarial set) is identified by its file's sha256, not its path
        resolved = {k: v for k, v in dict(info.get("resolved") or {}).items() if not (kind == "external"
                                                                                      and k == "file")}
        for key, value in zip(THREAT_DEFAULTS, threat_of({**resolved, **params})):
            fp[f"threat.{key}"] = value
        fp["threat.norm"] = params.get("norm", resolved.get("norm"))
        fp["threat.eps"] = _plain(params.get("eps", resolved.get("eps")))
        for key, value in sorted({**params, **resolved}.items()):
            if key not in ("seed", "eps", "norm", *THREAT_DEFAULTS):
                fp[f"attack.{key}"] = _plain(value)
        fp["attack.code"] = ", ".join(f"{k} {code[k]}" for k in CODE_PACKAGES if code.get(k))
        fp["seed"] = info.get("seed")
    elif kind == "corruption":
        fp["corruption.name"] = params.get("corruption", info.get("name"))
        fp["corruption.severity"] = params.get("severity")
        fp["corruption.source"] = params.get("source")
        fp["corruption.table"] = params.get("severity_table")
        if params.get("source") == "on-the-fly":
            fp["seed"] = info.get("seed")
            fp["attack.code"] = ", ".join(f"{k} {code[k]}" for k in CODE_PACKAGES[3:4] if code.get(k))
    elif kind == "shift":
        fp["shift"] = info.get("dataset")
    return fp


def is_reduced_autoattack(fp: Mapping[str, Any]) -> bool:
    """An AutoAttack column that is not the reference's standard run (version, components or budgets)."""
    if fp.get("kind") != "attack" or fp.get("name") != "autoattack":
        return False
    if fp.get("attack.version", "standard") != "standard":
        return True
    return any(fp.get(f"attack.{k}", v) not in (v, None) for k, v in _AA_STANDARD_DEFAULTS.items())


def differences(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = 6) -> list[str]:
    """Fields in which two fingerprints differ, as 'field (a vs b)' lines (absent fields show as 'unrecorded')."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "unrecorded"), b.get(key, "unrecorded")
        if va != vb:
            out.append(f"{key} ({_short(va)} vs {_short(vb)})")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def agrees(stated: Mapping[str, Any], full: Mapping[str, Any]) -> bool:
    """A partial fingerprint (a published row's) agrees with a full one when every field it states is equal."""
    return all(full.get(k) == v for k, v in stated.items())


def _short(v: Any, n: int = 40) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= n else text[: n - 3] + "..."


def model_identity(info: Mapping[str, Any]) -> str:
    """The row a model's results belong to: architecture, checkpoint hash, kwargs, attention, sweep, and the
    init seed of an un-checkpointed model (its weights are a function of it). Precision and contract are
    protocol (fingerprint), not identity."""
    keep = {k: info.get(k) for k in ("arch", "checkpoint_sha256", "kwargs", "attention", "sweep")}
    if not info.get("checkpoint_sha256"):
        keep["init_seed"] = info.get("init_seed")
        keep["checkpoint"] = info.get("checkpoint")  # e.g. timm's 'pretrained'
    return stable_key(keep)


def is_adaptive_column(fp: Mapping[str, Any]) -> bool:
    """Whether a column's attack is adaptive, by the evaluation spec's one rule (``evalspec.is_adaptive``):
    the fingerprint keeps every attack parameter, ``adaptive`` included, under ``attack.``."""
    if fp.get("kind") != "attack":
        return False
    params = {k[len("attack."):]: v for k, v in fp.items() if k.startswith("attack.")}
    return is_adaptive(str(fp.get("name")), params)


def column_label(fp: Mapping[str, Any]) -> str:
    """What a column measures, in words (the fingerprint says how)."""
    kind = fp.get("kind")
    if kind == "clean":
        return f"clean ({fp.get('dataset')})"
    if kind == "attack":
        name = str(fp.get("name"))
        if name == "autoattack":
            name = "AutoAttack" + (" (reduced)" if is_reduced_autoattack(fp) else " standard")
        eps = fp.get("threat.eps")
        norm = fp.get("threat.norm") or "Linf"
        eps_text = eps_label(eps)
        extra = "" if fp.get("threat.space") == "pixel" else " (norm.)"
        return f"{name} {norm} {eps_text}{extra}"
    if kind == "external":
        sha = str(fp.get("attack.adversarial_sha256") or "?")[:12]
        return f"external set {fp.get('threat.norm') or 'Linf'} {eps_label(fp.get('threat.eps'))} sha256:{sha}"
    if kind == "best known":
        extra = "" if fp.get("threat.space", "pixel") == "pixel" else " (norm.)"
        return f"best known {fp.get('threat.norm') or 'Linf'} {eps_label(fp.get('threat.eps'))}{extra}"
    if kind == "shift":
        return f"shift {fp.get('dataset')}"
    return str(fp.get("name"))
