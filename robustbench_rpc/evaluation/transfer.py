"""Transfer evaluations: every model of a run scored on the adversarial images saved from every model.

A ``kind = "transfer"`` suite evaluation (keys: ``quantize``, ``sources``) expands, once the run's models
are known, into one evaluation per (source model, attack evaluation of the suite, float or 8-bit): the
target is whichever model the harness evaluates, so the stored rows form the source x target matrix the
transfer literature reports (TransferAttack, ARES); the diagonal is the white-box attack itself. Nothing is
attacked again: each unit reads the source's saved unit file (same ids, same order). ``quantize = true``
adds the same sets rounded to 8 bits, as a PNG file would store them, so a reader sees how much of an
attack survives saving (the rounded images are checked against [0, 1] only: rounding may step outside
the budget by half an 8-bit step where the clean images are not 8-bit themselves).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evalspec import EvalSpec, SuiteError, attack_label
from ..store.adversarial import AdversarialSetError, quantize_8bit, read_set, unit_file
from .external import register_given
from .. import metrics


def transfer_evals(suite, evals: list[EvalSpec], models: list) -> list[EvalSpec]:
    """``evals`` with the transfer evaluations the suite declares appended (and their sources' attacks
    marked to keep their images)."""
    from dataclasses import replace

    declared = [(i, ev) for i, ev in enumerate(suite.evaluations) if ev.get("kind") == "transfer"]
    if not declared:
        return evals
    attacks = [e for e in evals if e.kind == "attack"]
    if not attacks:
        raise SuiteError(f"{suite.path}: a transfer evaluation needs attack evaluations in the suite (their "
                         "saved images are what every model is scored on)")
    out = [replace(e, save_adversarial=True) if e.kind == "attack" else e for e in evals]
    names = {m.display: m for m in models}
    for i, ev in declared:
        where = f"{suite.path} [[evaluation]] #{i + 1}"
        quantize = ev.get("quantize", False)
        if not isinstance(quantize, bool):
            raise SuiteError(f"{where}: quantize must be true or false, got {quantize!r}")
        sources = ev.get("sources")
        if sources is None:
            chosen = list(models)
        else:
            if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                raise SuiteError(f"{where}: sources must be a list of model names, got {sources!r}")
            chosen = []
            for s in sources:
                hit = names.get(s) or next((m for m in models if s in (m.spec, m.name)), None)
                if hit is None:
                    raise SuiteError(f"{where}: source {s!r} is not one of the run's models "
                                     f"({', '.join(names)})")
                chosen.append(hit)
        for a in attacks:
            for m in chosen:
                for q in ([False, True] if quantize else [False]):
                    label = attack_label(a.name, {k: v for k, v in a.params.items() if k in ("eps", "norm")})
                    out.append(EvalSpec("transfer", f"transfer from {m.display}: {label}{' (8-bit)' if q else ''}",
                                        a.dataset, {"source_model": m.display, "source_eval": a.key,
                                                    "attack": a.name, "norm": a.params.get("norm", "Linf"),
                                                    "eps": a.params.get("eps"), "quantize": q}))
    keys = [e.key for e in out]
    if len(set(keys)) != len(keys):
        raise SuiteError(f"{suite.path}: the transfer evaluations are declared twice")
    return out


def register_sources(store, out: Path, evals: list[EvalSpec]) -> None:
    """Serve each transfer evaluation's units from its source model's saved unit files."""
    models = store.models()
    keys = dict(zip(models.get("name", []), models.get("model_key", [])))
    for e in evals:
        src = e.params["source_model"]
        if src not in keys:
            raise AdversarialSetError(f"transfer source model {src} is not in {out}/results.sqlite")
        register_given(e.key, _lookup(out, str(keys[src]), e.params["source_eval"], bool(e.params["quantize"]), src))


def _lookup(out: Path, model_key: str, eval_key: str, quantize: bool, source: str):
    def lookup(unit: int, ids: list[int]):
        path = unit_file(out, model_key, eval_key, unit)
        if not path.is_file():
            raise AdversarialSetError(f"no saved adversarial images of {source} for unit {unit} ({path}): the "
                                      "source evaluation did not keep them")
        sids, images, _ = read_set(path)
        if sids != list(ids):
            raise AdversarialSetError(f"{path} holds sample ids {sids[:5]}..., the unit evaluates {list(ids)[:5]}...")
        return quantize_8bit(images) if quantize else images
    return lookup


def transfer_cells(store) -> list[dict[str, Any]]:
    """One record per (target model, transfer evaluation): source, target, attack, quantized, n, accuracy
    and its Wilson interval, white-box (source is target)."""
    evals = store.evaluations()
    if evals.empty or "kind" not in evals:
        return []
    names = dict(zip(store.models().get("model_key", []), store.models().get("name", [])))
    rows = []
    for ek in evals.loc[evals["kind"] == "transfer", "eval_key"]:
        info = store.evaluation_info(ek)
        p = info["params"]
        s = store.samples(eval_key=ek)
        for mk, part in s.groupby("model_key"):
            if len(part) != info.get("n_samples"):
                continue
            acc, lo, hi = metrics.accuracy_ci(part["correct1"].to_numpy().astype(bool))
            rows.append({"source": p["source_model"], "target": names.get(mk, mk), "attack": p["attack"],
                         "norm": p["norm"], "eps": p["eps"], "quantized": bool(p["quantize"]),
                         "source_eval": p["source_eval"], "n": len(part), "accuracy": acc, "lo": lo, "hi": hi,
                         "white_box": p["source_model"] == names.get(mk, mk)})
    return rows
