"""``export-adversarial``: a run's saved adversarial images out of the run folder, one evaluation's or the
per-sample worst case over a budget's attacks, as RobustBench's ``.pt``, our ``.safetensors`` or PNGs.

The worst case follows the report's worst-case row (robust only if robust to every attack at the budget):
per sample, the image of the first saved attack (in the suite's order) under which the sample is not
robustly correct, else the first attack's image. Scored again (``evaluate-external``), the set gives
the stored worst-case robust accuracy, sample by sample.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..evalspec import THREAT_DEFAULTS, eps_label, parse_eps
from .adversarial import AdversarialSetError, evaluation_label, export_set, load_saved, unit_files
from .results import ResultsStore
from ..attacks.budget import canonical_norm


def _model_key(store: ResultsStore, ident: str, where: Path) -> tuple[str, str]:
    models = store.models()
    for col in ("model_key", "name", "spec", "arch"):
        if col in models:
            hit = models[models[col] == ident]
            if len(hit) == 1:
                return str(hit.iloc[0]["model_key"]), str(hit.iloc[0]["name"])
    names = ", ".join(str(n) for n in models.get("name", [])) or "none"
    raise AdversarialSetError(f"--model {ident}: not a model of {where} (models: {names})")


def _complete(store: ResultsStore, run_dir: Path, model_key: str, eval_key: str) -> bool:
    info = store.evaluation_info(eval_key) or {}
    units = store.units()
    mine = units[(units["model_key"] == model_key) & (units["eval_key"] == eval_key)] if len(units) else units
    files = unit_files(run_dir, model_key, eval_key)
    return (len(mine) > 0 and int(mine["n"].sum()) == int(info.get("n_samples", -1))
            and all(int(u) in files for u in mine["unit"]))


def export_from_run(run_dir: Path, model: str, *, evaluation: str | None = None, worst_case: str | None = None,
                    norm: str = "Linf", dest: Path) -> tuple[Path, int, str]:
    """Write one saved set (``evaluation``: its label or key) or a budget's worst case; returns (path, n,
    what was written)."""
    if (evaluation is None) == (worst_case is None):
        raise AdversarialSetError("export-adversarial: pass --evaluation LABEL or --worst-case EPS (one of them)")
    if not (run_dir / "results.sqlite").is_file():
        raise AdversarialSetError(f"{run_dir}: no results.sqlite (pass a run folder)")
    with ResultsStore(run_dir / "results.sqlite", readonly=True) as store:
        mk, name = _model_key(store, model, run_dir)
        saved = [ek for ek in _planned_order(store) if unit_files(run_dir, mk, ek)]
        labels = {ek: evaluation_label(store.evaluation_info(ek) or {}) for ek in saved}
        if evaluation is not None:
            hit = [ek for ek in saved if evaluation in (ek, labels[ek])]
            if not hit:
                raise AdversarialSetError(f"--evaluation {evaluation!r}: no saved adversarial images of {name} under "
                                          f"that label or key; saved: {'; '.join(labels.values()) or 'none'}")
            ek = hit[0]
            if not _complete(store, run_dir, mk, ek):
                raise AdversarialSetError(f"{labels[ek]} of {name} is not finished (rerun the run to complete it)")
            ids, images = load_saved(run_dir, mk, ek)
            info = store.evaluation_info(ek)
            meta = {"model": name, "model_key": mk, "evaluation": labels[ek], "eval_key": ek,
                    "dataset": info["dataset"], "norm": info["params"].get("norm", "Linf"),
                    "eps": info["params"].get("eps"), "run": str(run_dir)}
            return export_set(images, ids, dest, meta), len(ids), labels[ek]
        ids, images, meta = worst_case_set(store, run_dir, mk, saved, worst_case, norm)
        meta.update(model=name, model_key=mk, run=str(run_dir))
        return export_set(images, ids, dest, meta), len(ids), meta["evaluation"]


def _planned_order(store: ResultsStore) -> list[str]:
    planned = list((store.get_meta("planned_evaluations") or {}).keys())
    stored = list(store.evaluations().get("eval_key", []))
    return planned + [k for k in stored if k not in planned]


def worst_case_set(store: ResultsStore, run_dir: Path, model_key: str, saved: list[str], eps_text: str,
                   norm: str) -> tuple[list[int], torch.Tensor, dict[str, Any]]:
    """Per sample, the first saved attack's image (suite order) that breaks robust correctness."""
    eps = parse_eps(eps_text, "--worst-case")
    try:
        norm = canonical_norm(norm)
    except ValueError as err:
        raise AdversarialSetError(f"--norm: {err}") from None
    chosen = []
    for ek in saved:
        info = store.evaluation_info(ek) or {}
        p = info.get("params") or {}
        if (info.get("kind") == "attack" and p.get("norm", "Linf") == norm and p.get("eps") is not None
                and math.isclose(float(p["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12)
                and all(p.get(k, v) == v for k, v in THREAT_DEFAULTS.items())
                and _complete(store, run_dir, model_key, ek)):
            chosen.append(ek)
    if not chosen:
        raise AdversarialSetError(f"--worst-case {eps_text}: no finished, saved {norm} attack at eps={eps_label(eps)} "
                                  "(pixel space, clipped, true labels, robust accuracy) for this model")
    ids, images = load_saved(run_dir, model_key, chosen[0])
    images = images.clone()
    taken = torch.zeros(len(ids), dtype=torch.bool)
    position = {sid: k for k, sid in enumerate(ids)}
    for ek in chosen:
        s = store.samples(model_key, ek)
        fooled = set(s.loc[(s["correct1"] == 0) & (s["clean_correct1"].fillna(0) == 1), "sample_id"].astype(int))
        if not fooled:
            continue
        eids, eimages = load_saved(run_dir, model_key, ek)
        for k, sid in enumerate(eids):
            j = position.get(sid)
            if j is not None and sid in fooled and not taken[j]:
                images[j], taken[j] = eimages[k], True
    labels = [evaluation_label(store.evaluation_info(ek) or {}) for ek in chosen]
    return ids, images, {"evaluation": f"worst case {norm} eps={eps_label(eps)} over {len(chosen)} attack(s)",
                         "attacks": labels, "norm": norm, "eps": eps,
                         "dataset": (store.evaluation_info(chosen[0]) or {}).get("dataset")}
