"""End-to-end: the CLI on tiny data, resume after kill -9, reports from partial results, torchrun sharding."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from robustbench_rpc.cli.commands import main
from tiny_runs import MICRO, RPC_MICRO, suite_text

TINY_SUITE = suite_text(
    dict(kind="clean"), dict(kind="attack", attack="fgsm", eps=["2/255", "8/255"]),
    dict(kind="attack", attack="pgd", eps=["2/255", "8/255"], steps=3, random_start=True),
    dict(kind="attack", attack="noise", eps=["8/255"]),
    dict(kind="corruption", corruptions=["gaussian_noise", "contrast"], severities=[2, 5]),
    dict(kind="ood", dataset="digits32-ood"),
    name="tiny", models=[MICRO, RPC_MICRO], reference_model="symvit_micro_patch4_32", batch_size=4, seed=3, limit=12)

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("suite") / "tiny.toml"
    p.write_text(TINY_SUITE)
    return p


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robustbench_rpc", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _numeric(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv)
    return df.select_dtypes("number")


@pytest.fixture(scope="module")
def full_run(suite_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["run", "--suite", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


def test_run_writes_store_report_and_exports(full_run):
    for rel in ("results.sqlite", "manifest.json", "index.html", "report.md", "results/samples.csv",
                "results/samples.parquet", "results/aggregates.csv"):
        assert (full_run / rel).is_file(), rel
    tables = list((full_run / "tables").glob("*"))
    assert {p.suffix for p in tables} >= {".csv", ".md", ".tex"}
    assert {p.suffix for p in (full_run / "plots").glob("*")} >= {".png", ".svg"}
    samples = pd.read_csv(full_run / "results/samples.csv")
    evals = pd.read_csv(full_run / "results/evaluations.csv")
    assert len(evals) == 1 + 4 + 1 + 4 + 1
    assert len(samples) == 2 * len(evals) * 12
    # robust accuracy recomputed per sample: an attack row is correct only if its clean prediction was
    attack = samples[samples["clean_correct1"].notna()]
    assert (attack["correct1"] <= attack["clean_correct1"]).all()
    assert (attack["linf"] <= 8 / 255 + 1e-5).all()
    html = (full_run / "index.html").read_text()
    assert "rpc_symvit_micro_patch4_32" in html and "http://" not in html
    checks = pd.read_csv(full_run / "results/checks.csv")
    assert {"large_eps", "differentiability", "stochastic_model"} <= set(checks["check"])


def test_report_and_compare_subcommands(full_run, tmp_path, capsys):
    assert main(["report", str(full_run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    assert main(["compare", str(full_run), "symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32"]) == 0
    out = capsys.readouterr().out
    assert "p_value" in out or "McNemar" in out


def test_rerun_recomputes_nothing(full_run, suite_file):
    db = sqlite3.connect(full_run / "results.sqlite")
    before = db.execute("SELECT COUNT(*), MAX(finished_at) FROM units").fetchone()
    db.close()
    t0 = time.time()
    assert main(["run", "--suite", str(suite_file), "--out", str(full_run), "--no-progress", "--no-report"]) == 0
    db = sqlite3.connect(full_run / "results.sqlite")
    after = db.execute("SELECT COUNT(*), MAX(finished_at) FROM units").fetchone()
    assert before == after


def test_settings_mismatch_is_refused(full_run, suite_file, capsys):
    assert main(["run", "--suite", str(suite_file), "--out", str(full_run), "--limit", "8"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_kill_midway_then_resume_gives_identical_numbers(full_run, suite_file, tmp_path):
    out = tmp_path / "killed"
    proc = _cli("run", "--suite", str(suite_file), "--out", str(out), "--no-progress", "--no-report")
    db_path = out / "results.sqlite"
    deadline = time.time() + 240
    while time.time() < deadline:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path, timeout=1) as db:
                    n = db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
            except sqlite3.Error:
                n = 0
            if n >= 15:
                break
        if proc.poll() is not None:
            pytest.fail("run finished before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db_path) as db:
        partial = db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    total_units = 2 * 11 * 3
    assert 15 <= partial < total_units
    # a report from partial results renders (missing, never zero)
    assert main(["report", str(out)]) == 0
    assert main(["run", "--suite", str(suite_file), "--out", str(out), "--no-progress"]) == 0
    for table in ("samples", "aggregates"):
        a, b = _numeric(full_run / f"results/{table}.csv"), _numeric(out / f"results/{table}.csv")
        pd.testing.assert_frame_equal(a, b)
    assert main(["verify", str(full_run), str(out)]) == 0  # the resumed run reproduces the reference


def test_verify_flags_a_different_protocol(full_run, suite_file, tmp_path, capsys):
    other = tmp_path / "seed4"
    assert main(["run", "--suite", str(suite_file), "--out", str(other), "--seed", "4", "--no-progress",
                 "--no-report"]) == 0
    capsys.readouterr()
    assert main(["verify", str(full_run), str(other)]) == 1
    out = capsys.readouterr().out
    assert "REPRO: seeds differ" in out or "REPRO: extra.settings" in out
    assert "NOT reproduced" in out


def test_bad_inputs_fail_before_compute(tmp_path, capsys):
    assert main(["run", "--model", "rpc_symvit_micro_patch4_23", "--out", str(tmp_path / "x")]) == 2
    assert "rpc_symvit_micro_patch4_32" in capsys.readouterr().err
    assert main(["run", "--model", f"symvit_micro_patch4_32:{tmp_path / 'missing.pth'}", "--out", str(tmp_path / "y")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_models_subcommand_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "rpc_symvit_tiny_6iter_layer1" in out and "symvit_micro_patch4_32" in out


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_ranks_match_single_process(full_run, suite_file, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "dist"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "robustbench_rpc", "run",
                           "--suite", str(suite_file), "--out", str(out), "--no-progress", "--device", "cpu"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for csv in sorted((full_run / "results").glob("*.csv")):
        pd.testing.assert_frame_equal(_numeric(csv), _numeric(out / "results" / csv.name), check_exact=True)
    for csv in sorted((full_run / "tables").glob("*.csv")):
        pd.testing.assert_frame_equal(_numeric(csv), _numeric(out / "tables" / csv.name), check_exact=True)


def test_class_count_mismatch_detected_before_compute(tmp_path, capsys):
    rc = main(["run", "--suite", "quick", "--model", "symvit_micro_patch4_32", "--model-arg", "num_classes=7",
               "--out", str(tmp_path / "z"), "--no-progress"])
    assert rc == 2
    assert "predicts 7 classes but dataset 'digits32'" in capsys.readouterr().err
    assert not (tmp_path / "z" / "results.sqlite").exists()


def test_stochastic_model_is_detected_and_evaluated_with_eot(tmp_path, suite_file):
    """A model whose logits change between identical passes gets a 'stochastic' warning and EOT."""
    import torch

    from robustbench_rpc.evaluation.harness import run
    from robustbench_rpc.evaluation.plan import RunConfig
    from robustbench_rpc.models.vit import MODELS, ModelEntry
    from robustbench_rpc.store.results import ResultsStore

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MODELS.get("symvit_micro_patch4_32").factory()
            self.num_classes = 10
            self.pretrained_cfg = self.inner.pretrained_cfg

        def forward(self, x):
            return self.inner(x + 0.05 * torch.randn_like(x))

    MODELS.add("test_noisy_micro", ModelEntry("test_noisy_micro", lambda **kw: Noisy(), "symmetric", "test only"),
               overwrite=True)
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\nlimit = 8\nbatch_size = 8\n'
                     '[[evaluation]]\nkind = "clean"\n[[evaluation]]\nkind = "attack"\nattack = "fgsm"\neps = ["2/255"]\n')
    out = run(RunConfig(suite=suite, models=["test_noisy_micro"], out=tmp_path / "o", eot_samples=3, report=False,
                        progress=False))
    checks = ResultsStore(out / "results.sqlite").checks().set_index("check")
    assert checks.loc["stochastic_model", "status"] == "warn"
    assert "EOT" in checks.loc["stochastic_model", "message"]


def test_user_attention_plugin_by_name_on_the_cli(tmp_path, capsys):
    plugin = tmp_path / "my_variants.py"
    plugin.write_text(
        "from robustbench_rpc.attention import SymmetricAttention, register_attention\n"
        "@register_attention('cli_mean_attention')\n"
        "class MeanAttention(SymmetricAttention):\n"
        "    def mix(self, k, v):\n"
        "        return v.mean(dim=-2, keepdim=True).expand_as(v)\n")
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\nlimit = 8\nbatch_size = 8\n[[evaluation]]\nkind = "clean"\n')
    out = tmp_path / "o"
    assert main(["--plugin", str(plugin), "run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged",
                 "--attention", "cli_mean_attention", "--attention-layers", "first", "--out", str(out),
                 "--no-progress", "--no-report"]) == 0
    models = pd.read_csv(out / "results" / "models.csv")
    assert models["name"].iloc[0] == "symvit_micro_patch4_32+cli_mean_attention@first"
    assert "cli_mean_attention" in models["attention"].iloc[0]
    assert main(["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32", "--attention", "rcp",
                 "--out", str(tmp_path / "p")]) == 2
    assert "Did you mean: rpc" in capsys.readouterr().err


def _imagenet_like(root: Path) -> dict[str, str]:
    """Tiny on-disk ImageNet val / -C / -A / -O folders in the released layouts (a few images)."""
    import numpy as np
    from PIL import Image

    from robustbench_rpc.data.imagenet_classes import IMAGENET_A_WNIDS, IMAGENET_O_WNIDS, IMAGENET_WNIDS

    rng = np.random.default_rng(0)

    def img(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(path, quality=90)

    for i, w in enumerate(IMAGENET_WNIDS):
        (root / "val" / w).mkdir(parents=True)
        (root / "c" / "gaussian_noise" / "3" / w).mkdir(parents=True)
        if i < 3:
            img(root / "val" / w / f"ILSVRC2012_val_{i:08d}.JPEG")
            img(root / "c" / "gaussian_noise" / "3" / w / f"ILSVRC2012_val_{i:08d}.JPEG")
    for w in IMAGENET_A_WNIDS:
        (root / "a" / w).mkdir(parents=True)
    img(root / "a" / IMAGENET_A_WNIDS[0] / "a.jpg")
    for w in IMAGENET_O_WNIDS:  # ImageNet-O as released: 200 folders named by ImageNet-1k wnids
        (root / "o" / w).mkdir(parents=True)
    img(root / "o" / IMAGENET_O_WNIDS[3] / "o.jpg")
    return {"imagenet": "val", "imagenet-c": "c", "imagenet-a": "a", "imagenet-o": "o"}


def test_imagenet_protocol_on_disk_layouts(tmp_path, capsys):
    roots = _imagenet_like(tmp_path)
    suite = tmp_path / "inet.toml"
    suite.write_text('name = "inet"\n[defaults]\ndataset = "imagenet"\nbatch_size = 2\n'
                     '[[evaluation]]\nkind = "clean"\n'
                     '[[evaluation]]\nkind = "corruption"\nsource = "imagenet-c"\ncorruptions = ["gaussian_noise"]\n'
                     'severities = [3]\n'
                     '[[evaluation]]\nkind = "shift"\ndataset = "imagenet-a"\n'
                     '[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\n')
    args = ["run", "--suite", str(suite), "--model", "symvit_tiny_patch16_224", "--model-arg", "img_size=64",
            "--out", str(tmp_path / "out"), "--no-progress"]
    for name, sub in roots.items():
        args += ["--data-root", f"{name}={tmp_path / sub}"]
    assert main(args) == 0
    evals = pd.read_csv(tmp_path / "out" / "results" / "evaluations.csv")
    assert set(evals["kind"]) == {"clean", "corruption", "shift", "ood"}
    samples = pd.read_csv(tmp_path / "out" / "results" / "samples.csv")
    shift = samples[samples["eval_key"].isin(evals[evals["kind"] == "shift"]["eval_key"])]
    from robustbench_rpc.data.imagenet_classes import IMAGENET_A_INDICES

    assert set(shift["pred"]) <= set(IMAGENET_A_INDICES)  # argmax restricted to the 200 ImageNet-A classes
    assert "imagenet-c (files on disk)" in (tmp_path / "out" / "tables" / "corruptions_imagenet_c.md").read_text()
    # a missing root is named before any compute
    assert main(args[:-2] + ["--data-root", f"imagenet-a={tmp_path / 'nope'}", "--out", str(tmp_path / "o2")]) == 2
    # an unreadable image: an error naming the file, or skipped and counted
    from robustbench_rpc.data.imagenet_classes import IMAGENET_WNIDS

    bad = tmp_path / "val" / IMAGENET_WNIDS[5] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    capsys.readouterr()
    args3 = [a if a != str(tmp_path / "out") else str(tmp_path / "o3") for a in args]
    assert main(args3) == 2
    assert "broken.JPEG" in capsys.readouterr().err
    args4 = [a if a != str(tmp_path / "out") else str(tmp_path / "o4") for a in args] + ["--skip-unreadable"]
    assert main(args4) == 0
    evals = pd.read_csv(tmp_path / "o4" / "results" / "evaluations.csv")
    assert json.loads(evals[evals["kind"] == "clean"]["params"].iloc[0])["skipped_unreadable"] == 1


def test_models_with_different_input_sizes_are_refused(tmp_path, capsys):
    rc = main(["run", "--model", "symvit_micro_patch4_32", "--model", "symvit_tiny_patch16_224",
               "--out", str(tmp_path / "m")])
    assert rc == 2
    assert "must share an input size" in capsys.readouterr().err


def test_models_after_the_first_read_its_cached_batches_and_match_a_run_of_their_own(full_run, suite_file,
                                                                                       tmp_path):
    """The batch cache (data.pool.BatchCache) shares the first model's corrupted images with the second;
    the second model's rows are those of a run that computed every image itself."""
    out = tmp_path / "alone"
    assert main(["run", "--suite", str(suite_file), "--model", "rpc_symvit_micro_patch4_32:packaged",
                 "--out", str(out), "--no-progress", "--no-report"]) == 0
    cols = ["eval_key", "sample_id", "pred", "correct1", "correct5", "confidence"]

    def rows(folder):
        with sqlite3.connect(folder / "results.sqlite") as con:
            key = con.execute("select model_key from models where info_json like '%rpc_symvit_micro%'").fetchone()[0]
            return pd.read_sql(f"select {', '.join(cols)} from samples where model_key = ?", con, params=(key,))

    both, alone = (rows(f).sort_values(cols[:2]).reset_index(drop=True) for f in (full_run, out))
    assert len(alone) == len(both) > 0
    pd.testing.assert_frame_equal(both, alone, check_exact=True)
