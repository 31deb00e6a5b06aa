"""Every attack row of every preset and of every packaged suite, through the suite path at ImageNet size:
a suite file, ``harness.run(RunConfig(...))``, a 3x224x224 model and an ImageNet
val tree built here. The paper suite's SLD row used to end the run (float32 rounding of the pixel round
trip, summed over 150528 coordinates, beat the fixed 1e-5 budget tolerance); here every row must finish
and its stored norms must respect its budget.

Rows of the costly attacks (CW, SPSA, Square, AutoAttack, APGD, ...) run with their iteration counts cut
(``FEW``), so the file stays well within a minute on 2 cores; FGSM, PGD, SLD and noise run as packaged.
(The `paper` preset exactly as packaged takes 11 minutes here on one 224-px image, 1000-iteration CW x 30.)
"""
from __future__ import annotations

import inspect
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import robustbench_rpc
from robustbench_rpc.attacks import attack_class, get_preset, list_presets
from robustbench_rpc.evaluation.harness import run
from robustbench_rpc.evaluation.plan import RunConfig
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.evaluation.suite import load_suite
from test_imagenet_o import NOT_O, val_tree
from tiny_runs import evaluation_table, suite_text

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "faults_conv224"
SUITES_DIR = Path(robustbench_rpc.__file__).parent / "suites"
# iteration-like parameters and the small values they get here (only where the attack takes them)
FEW = {"steps": 2, "max_iterations": 2, "n_iter": 2, "n_restarts": 1, "n_queries": 10, "n_samples": 8,
       "n_target_classes": 2}
# cheap at 224 px as packaged: run exactly as the presets say (SLD needs its 20 steps of 1 to reach its L1
# ball of 10, where the rounding of the pixel round trip used to fail it)
AS_PACKAGED = {"sld", "pgd", "fgsm", "noise"}


def conv224(**kwargs) -> nn.Module:
    """3x224x224 -> 1000 logits through a stride-16 stem: milliseconds per image on a CPU."""
    return nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 1000))


if MODEL not in robustbench_rpc.list_models():
    robustbench_rpc.register_model(MODEL, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406),
                                   std=(0.229, 0.224, 0.225), num_classes=1000)(conv224)


def reduced(spec: dict) -> dict:
    """``spec`` with every iteration-like parameter the attack accepts cut to ``FEW`` (nested
    ``base_args`` too), unless the attack runs ``AS_PACKAGED``."""
    out = dict(spec)
    if spec["name"] in AS_PACKAGED:
        return out
    accepted = inspect.signature(attack_class(spec["name"])).parameters
    for key, value in FEW.items():
        if key in accepted:
            out[key] = value
    if isinstance(out.get("base_args"), dict):
        out["base_args"] = {k: FEW.get(k, v) for k, v in out["base_args"].items()}
    return out


def evaluation(spec: dict) -> str:
    """One ``[[evaluation]]`` table for an attack spec (a preset row or a suite's attack table)."""
    spec = dict(spec)
    name = spec.pop("name")
    return evaluation_table({"kind": "attack", "attack": name, **{k: v for k, v in spec.items() if k != "kind"}})


def packaged_attack_rows() -> list[tuple[str, dict]]:
    """(where, spec) for every row of every preset and every attack table of every packaged suite (a
    suite's ``preset = ...`` table is covered by that preset's rows), one budget per spec, cut to ``FEW``
    iterations and without repeats (presets and suites share rows)."""
    rows = [(f"preset {p} #{i}", r) for p in list_presets() for i, r in enumerate(get_preset(p))]
    from robustbench_rpc.evaluation.seg_plan import read_suite

    for path in sorted(SUITES_DIR.glob("*.toml")):
        if read_suite(str(path)) is not None:  # segmentation suites: tests/test_segmentation_run.py
            continue
        for i, ev in enumerate(load_suite(str(path)).evaluations):
            if ev.get("kind") == "attack" and "preset" not in ev:
                budgets = ev.get("eps") if isinstance(ev.get("eps"), list) else [ev.get("eps")]
                spec = {"name": ev["attack"], **{k: v for k, v in ev.items() if k != "attack"}}
                rows += [(f"{path.name} evaluation #{i + 1}", {**spec, "eps": e}) for e in budgets]
    for _, spec in rows:
        if spec["name"] == "patch_fool":  # the conv stand-in has no attention and no patch grid of its own
            spec.update(patch_size=16, select="random", loss="ce")
    unique = {}
    for where, spec in rows:
        spec = reduced({k: v for k, v in spec.items() if k != "kind" and v is not None})
        if isinstance(spec.get("eps"), str):
            spec["eps"] = float(Fraction(spec["eps"]))
        unique.setdefault(json.dumps(spec, sort_keys=True), (where, spec))
    return list(unique.values())


