"""Nothing silent: every mistake is refused before compute, and faults during a run end it with
one line naming the model, evaluation, path or rank, keeping what was already computed."""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustbench_rpc.cli.commands import main
from robustbench_rpc.evaluation.plan import Plan, RunConfig
from robustbench_rpc.evalspec import SuiteError
from tiny_runs import evaluation_table, suite_text

CLEAN = suite_text(dict(kind="clean"), name="f", version=None, dataset=None, batch_size=4, limit=8)
PGD = evaluation_table(dict(kind="attack", attack="pgd", eps=["2/255"], steps=1))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _suite(tmp_path: Path, text: str = CLEAN, name: str = "f.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _run(suite: Path, out: Path, *extra: str) -> int:
    return main(["run", "--suite", str(suite), "--out", str(out), "--no-progress", "--no-report", "--device", "cpu",
                 *extra])


def _units(out: Path) -> int:
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM units").fetchone()[0]


# ---------------------------------------------------------------------------------- 3. before compute
def test_limit_zero_is_an_error_not_no_limit(tmp_path):
    with pytest.raises(SuiteError, match="--limit must be >= 1, got 0"):
        Plan(RunConfig(suite=_suite(tmp_path), limit=0))
    with pytest.raises(SuiteError, match="limit must be >= 1, got 0"):
        Plan(RunConfig(suite=_suite(tmp_path, CLEAN.replace("limit = 8", "limit = 0"))))


def test_run_options_are_checked_before_compute(tmp_path):
    s = _suite(tmp_path)
    with pytest.raises(SuiteError, match="--eot-samples must be >= 1, got 0"):
        Plan(RunConfig(suite=s, eot_samples=0))
    with pytest.raises(SuiteError, match="--workers must be >= 0, got -1"):
        Plan(RunConfig(suite=s, workers=-1))


def test_data_roots_unused_missing_or_misspelt_are_refused(tmp_path):
    s = _suite(tmp_path)
    with pytest.raises(SuiteError, match=r"--data-root imagenet=.*no evaluation of this run reads dataset 'imagenet'"):
        Plan(RunConfig(suite=s, data_roots={"imagenet": str(tmp_path)}))
    with pytest.raises(SuiteError, match=r"--data-root imagenet-c=.*nope.*does not exist"):
        Plan(RunConfig(suite=s, data_roots={"imagenet-c": str(tmp_path / "nope")}))
    with pytest.raises(SuiteError, match=r"--data-root imagenet_c=.*unknown dataset.*imagenet-c"):
        Plan(RunConfig(suite=s, data_roots={"imagenet_c": str(tmp_path)}))


def test_attention_args_are_checked_before_compute(tmp_path, capsys):
    s = _suite(tmp_path)
    with pytest.raises(SuiteError, match=r"--attention-arg n_itr.*rpc.*Did you mean: n_iter"):
        Plan(RunConfig(suite=s, attention="rpc", attention_args={"n_itr": 3}))
    with pytest.raises(SuiteError, match=r"--attention rpc.*n_iter must be >= 1"):
        Plan(RunConfig(suite=s, attention="rpc", attention_args={"n_iter": 0}))


def test_run_amp_reaches_the_attack_check(tmp_path):
    plan = Plan(RunConfig(suite=_suite(tmp_path, CLEAN + PGD), amp="bf16"))
    pgd = next(e for e in plan.evals if e.kind == "attack")
    resolved = plan.eval_info(pgd)["resolved"]
    assert resolved["amp_dtype"] == "bfloat16"


def test_model_override_keeps_the_suites_reference_model(tmp_path):
    s = _suite(tmp_path, CLEAN.replace('models = ["symvit_micro_patch4_32:packaged"]',
                                       'models = ["symvit_micro_patch4_32:packaged", "vit_micro_patch4_32:packaged"]\n'
                                       'reference_model = "symvit_micro_patch4_32"'))
    logs: list[str] = []
    plan = Plan(RunConfig(suite=s, models=["rpc_symvit_micro_patch4_32:packaged"]), log=logs.append)
    assert [m.name for m in plan.models] == ["rpc_symvit_micro_patch4_32", "symvit_micro_patch4_32"]
    ref = [m for m in plan.models if m.reference]
    assert [m.spec for m in ref] == ["symvit_micro_patch4_32:packaged"]  # the suite's own spec, checkpoint kept
    assert any("reference model symvit_micro_patch4_32" in line and "--reference" in line for line in logs)
    # told otherwise: one of the given models is the reference, nothing is added
    plan = Plan(RunConfig(suite=s, models=["rpc_symvit_micro_patch4_32:packaged"],
                          reference_model="rpc_symvit_micro_patch4_32"))
    assert [(m.name, m.reference) for m in plan.models] == [("rpc_symvit_micro_patch4_32", True)]
    with pytest.raises(SuiteError, match=r"--reference vit_micro.*not one of the run's models.*rpc_symvit_micro"):
        Plan(RunConfig(suite=s, models=["rpc_symvit_micro_patch4_32:packaged"], reference_model="vit_micro"))


def test_defaulted_attack_parameters_are_stored_and_old_stores_resume(tmp_path):
    s = _suite(tmp_path, CLEAN + PGD)
    out = tmp_path / "o"
    assert _run(s, out) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        infos = [json.loads(r[0]) for r in db.execute("SELECT info_json FROM evaluations")]
    pgd = next(i for i in infos if i["kind"] == "attack")
    assert "alpha" not in pgd["params"]  # as declared
    assert pgd["resolved"]["alpha"] == pytest.approx(2.5 * 2 / 255)  # as run
    assert pgd["resolved"]["random_start"] is True and pgd["resolved"]["steps"] == 1
    # a store written before 'resolved' existed resumes (and gains it) instead of a key conflict
    with sqlite3.connect(out / "results.sqlite") as db:
        for key, info in db.execute("SELECT eval_key, info_json FROM evaluations").fetchall():
            info = json.loads(info)
            info.pop("resolved", None)
            db.execute("UPDATE evaluations SET info_json = ? WHERE eval_key = ?", (json.dumps(info), key))
    assert _run(s, out) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        infos = [json.loads(r[0]) for r in db.execute("SELECT info_json FROM evaluations")]
    assert "resolved" in next(i for i in infos if i["kind"] == "attack")


def test_edited_suite_or_other_amp_into_an_existing_out(tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(_suite(tmp_path), out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    # a different precision would mix two protocols under one manifest: refused, nothing rewritten
    assert _run(_suite(tmp_path), out, "--amp", "bf16") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "amp='fp32' (now 'bf16')" in err
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["extra"]["precision"] == "fp32"
    # an edited suite that changes an evaluation is refused, naming it
    edited = _suite(tmp_path, CLEAN.replace('kind = "clean"', 'kind = "clean"\ndataset = "digits32-train"'), "e.toml")
    assert _run(edited, out) == 2
    err = capsys.readouterr().err
    assert "evaluations differ" in err and "clean" in err
    # an edited suite that only adds evaluations says exactly what it adds
    added = _suite(tmp_path, CLEAN + PGD, "a.toml")
    assert _run(added, out) == 0
    assert "adding 1 evaluation(s)" in capsys.readouterr().out
    assert _units(out) == 2 + 2


# ------------------------------------------------------------------------------------------ 4. faults
class _NaNOn(torch.nn.Module):
    """The micro SymViT, with NaN logits for the images equal to ``bad`` (pixel space)."""

    def __init__(self, bad: torch.Tensor):
        super().__init__()
        from robustbench_rpc.models.vit import MODELS

        self.inner = MODELS.get("symvit_micro_patch4_32").factory()
        self.num_classes = 10
        self.pretrained_cfg = self.inner.pretrained_cfg
        mean = torch.tensor(self.pretrained_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(self.pretrained_cfg["std"]).view(3, 1, 1)
        bad = bad.to(torch.empty(0).device)  # the plan builds models on the meta device
        self.register_buffer("bad", ((bad - mean) / std)[None])

    def forward(self, x):
        out = self.inner(x)
        hit = (x - self.bad).abs().flatten(1).amax(1) < 1e-4
        return torch.where(hit[:, None], torch.full_like(out, float("nan")), out)


def _nan_model(name: str, sample: int) -> None:
    from robustbench_rpc.data.resolve import get_dataset
    from robustbench_rpc.models.vit import MODELS, ModelEntry

    bad = get_dataset("digits32")[sample][0]
    MODELS.add(name, ModelEntry(name, lambda **kw: _NaNOn(bad), "symmetric", "test only"), overwrite=True)


def test_nan_logits_name_model_evaluation_and_count_and_keep_finished_units(tmp_path, capsys):
    from robustbench_rpc.data.resolve import get_dataset
    from robustbench_rpc.data.subsets import stratified_indices

    chosen = stratified_indices(get_dataset("digits32").labels.tolist(), 12)  # what --limit 12 evaluates
    _nan_model("test_nan_at_10", chosen[10])  # the 11th image: in unit 2 of batch 4
    s = _suite(tmp_path, CLEAN.replace("limit = 8", "limit = 12"))
    out = tmp_path / "o"
    assert _run(s, out, "--model", "test_nan_at_10") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "test_nan_at_10" in err and "clean" in err and "non-finite" in err and "1 of 4 samples" in err
    assert _units(out) == 2  # units 0 and 1 were finished and stay
    assert "stochastic" not in err


def test_nan_logits_are_not_called_stochastic(tmp_path, capsys):
    _nan_model("test_nan_at_0", 0)
    out = tmp_path / "o"
    assert _run(_suite(tmp_path), out, "--model", "test_nan_at_0") == 1
    err = capsys.readouterr().err
    assert "test_nan_at_0" in err and "non-finite" in err and "1 of 8 samples" in err and "stochastic" in err


def test_nan_logits_through_the_api_raise_instead_of_zero_accuracy():
    from robustbench_rpc.attacks import detect_stochastic, get_attack
    from robustbench_rpc.attacks.evaluate import NonFiniteLogitsError, attack_outcomes
    from robustbench_rpc.data.resolve import get_dataset
    from robustbench_rpc.models.normalize import Normalized
    from robustbench_rpc.evaluation.compute_unit import prediction_rows

    ds = get_dataset("digits32")
    x = torch.stack([ds[i][0] for i in range(4)])
    y = torch.tensor([ds[i][1] for i in range(4)])
    inner = _NaNOn(ds[2][0])
    model = Normalized(inner, inner.pretrained_cfg["mean"], inner.pretrained_cfg["std"]).eval()
    with pytest.raises(NonFiniteLogitsError, match="1 of 4 samples"):
        attack_outcomes(model, get_attack("noise", eps=0.0), x, y)
    with pytest.raises(NonFiniteLogitsError, match="1 of 4 samples"):
        prediction_rows(model, x, y, torch.arange(4), "cpu", None)
    with pytest.raises(NonFiniteLogitsError, match="1 of 4 samples"):
        detect_stochastic(model, x)


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    assert _run(_suite(tmp_path), f) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {f} is an existing file, not a folder"
    import robustbench_rpc.store.results as store

    def readonly(self, *a, **kw):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(store.ResultsStore, "__init__", readonly)
    out = tmp_path / "ro"
    assert _run(_suite(tmp_path), out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out {out}: cannot write the results store") and "readonly" in err
    assert "\n" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert _run(_suite(tmp_path), out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --out {out}") and "\n" not in err
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("exc", [sqlite3.OperationalError("database or disk is full"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_full_disk_is_one_line_naming_the_store_and_resumes(tmp_path, capsys, monkeypatch, exc):
    import robustbench_rpc.store.results as store

    out = tmp_path / "o"
    real = store.ResultsStore.write_unit
    calls = {"n": 0}

    def write_unit(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real(self, *a, **kw)

    monkeypatch.setattr(store.ResultsStore, "write_unit", write_unit)
    assert _run(_suite(tmp_path), out) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(out / "results.sqlite") in err and ("full" in err or "No space" in err) and "resume" in err
    assert _units(out) == 1
    monkeypatch.setattr(store.ResultsStore, "write_unit", real)
    assert _run(_suite(tmp_path), out) == 0
    assert _units(out) == 2


def test_compare_unknown_model_suggests_the_runs_models(tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(_suite(tmp_path), out) == 0
    capsys.readouterr()
    assert main(["compare", str(out), "symvit_micro_patch4_23", "symvit_micro_patch4_32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no model 'symvit_micro_patch4_23'" in err
    assert "did you mean: symvit_micro_patch4_32" in err.lower()


HOLD = """
import sys, time
from robustbench_rpc.store import lock_folder
lock = lock_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_into_an_occupied_out_is_refused_and_a_killed_holder_does_not_block(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env={**ENV, "PYTHONPATH": os.getcwd()},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _run(_suite(tmp_path), out) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(out) in err and f"PID {holder.pid}" in err
        assert not (out / "results.sqlite").exists()
    finally:
        holder.kill()  # like kill -9: the OS releases the lock with the process
        holder.wait()
    assert _run(_suite(tmp_path), out) == 0
    assert _units(out) == 2



def test_store_transactions_turn_a_full_disk_into_one_named_line(tmp_path):
    """SQLite's 'database or disk is full' inside a transaction (not a patched write_unit): StoreWriteError
    naming the store, the transaction rolled back, the committed rows kept."""
    from robustbench_rpc.store.results import ResultsStore
    from robustbench_rpc.store.errors import StoreWriteError

    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m", {"name": "m"})
    store.register_evaluation("e", {"kind": "clean", "name": "clean", "dataset": "d", "n_samples": 2})
    row = {"sample_id": [0], "label": [1], "pred": [1], "correct1": [1], "correct5": [1], "confidence": [0.9]}
    store.write_unit("m", "e", 0, row)
    real = store._con

    class Full:
        def execute(self, sql, *a):
            if sql.lstrip().upper().startswith("INSERT INTO SAMPLES"):
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *a)

        def executemany(self, sql, *a):
            if sql.lstrip().upper().startswith("INSERT INTO SAMPLES"):
                raise sqlite3.OperationalError("database or disk is full")
            return real.executemany(sql, *a)

    store._con = Full()
    with pytest.raises(StoreWriteError, match=r"cannot write the results store .*results.sqlite: database or disk "
                                              r"is full; the units committed before are kept: free space"):
        store.write_unit("m", "e", 1, {**row, "sample_id": [1]})
    store._con = real
    assert store.done_units("m", "e") == {0}  # the failed unit was rolled back whole
    assert store.write_unit("m", "e", 1, {**row, "sample_id": [1]})
