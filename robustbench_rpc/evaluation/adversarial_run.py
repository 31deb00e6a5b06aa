"""The harness's side of adversarial sets: which evaluations keep their images, the disk they will take,
the given sets checked before compute, a unit's images written before its rows, the manifest's listing,
and the transfer evaluations run once every model's sets are saved.

Kept out of ``harness.py`` so the harness only calls in at five points (plan, preflight, resume, write,
manifest); the files themselves are :mod:`robustbench_rpc.store.adversarial`.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..evalspec import EvalSpec, describe_eval
from ..store.adversarial import (ADVERSARIAL_DIR, GALLERY_KEY, IMAGES_KEY, AdversarialSetError, evaluation_label,
                                 listing, set_bytes, unit_files, unit_saved, write_gallery, write_unit_images)
from ..store.errors import StoreWriteError
from .transfer import register_sources, transfer_evals
from .external import check_given, read_given, register_checked
from .. import dist


class KeepImages:
    """An attack that remembers the images it returned (``attack_outcomes`` scores exactly these), every other
    attribute read through to the attack it wraps (eps, norm, space, clip, name, batch size...)."""

    def __init__(self, attack: Any):
        self._attack = attack
        self.images: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_attack"], name)

    def __call__(self, model, x, y):
        out = self._attack(model, x, y)
        if isinstance(out, torch.Tensor):
            self.images = out.detach().to("cpu", torch.float32)
        return out


# ------------------------------------------------------------------------------------------------ planning
def plan_adversarial(suite, evals: list[EvalSpec], models: list, save_all: bool) -> list[EvalSpec]:
    """``--save-adversarial`` marks every attack evaluation; ``kind = "transfer"`` adds one evaluation per
    (source model, saved attack, float or 8-bit) and makes the attacks it reads keep their images."""
    if save_all:
        evals = [replace(e, save_adversarial=True) if e.kind == "attack" else e for e in evals]
    return transfer_evals(suite, evals, models)


def saved_evals(plan: Any) -> list[EvalSpec]:
    return [e for e in plan.evals if e.kind == "attack" and e.save_adversarial]


# ----------------------------------------------------------------------------------------------- preflight
def preflight(plan: Any, log) -> None:
    """Before any compute: print the disk the saved sets will take and refuse when the folder lacks it;
    read and check every external set against its clean images (one line per fault)."""
    keep = saved_evals(plan)
    if keep:
        need = 0
        for e in keep:
            ds = plan.dataset_for(e)
            if len(ds):
                shape = tuple(ds[0][0].shape)
                need += len(plan.models) * set_bytes(len(ds), shape, units=-(-len(ds) // plan.batch_size))
        folder = plan.out / ADVERSARIAL_DIR
        have = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) if folder.is_dir() else 0
        probe = next((p for p in (folder, plan.out, *plan.out.resolve().parents) if p.exists()), Path("."))
        free = shutil.disk_usage(probe).free
        log(f"adversarial images: {len(keep)} attack evaluation(s) x {len(plan.models)} model(s) take "
            f"{_size(need)} under {folder} ({_size(have)} there already; {_size(free)} free)")
        if need - have > free:
            raise AdversarialSetError(f"--out {plan.out}: the adversarial images need {_size(need - have)} more and "
                                      f"{probe} has {_size(free)} free; free space, choose another --out, or save "
                                      "fewer evaluations (save_adversarial per evaluation in the suite)")
    for e in plan.evals:
        if e.kind == "external":
            where = f"external evaluation {describe_eval(e)}"
            file = (e.resolved or {}).get("file")
            given = read_given(file)
            if given.sha256 != e.params["adversarial_sha256"]:
                raise AdversarialSetError(f"{where}: {file} changed since the run was planned (sha256 "
                                          f"{given.sha256[:12]}, planned {e.params['adversarial_sha256'][:12]})")
            ids, images = check_given(given, plan.dataset_for(e), e.params["eps"], e.params["norm"], f"--adversarial "
                                      f"{file}", quantization=e.params.get("quantization_tolerance", 0.0))
            register_checked(e.key, ids, images)
            log(f"external set {file}: {len(ids)} images checked against their clean images ({e.params['norm']} "
                f"eps {e.params['eps']:.6g}, [0, 1]): no fault")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


# ------------------------------------------------------------------------------------------ resume and write
def done_units(store, out: Path, model_key: str, e: EvalSpec) -> set[int]:
    """The units a resume skips: stored, and (evaluations that keep images) with their file whole."""
    done = store.done_units(model_key, e.key)
    if not e.save_adversarial or not done:
        return done
    counts = {int(u): int(n) for mk, ek, u, n in store.units()[["model_key", "eval_key", "unit", "n"]].itertuples(
        index=False) if mk == model_key and ek == e.key}
    return {u for u in done if unit_saved(out, model_key, e.key, u, counts.get(u))}


def write_images(out: Path, model_key: str, eval_key: str, result: tuple | None) -> None:
    """Write a unit's images (popped from its rows; unit 0: also the gallery's display copies) before the rows
    are stored; a failure is one line."""
    if result is None or not isinstance(result[1], dict):
        return
    unit, rows = result
    images, gallery = rows.pop(IMAGES_KEY, None), rows.pop(GALLERY_KEY, None)
    try:
        if gallery is not None:
            write_gallery(out, model_key, eval_key, rows["sample_id"], gallery)
        if images is not None:
            write_unit_images(out, model_key, eval_key, unit, rows["sample_id"], images)
    except OSError as err:
        raise StoreWriteError(f"cannot write the adversarial or gallery images of unit {unit} under {out} "
                              f"({err.strerror or err}); finished units are kept, rerun to resume") from None


def manifest_listing(store, out: Path) -> list[dict[str, Any]]:
    """Every saved unit file of the stored units, with its sha256 (``manifest.json``'s ``adversarial``)."""
    if not (out / ADVERSARIAL_DIR).is_dir():
        return []
    done: dict[tuple[str, str], dict[int, int]] = {}
    units = store.units()
    saved: dict[tuple[str, str], bool] = {}
    for mk, ek, u, n in units[["model_key", "eval_key", "unit", "n"]].itertuples(index=False) if len(units) else ():
        if saved.setdefault((mk, ek), bool(unit_files(out, mk, ek))):
            done.setdefault((mk, ek), {})[int(u)] = int(n)
    labels = {}
    for mk, ek in done:
        minfo, einfo = store.model_info(mk) or {}, store.evaluation_info(ek) or {}
        labels[(mk, ek)] = (str(minfo.get("name", mk)), evaluation_label(einfo))
    return listing(out, done, labels)


# ------------------------------------------------------------------------------------------------ transfer
def run_transfer(runner: Any) -> None:
    """The transfer evaluations, after every model's own: each target model rebuilt once and scored on the
    sets its sources saved (nothing is attacked again)."""
    p = runner.plan
    deferred = [e for e in p.evals if e.kind == "transfer"]
    if not deferred:
        return
    register_sources(runner.store, p.out, deferred)
    for m in p.models:
        model = dist.run_everywhere(lambda: runner.build_model(m), f"loading model {m.spec}")
        key, _ = runner.model_info(m, model)
        eval_model = runner.prepare(model, key, m)
        runner.log(f"[{m.display}] as the target of {len(deferred)} transfer evaluation(s)")
        for e in deferred:
            runner.run_eval(eval_model, key, m, e)
