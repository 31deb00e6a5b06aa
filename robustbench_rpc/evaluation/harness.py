"""Running a planned run: models x evaluations x units -> the results store, resumable and rank-sharded.

Every evaluation is cut into fixed units (consecutive ``batch_size`` positions of the dataset), whose
composition does not depend on the number of ranks. Each unit is seeded from (seed, evaluation, unit), so
a unit gives the same rows on any rank, in any order, after any resume. Rank 0 decides what is left to do,
ranks compute their share round by round, rank 0 writes each finished unit in one transaction. What to run
was decided and validated by :mod:`robustbench_rpc.evaluation.plan`; how one unit becomes rows is :mod:`units`.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import attacks, dist
from ..evalspec import EvalSpec, SuiteError, attack_label, describe_eval
from ..models import PRETRAINED, load_model, sha256_of
from .plan import ModelSpec, Plan, RunConfig, RunFolderError, default_device
from ..store.results import ResultsStore
from ..store.errors import FolderBusyError, StoreWriteError, write_error
from ..store.lock import lock_folder
from ..store.rows import stable_key
from .preflight import check_input_gradients, check_output
from .compute_unit import STOCHASTIC_EVAL_REPEATS, unit_rows
from .stored_curves import adaptive_pairs, attack_curves, stored_indicators
from ..attention import patch_attention, summarize_attention
from ..attacks import adaptive as adaptive_checks, checks as attack_checks, indicators, model_dynamics
from .adversarial_run import manifest_listing, preflight, run_transfer, write_images
from ..attacks.evaluate import BudgetError, NonFiniteLogitsError
from ..data.pool import RunLoader
from ..diagnostics import diagnose_inputs
from ..attacks.attack_record import QUERIES_KEY
from ..attacks.checks import check_chance_level
from ..store.manifest import build_manifest, write_manifest

STORE_NAME = "results.sqlite"
#: what a model's record says about where its checkpoint lay: information, not identity (the key has its sha256)
LOCATION_FIELDS = ("checkpoint", "spec", "name")
#: memory for batches shared between a run's models (``data.pool.BatchCache``); only runs of several models
BATCH_CACHE_BYTES = 1 << 30


class UnitFault(RuntimeError):
    """A unit that cannot be computed (an attack that breaks its threat model or returns NaN images):
    one line naming the attack, the unit, the evaluation and the model; finished units are kept."""


class Runner:
    """Runs a :class:`Plan` into its output folder: locks the folder and opens the store (refusing a resume
    that would mix two protocols), builds each model, computes the units not yet stored (sharded over
    torchrun ranks), then the trust checks, the manifest and the exports. Everything it writes can be
    rebuilt from the store; a kill at any moment loses at most the units in flight."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = print):
        self.plan = plan
        self.log = log if dist.rank() == 0 else (lambda *_: None)
        self.store: ResultsStore | None = None
        self._lock = None
        self._loader = None
        self.num_classes: dict[str, int] = {}  # model key -> classes (chance level)

    # -- set-up -------------------------------------------------------------------------------------------
    def open_store(self) -> ResultsStore:
        """Rank 0: lock --out for the run's duration (a second run into it is refused), open the store and
        refuse settings or evaluations that would mix two protocols in one folder."""
        import sqlite3

        p = self.plan
        if p.out.is_dir() and not (p.out / STORE_NAME).exists() and any(
                f.name != ".lock" for f in p.out.iterdir()):
            raise RunFolderError(f"--out {p.out} is a folder with other files and no {STORE_NAME}: not a run folder; "
                                 "a run would overwrite its report.md, index.html and results/ (choose an empty or "
                                 "new folder, or a run folder to resume)")
        try:
            p.out.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(p.out)
            store = ResultsStore(p.out / STORE_NAME)
        except FolderBusyError as err:
            raise RunFolderError(f"--out {err}") from None
        except (OSError, sqlite3.Error, StoreWriteError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise RunFolderError(f"--out {p.out}: cannot write the results store there ({reason})") from None
        self.store = store
        partial = store.partial_units()  # sample rows deleted or added since they were written: recomputed, said
        if partial:
            self.log(f"note: {p.out / STORE_NAME} holds {len(partial)} unit(s) whose sample rows disagree with their "
                     f"units row ({partial[0]}): they are recomputed")
        old = store.get_meta("settings")
        if old is not None and "amp" not in old:  # written before the precision was a setting
            stored = (store.get_meta("manifest") or {}).get("extra", {}).get("precision") or next(
                iter(store.models().get("precision", [])), None)
            old = {**old, "amp": stored or p.amp}
        if old is not None and "subset" not in old:  # written when --limit took the first N files
            old = {**old, "subset": {"method": "first-n (before 0.2)", "limit": old.get("limit")}
                   if old.get("limit") is not None else {"method": "all"}}
        now = p.settings()
        if old is not None:  # written before these were settings: nothing to compare them with
            old = {**{k: now[k] for k in ("eot_samples", "data") if k not in old}, **old}
        if old is not None and _comparable(old, now) != _comparable(now, old):
            raise SuiteError(f"{p.out} already holds a run with other settings " + settings_diff(old, now)
                             + "; rerun with the same settings to resume, or choose another --out")
        planned = {e.key: describe_eval(e) for e in p.evals}
        before = store.get_meta("planned_evaluations")
        if before is None:  # a store from before this record: what it registered so far
            evals = store.evaluations()
            before = {k: f"{kind} {name}" for k, kind, name in
                      zip(evals.get("eval_key", []), evals.get("kind", []), evals.get("name", []))}
        gone = [label for k, label in before.items() if k not in planned]
        if gone:
            raise SuiteError(f"{p.out} already holds a run whose evaluations differ from {p.suite.path}: "
                             f"{len(gone)} stored evaluation(s) are not planned now ({'; '.join(gone[:5])}"
                             f"{'; ...' if len(gone) > 5 else ''}); rerun the suite as it was to resume, or choose "
                             "another --out")
        added = [label for k, label in planned.items() if k not in before]
        if added and before:
            self.log(f"{p.out}: adding {len(added)} evaluation(s) to the stored run: {'; '.join(added)}")
        store.set_meta("settings", now)
        store.set_meta("planned_evaluations", {**before, **planned})
        store.set_meta("suite", {**p.suite.to_dict(), "reference_model": next(m.name for m in p.models if m.reference)})
        return store

    def close(self) -> None:
        """Close the store and release --out's lock (also after an error)."""
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def model_info(self, m: ModelSpec, model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
        try:
            attention = summarize_attention(model)
        except TypeError:  # not a ViT with blocks (e.g. a timm CNN baseline)
            attention = {"blocks": 0, "groups": []}
        sha = sha256_of(m.weights_file) if m.weights_file else None
        info = {
            "name": m.display, "spec": m.spec, "arch": m.name, "checkpoint": m.checkpoint, "checkpoint_sha256": sha,
            "attention": attention, "kwargs": m.kwargs, "precision": self.plan.amp,
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_classes": int(model.data_config.get("num_classes") or 0), "reference": m.reference,
            "mean": [float(v) for v in model.data_config.get("mean", ())],
            "std": [float(v) for v in model.data_config.get("std", ())],
            "init_seed": None if m.checkpoint and not m.reinit else self.plan.seed,
            "settings": {**(getattr(model, "model_settings", None) or {}), **m.settings},
            "contract": model.data_config.get("contract_source"),
            "input_size": [int(v) for v in model.data_config.get("input_size", ())],
            "interpolation": model.data_config.get("interpolation"), "crop_pct": model.data_config.get("crop_pct"),
            "attention_reinit": m.reinit or None,
            "dynamics": model_dynamics_info(model),
        }
        if m.sweep:
            info["sweep"] = m.sweep
        key = stable_key({k: info[k] for k in ("arch", "checkpoint_sha256", "attention", "kwargs", "precision",
                                               "init_seed", "sweep") if k in info})
        return key, info

    def build_model(self, m: ModelSpec) -> torch.nn.Module:
        return build_model(self.plan, m)

    def located_as_stored(self, key: str, info: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint is identified by its content (the key holds its sha256), its path is information only,
        as ``verify`` treats it: a resume after the file (or the whole clone) moved keeps the location the store
        recorded, and says where the same bytes were found now."""
        old = self.store.model_info(key) if self.store is not None else None
        moved = [k for k in LOCATION_FIELDS if old is not None and k in old and old[k] != info.get(k)]
        if not moved:
            return info
        self.log(f"[{old.get('name')}] checkpoint {info.get('checkpoint')}: the same bytes (sha256 "
                 f"{str(info.get('checkpoint_sha256'))[:12]}...) as {old.get('checkpoint')}, recorded when this run "
                 "started; resuming (the store keeps the recorded location)")
        return {**info, **{k: old[k] for k in moved}}

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> Path:
        p = self.plan

        preflight(p, self.log)  # the disk saved images take; given sets checked against their clean images
        self.store = dist.run_everywhere(lambda: self.open_store() if dist.rank() == 0 else None, "opening the store")
        t_start = time.time()
        for m in p.models:
            model = dist.run_everywhere(lambda: self.build_model(m), f"loading model {m.spec}")
            key, info = self.model_info(m, model)
            self.num_classes[key] = info["num_classes"]
            eval_model = self.prepare(model, key, m)
            if self.store is not None:
                self.store.register_model(key, self.located_as_stored(key, info))
            self.log(f"[{m.display}] {info['num_params'] / 1e6:.2f}M params, attention "
                     + "; ".join(f"{g['variant']}@{g['layers']}" for g in info["attention"]["groups"]))
            for e in p.evals:
                if e.kind == "diagnostics":  # the model's own forward (not the EOT wrapper), rank 0
                    self.run_diagnostics(model, key, m, e)
                    continue
                if e.kind == "transfer":  # after every model's own evaluations: it reads their saved images
                    continue
                self.run_eval(eval_model, key, m, e)
            if dist.rank() == 0 and (p.clean_key or any(e.kind == "attack" for e in p.evals)):
                self.trust_checks(eval_model, key)
        run_transfer(self)
        if dist.rank() == 0:
            self.write_manifest()
            self.store.export(p.out / "results", formats=("csv", "parquet"))
            self.log(f"evaluation finished in {time.time() - t_start:.0f}s; store: {p.out / STORE_NAME}")
        return p.out

    def prepare(self, model: torch.nn.Module, key: str, m: ModelSpec | None = None) -> torch.nn.Module:
        """Stochastic models are detected here and evaluated with EOT; compile if asked. NaN/inf logits
        end the run here, named, rather than being mistaken for randomness."""
        p = self.plan

        ds = p.base_dataset(p.dataset)
        x = torch.stack([ds[i][0] for i in range(min(8, len(ds)))]).to(p.device)
        y = torch.tensor([int(ds[i][1]) for i in range(len(x))], device=p.device)
        who = f"model {m.display if m else key}"
        check_output(model, x, self.num_classes.get(key, 0), who)
        if any(e.kind == "attack" and attacks.is_gradient_based(e.name) for e in p.evals):
            check_input_gradients(model, x, y, who)
        try:
            stochastic = attacks.detect_stochastic(model, x)
        except NonFiniteLogitsError as err:
            raise NonFiniteLogitsError(err.count, err.total, f"of {p.dataset} {err.where} (first images, before "
                                       "any evaluation)", f"model {m.display if m else key}") from None
        if self.store is not None:
            self.store.write_check(key, None, "stochastic_model", "warn" if stochastic else "pass",
                                   f"logits differ between identical passes: evaluated with EOT over "
                                   f"{p.cfg.eot_samples} samples, each adversarial image classified "
                                   f"{STOCHASTIC_EVAL_REPEATS} times (worst case kept)" if stochastic
                                   else "deterministic forward pass",
                                   {"eot_samples": p.cfg.eot_samples if stochastic else 0})
        if stochastic:
            self.log(f"  model is stochastic: evaluating with EOT ({p.cfg.eot_samples} samples)")
            model = attacks.EOTModel(model, samples=p.cfg.eot_samples)
        if p.cfg.compile:
            model = torch.compile(model)
        return model

    def loader(self) -> "RunLoader":
        """The run's data workers: started once and shared by every evaluation (see data/pool.py)."""
        if self._loader is None:
            p = self.plan
            self._loader = RunLoader({e.key: p.dataset_for(e) for e in p.evals}, p.workers,
                                     pin_memory=p.device.startswith("cuda"),
                                     cache_bytes=BATCH_CACHE_BYTES if len(p.models) > 1 else 0)
        return self._loader

    def units_of(self, e: EvalSpec) -> int:
        return math.ceil(len(self.plan.dataset_for(e)) / self.plan.batch_size)

    def run_eval(self, model: torch.nn.Module, model_key: str, m: ModelSpec, e: EvalSpec) -> None:
        p = self.plan
        ds = p.dataset_for(e)
        n_units = self.units_of(e)
        if self.store is not None:  # stores from before info["resolved"] gain it instead of a conflict
            self.store.register_evaluation(e.key, subset_as_stored(self.store.evaluation_info(e.key), p.eval_info(e)))
        label = describe_eval(e)
        from .adversarial_run import done_units  # units that keep images are done only with their file

        todo = dist.broadcast(sorted(set(range(n_units)) - (done_units(self.store, p.out, model_key, e)
                                                           if self.store is not None else set())),
                              f"planning {label} on {m.display}")
        if not todo:
            return
        world, rank = dist.world(), dist.rank()
        mine = todo[rank::world]
        bs = p.batch_size
        batches = [list(range(u * bs, min((u + 1) * bs, len(ds)))) for u in mine]
        it = self.loader().batches(e.key, batches)
        rounds = math.ceil(len(todo) / world)
        progress = self._progress(rounds, f"{m.display} {label}")
        t0 = time.time()
        for r in range(rounds):
            unit = mine[r] if r < len(mine) else None

            def compute():
                if unit is None:
                    return None
                x, y, ids = next(it)
                try:
                    return unit, unit_rows(model, e, unit, x, y, ids, run_seed=p.seed, device=p.device,
                                           amp=p.amp)
                except NonFiniteLogitsError as err:  # name the model, the evaluation and the unit
                    raise NonFiniteLogitsError(err.count, err.total, f"{err.where + ' ' if err.where else ''}"
                                               f"in unit {unit} of {label} (units finished before are kept)",
                                               f"model {m.display}") from None
                except BudgetError as err:  # a plug-in attack that breaks its budget or returns NaN
                    raise UnitFault(f"{err} (unit {unit} of {label} on {m.display}; units finished before are "
                                    "kept)") from None

            try:
                results = dist.run_everywhere(compute, f"{label} on {m.display}", gather=True)
            except dist.RankFailure as err:  # keep the units the healthy ranks finished
                self._write_units(model_key, e.key, getattr(err, "results", None) or [])
                raise
            # every rank waits for rank 0's write: a full disk ends all ranks now, named, not at the timeout
            dist.run_everywhere(lambda: self._write_units(model_key, e.key, results),
                                f"writing {label} on {m.display} to {p.out / STORE_NAME}")
            progress.update(1)
        progress.close()
        if self.store is not None:
            self.store.checkpoint()  # the store file alone holds every finished evaluation (not only its -wal)
            s = self.store.samples(model_key, e.key)
            what = (f"mean confidence {s['confidence'].mean():.3f}" if e.kind == "ood"
                    else f"top-1 {100 * s['correct1'].mean():6.2f}%")
            self.log(f"  {label:<60s} {what}  n={len(s)}  ({time.time() - t0:.1f}s)")

    def run_diagnostics(self, model: torch.nn.Module, model_key: str, m: ModelSpec, e: EvalSpec) -> None:
        """A ``diagnostics`` evaluation: computed once on rank 0, stored whole in the meta table under
        ``diagnostics/<model_key>/<eval_key>`` (skipped when present: resumable per model)."""
        if dist.rank() != 0 or self.store is None:
            return

        meta_key = f"diagnostics/{model_key}/{e.key}"
        if self.store.get_meta(meta_key) is not None:
            return
        p = self.plan
        t0 = time.time()
        prm = e.params
        rows, axes = diagnose_inputs(
            model, p.base_dataset(e.dataset), names=prm["diagnostics"],
            attack=(prm["attack"], prm["attack_args"]) if prm.get("attack") else None,
            corruption=(prm["corruption"], prm["severity"]) if prm.get("corruption") else None,
            batch_size=p.batch_size, seed=p.seed)
        clean = lambda r: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}  # noqa: E731
        self.store.set_meta(meta_key, {"model": m.display, "model_key": model_key, "eval_key": e.key,
                                       "dataset": e.dataset, "params": prm, "rows": [clean(r) for r in rows],
                                       "axis_rows": [clean(r) for r in axes]})
        self.log(f"  {describe_eval(e)[:60]:<60s} {len(rows)} rows  ({time.time() - t0:.1f}s)")

    def _write_units(self, model_key: str, eval_key: str, results: list) -> None:
        """Rank 0 writes each gathered (unit, rows), one transaction per unit."""
        import sqlite3

        if self.store is None:
            return

        for res in results:
            if res is not None:
                try:
                    write_images(self.plan.out, model_key, eval_key, res)  # before the rows: never rows alone
                    queries = res[1].pop(QUERIES_KEY, None) if isinstance(res[1], dict) else None
                    if queries:  # what the attack cost, per sample (attacks/accounting.py), before the rows
                        self.store.set_meta(f"queries/{model_key}/{eval_key}/{res[0]}",
                                            {"sample_id": list(res[1]["sample_id"]), **queries})
                    self.store.write_unit(model_key, eval_key, res[0], res[1])
                except (OSError, sqlite3.OperationalError) as err:  # disk full, I/O error: one line, resumable
                    raise write_error(self.store.path, err) from None

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        enabled = self.plan.cfg.progress
        disable = (dist.rank() != 0) or (enabled is False) or (enabled is None and not sys.stderr.isatty())
        return tqdm(total=total, desc=desc[:70], unit="batch", leave=False, disable=disable)

    # -- trust checks and the manifest -------------------------------------------------------------------
    def trust_checks(self, model: torch.nn.Module, model_key: str) -> None:
        """Clean accuracy above chance; accuracy monotone in eps; large-eps attack drives accuracy to ~0;
        gradient-free vs gradient attacks (masking); differentiability. Recomputed from the store (and seeded),
        so resume-safe."""
        p = self.plan
        if p.clean_key is not None:
            s = self.store.samples(model_key, p.clean_key)
            classes = self.num_classes.get(model_key) or int(getattr(model, "num_classes", 0) or 0)
            self._guarded(model_key, "chance_level",
                          lambda: check_chance_level(int(s["correct1"].sum()), len(s), classes))
        if not any(e.kind == "attack" for e in p.evals):
            return
        curves, norms, free, n_min = attack_curves(self.store, model_key)
        for group, curve in curves.items():
            if len(curve) > 1:
                self._guarded(model_key, f"monotone_in_eps[{group}]",
                              lambda curve=curve: attack_checks.check_monotone_in_eps(curve, n=n_min))
        if free and len(free) < len(curves):
            self._guarded(model_key, "gradient_masking",
                          lambda: attack_checks.check_gradient_masking(curves, free, norms=norms, n=n_min))
        ds = p.base_dataset(p.dataset)
        n = min(32, len(ds))
        x = torch.stack([ds[i][0] for i in range(n)]).to(p.device)
        y = torch.tensor([ds[i][1] for i in range(n)]).to(p.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            self._guarded(model_key, "large_eps", lambda: attack_checks.check_large_eps(model, x, y))
            self._guarded(model_key, "differentiability",
                          lambda: attack_checks.check_differentiability(model, x[:8], y[:8]))
            self._guarded(model_key, "softmax_output", lambda: adaptive_checks.check_softmax_output(model, x[:8]))
            families = [{"name": e.name, **(e.resolved or {})} for e in p.evals if e.kind == "attack"]
            self._guarded(model_key, "eps_zero_identity",
                          lambda: adaptive_checks.check_eps_zero_identity(model, x[:8], y[:8], families, seed=p.seed))
            self._guarded(model_key, "unstable_predictions",
                          lambda: indicators.unstable_predictions(model, x[:8], y[:8], seed=p.seed))
        standard, adaptive = adaptive_pairs(self.store, model_key)
        if standard:
            self._guarded(model_key, "adaptive_gap", lambda: adaptive_checks.check_adaptive_gap(standard, adaptive))
        self.indicator_checks(model_key)

    def indicator_checks(self, model_key: str) -> None:
        """Pintor et al.'s indicators of attack failure, one check per indicator and attack evaluation, from the
        per-sample values the units stored (so a resumed run checks what a fresh one would)."""
        evals = self.store.evaluations().set_index("eval_key")
        name = self.store.models().set_index("model_key")["name"].get(model_key, model_key)
        for eval_key, values in stored_indicators(self.store, model_key).items():
            info = evals.loc[eval_key] if eval_key in evals.index else None
            label = attack_label(str(info["name"]), info["params"]) if info is not None else eval_key
            for res in indicators.verdicts(values, f"{label} on {name}"):
                self.store.write_check(model_key, eval_key, res.name, res.status, res.message, res.details)
                if res.status != "pass":
                    self.log(f"  trust check {res.name}: {res.status.upper()}: {res.message}")

    def _guarded(self, model_key: str, name: str, fn: Callable[[], Any]) -> None:
        """A check that crashes is recorded as failed (with the error), never silently dropped."""
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - recorded in the store and the report
            self.store.write_check(model_key, None, name, "fail", f"check raised {type(e).__name__}: {e}", {})
            self.log(f"  trust check {name}: could not run: {e}")
            return
        self._write_check(model_key, name, res)

    def _write_check(self, model_key: str, name: str, res: Any) -> None:
        self.store.write_check(model_key, None, name, res.status, res.message, res.details)
        if res.status != "pass":
            self.log(f"  trust check {name}: {res.status.upper()}: {res.message}")

    def _dynamics(self) -> dict[str, Any]:
        """Each stored model's static/dynamic classification (model info ``dynamics``), by display name."""
        models = self.store.models()
        if "dynamics" not in models:
            return {}
        return {r["name"]: r["dynamics"] for _, r in models.iterrows() if isinstance(r["dynamics"], dict)}

    def write_manifest(self) -> None:
        p = self.plan
        manifest = build_manifest(
            seeds={"run": p.seed}, device=p.device,
            checkpoints={m.display: m.weights_file for m in p.models if m.weights_file},
            sample_ids=p.sample_ids(),
            extra={"suite": p.suite.name, "suite_version": p.suite.version, "settings": p.settings(),
                   "precision": p.amp, "world_size": dist.world(), "python": platform.python_version(),
                   "command": " ".join(sys.argv),
                   "model_settings": {m.display: m.settings for m in p.models},
                   "model_dynamics": self._dynamics(),
                   "pretrained": [m.display for m in p.models if m.checkpoint == PRETRAINED]},
        )

        manifest["adversarial"] = manifest_listing(self.store, p.out)  # saved images, sha256 per unit file
        self.store.set_meta("manifest", manifest)
        write_manifest(p.out / "manifest.json", manifest)  # atomic: a cut-short manifest never replaces one


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` with its data restricted to the datasets ``b`` reads too: a dataset only one of the runs
    reads is a change of evaluations, which the planned-evaluations check names. A subset file counts by
    its entries, not its path (moved with the clone, it is the same subset)."""
    subset = a.get("subset")
    if isinstance(subset, dict) and subset.get("sha256"):  # a subset file is its entries (their sha256), not its path
        a = {**a, "subset": {k: v for k, v in subset.items() if k != "file"}}
    data = a.get("data")
    if not isinstance(data, dict) or not isinstance(b.get("data"), dict):
        return a
    return {**a, "data": {k: v for k, v in data.items() if k in b["data"]}}


def subset_as_stored(old: dict[str, Any] | None, info: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's record with the subset file's path the store recorded, when its entries are the same
    (same sha256): the file moved (or the clone did), the subset did not."""
    was, now = (old or {}).get("subset"), info.get("subset")
    if not (isinstance(was, dict) and isinstance(now, dict) and was.get("sha256") and was.get("sha256") == now.get(
            "sha256") and "file" in was):
        return info
    return {**info, "subset": {**now, "file": was["file"]}}


def settings_diff(old: dict[str, Any], now: dict[str, Any]) -> str:
    """'seed=0 (now 1), dataset folder: other images under the same name (...)': what differs, in words."""
    parts = []
    for k, v in now.items():
        if old.get(k) == v:
            continue
        if k != "data" or not isinstance(old.get(k), dict):
            parts.append(f"{k}={old.get(k)!r} (now {v!r})")
            continue
        for name, d in v.items():
            o = old[k].get(name)
            if o is None:
                continue  # a dataset only this run reads: an added evaluation, not another setting
            if o.get("root") != d.get("root"):
                parts.append(f"dataset {name}: root {o.get('root')} (now {d.get('root')})")
            elif o != d:
                parts.append(f"dataset {name}: other images under the same root (listing sha256 "
                             f"{str(o.get('listing_sha256'))[:12]}..., now {str(d.get('listing_sha256'))[:12]}...)")
    return ", ".join(parts)


def build_model(plan: Plan, m: ModelSpec) -> torch.nn.Module:
    """One planned model with its weights, contract and attention patch, on the run's device."""
    torch.manual_seed(plan.seed)  # weights of an un-checkpointed model are a function of the seed
    model = load_model(m.name, m.checkpoint, device=plan.device, data_config=plan.cfg.data_config,
                       trusted_globals=plan.cfg.trusted_globals, **m.kwargs)
    if m.attention:
        patch_attention(model, m.attention["variant"], layers=m.attention["layers"],
                        allow_reinit=plan.cfg.attention_reinit, **m.patch_params)
        model.eval()
    return model


def model_dynamics_info(model: torch.nn.Module) -> dict[str, Any]:
    """Static or dynamic (``attacks.model_dynamics``: declared by its modules, else detected on random images of
    its input size), for the model info; a model that cannot be probed is recorded as ``unknown``, with why."""
    try:
        found = model_dynamics(model)
    except Exception as err:  # noqa: BLE001 - recorded, never fatal: the evaluations decide the numbers
        return {"kind": "unknown", "why": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                "source": "error"}
    return {k: found[k] for k in ("kind", "why", "source")}


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> Path:
    """Validate and evaluate (resuming whatever is already in the store); returns the run folder. The harness
    stops at the store: the caller builds the report (``cfg.report``), so evaluation never imports reports."""
    device = cfg.device or default_device()
    if isinstance(cfg.rank_timeout, bool) or not isinstance(cfg.rank_timeout, (int, float)) or not cfg.rank_timeout > 0:
        raise SuiteError(f"--rank-timeout must be > 0 seconds, got {cfg.rank_timeout!r}")
    dist.init(device, float(cfg.rank_timeout))
    runner = None
    try:
        plan = Plan(cfg, log)
        runner = Runner(plan, log)
        return runner.run()
    finally:
        if runner is not None:
            runner.close()  # releases --out's lock, also after an error
        dist.shutdown()