def distinct_once_resolved(rows: list[tuple[str, dict]]) -> set[str]:
    """The rows as the plan tells them apart: the attack's parameters with its defaults filled in, and the
    evaluation's own settings (two packaged rows differ only in defaults spelled out)."""
    from robustbench_rpc.evalspec import EVAL_PARAMS, EvalSpec, resolve_attack

    unsaid = {"accuracy": "robust", "attack_amp": True, "adaptive": False}
    out = set()
    for where, spec in rows:
        params = {k: v for k, v in spec.items() if k != "name"}
        resolved = resolve_attack(EvalSpec("attack", spec["name"], "imagenet", params), None, where)
        out.add(json.dumps([spec["name"], resolved, {k: params.get(k, unsaid.get(k)) for k in EVAL_PARAMS}],
                           sort_keys=True, default=str))
    return out


def run_suite(tmp_path: Path, name: str, body: str, val: Path, limit: int) -> Path:
    suite = tmp_path / f"{name}.toml"
    suite.write_text(suite_text(dict(kind="clean"), name=name, version=None, dataset="imagenet", models=None,
                                batch_size=2, seed=0) + body)
    cfg = RunConfig(suite=str(suite), models=[MODEL], out=tmp_path / f"out-{name}", device="cpu", limit=limit,
                    data_roots={"imagenet": str(val)}, progress=False, report=False)
    return run(cfg, log=lambda msg: None)


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory) -> Path:
    return val_tree(tmp_path_factory.mktemp("imagenet") / "val", {NOT_O[0]: 1, NOT_O[300]: 1})


def stored_attacks(out: Path):
    store = ResultsStore(out / "results.sqlite", readonly=True)
    try:
        evals = store.evaluations()
        return evals[evals["kind"] == "attack"], store.samples()
    finally:
        store.close()


def check_budgets(evals, samples) -> None:
    """Each stored sample's norm is within its evaluation's eps (plus the rounding bound: 1e-3 relative is
    far above it for these rows and far below any real violation)."""
    for _, ev in evals.iterrows():
        params = ev["params"] if isinstance(ev["params"], dict) else json.loads(ev["params"])
        eps, norm = params.get("eps"), params.get("norm")
        rows = samples[samples["eval_key"] == ev["eval_key"]]
        assert len(rows) == ev["n_samples"] > 0, ev["name"]
        column = {"Linf": "linf", "L2": "l2"}.get(norm)
        if eps is None or column is None or math.isnan(float(eps)):
            continue
        assert (rows[column] <= float(eps) * (1 + 1e-3) + 1e-6).all(), (ev["name"], params)


def test_every_packaged_attack_row_runs_through_the_suite_at_imagenet_size(tmp_path, imagenet_val):
    rows = packaged_attack_rows()
    names = {spec["name"] for _, spec in rows}
    assert {"sld", "cw-cleverhans", "spsa", "noise", "autoattack"} <= names
    (paper_sld,) = [r for r in get_preset("paper") if r["name"] == "sld"]
    assert paper_sld in [spec for _, spec in rows]  # the row that ended `--suite paper`, unchanged
    body = "".join(f"# {where}\n" + evaluation(spec) for where, spec in rows)
    out = run_suite(tmp_path, "every-row", body, imagenet_val, limit=2)
    evals, samples = stored_attacks(out)
    assert len(evals) == len(distinct_once_resolved(rows))  # rows equal once defaults are filled in: run once
    check_budgets(evals, samples)
