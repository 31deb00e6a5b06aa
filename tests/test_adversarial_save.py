"""Saved adversarial images: written per unit with the run, lossless, listed in the manifest, kept whole on
resume (kill -9 included), compared by verify (a tampered image is named), exported in RobustBench's layout."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from robustbench_rpc.cli.commands import main
from robustbench_rpc.store.adversarial import read_set, sample_digest, unit_files
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import copy_run, run, slow_plugin, sql, suite, suite_text

CLEAN = dict(kind="clean")
FGSM = dict(kind="attack", attack="fgsm", eps=["8/255"])
PGD = dict(kind="attack", attack="pgd", eps=["8/255"], steps=2)
UNITS = 4  # 16 images / 4 per unit


def _text(*evaluations: dict, limit: int = 16) -> str:
    return suite_text(*evaluations, name="tiny-adv", batch_size=4, seed=3, limit=limit)


SUITE = _text(CLEAN, FGSM, PGD)


def _suite(folder: Path, text: str = SUITE) -> Path:
    return suite(folder, text, "tiny_adv.toml")


def _run(suite_file: Path, out: Path, *extra: str) -> int:
    return run(suite_file, out, "--no-report", *extra)


def saved_run(root: Path) -> Path:
    """A run of ``SUITE`` under ``root`` that kept its adversarial images."""
    out = root / "run"
    assert _run(_suite(root), out, "--save-adversarial") == 0
    return out


def _attack_keys(out: Path) -> dict[str, str]:
    """{attack name: eval key} of a run."""
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        ev = s.evaluations()
        return {r["name"]: r["eval_key"] for _, r in ev.iterrows() if r["kind"] == "attack"}


def _model_key(out: Path) -> str:
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        return str(s.models()["model_key"].iloc[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    return saved_run(tmp_path_factory.mktemp("adv"))


def test_every_attack_unit_is_saved_losslessly_with_its_ids(saved):
    mk = _model_key(saved)
    with ResultsStore(saved / "results.sqlite", readonly=True) as store:
        for name, ek in _attack_keys(saved).items():
            files = unit_files(saved, mk, ek)
            assert sorted(files) == list(range(UNITS)), name
            rows = store.samples(mk, ek)
            ids = []
            for u, f in files.items():
                sids, images, header = read_set(f)
                assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)
                assert sids == rows.loc[rows["unit"] == u, "sample_id"].tolist()
                assert json.loads(header["digests"]) == [sample_digest(im) for im in images]
                ids += sids
            assert ids == rows["sample_id"].tolist()  # every sample once, in the dataset's order
            # lossless: the stored Linf distance is the one of the saved float32 images to the clean images
            from robustbench_rpc.data.resolve import get_dataset

            ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
            by_id = {int(ds[i][2]): ds[i][0] for i in range(len(ds))}
            _, images = zip(*[(u, read_set(f)[1]) for u, f in sorted(files.items())])
            x_adv = torch.cat(images)
            clean = torch.stack([by_id[i] for i in ids])
            linf = (x_adv.double() - clean.double()).abs().flatten(1).amax(1)
            assert torch.allclose(linf.float(), torch.tensor(rows["linf"].to_numpy(), dtype=torch.float32), atol=0)


def test_the_manifest_lists_each_unit_file_with_its_sha256(saved):
    from robustbench_rpc.models.checkpoint import sha256_of

    listed = json.loads((saved / "manifest.json").read_text())["adversarial"]
    assert len(listed) == 2 * UNITS
    for e in listed:
        assert sha256_of(saved / e["file"]) == e["sha256"] and e["n"] == 4
        assert e["model"] == "symvit_micro_patch4_32" and e["evaluation"].startswith("attack ")


def test_a_suite_key_saves_one_evaluation_and_a_bad_value_is_one_line(tmp_path, capsys, one_thread):
    text = _text(CLEAN, FGSM, dict(PGD, save_adversarial=True))
    out = tmp_path / "one"
    assert _run(_suite(tmp_path, text), out) == 0
    mk, keys = _model_key(out), _attack_keys(out)
    assert unit_files(out, mk, keys["pgd"]) and not unit_files(out, mk, keys["fgsm"])
    capsys.readouterr()
    bad = _text(CLEAN, FGSM, dict(PGD, save_adversarial="yes"))
    assert _run(_suite(tmp_path / "bad", bad), tmp_path / "bad_out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "save_adversarial must be true or false" in err


def test_resume_rewrites_a_unit_whose_rows_or_images_are_missing(saved, tmp_path, capsys):
    """The two states a kill -9 can leave between a unit's image file and its rows, made on purpose."""
    out = copy_run(saved, tmp_path / "resumed")
    mk, keys = _model_key(out), _attack_keys(out)
    unit_files(out, mk, keys["pgd"])[2].unlink()  # rows stored, images lost: recomputed, same rows
    sql(out, f"DELETE FROM samples WHERE eval_key = '{keys['fgsm']}' AND unit = 1; "
             f"DELETE FROM units WHERE eval_key = '{keys['fgsm']}' AND unit = 1")  # image written, rows not
    capsys.readouterr()
    assert _run(_suite(tmp_path), out, "--save-adversarial") == 0
    for ek in keys.values():
        ids = [i for f in unit_files(out, mk, ek).values() for i in read_set(f)[0]]
        assert len(ids) == len(set(ids)) == 16
    assert main(["verify", str(saved), str(out)]) in (0, 1)
    text = capsys.readouterr().out
    assert "adversarial images: 8 unit file(s) in both runs, 8 equal" in text
    assert "DIFF" not in text


def test_verify_names_the_model_evaluation_and_sample_of_a_tampered_image(saved, tmp_path, capsys):
    other = copy_run(saved, tmp_path / "tampered")
    mk, keys = _model_key(other), _attack_keys(other)
    f = unit_files(other, mk, keys["pgd"])[1]
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    tensors = load_file(f)
    victim = int(tensors["sample_ids"][2])
    tensors["images"][2, 0, 5, 5] += 1 / 255  # one value of one image, the header left as written
    save_file(tensors, f, metadata=meta)
    capsys.readouterr()
    assert main(["verify", str(saved), str(other)]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("DIFF")]
    assert any("run b" in ln and "symvit_micro_patch4_32" in ln and "attack pgd" in ln and f"sample {victim}" in ln
               for ln in lines), lines
    assert any(f"sample {victim} (max |diff| 0.00392)" in ln for ln in lines), lines


def test_export_pt_is_one_tensor_in_the_order_of_the_evaluated_ids(saved, tmp_path, capsys):
    out = tmp_path / "pgd.pt"
    assert main(["export-adversarial", str(saved), "--model", "symvit_micro_patch4_32", "--evaluation",
                 "attack pgd eps=8/255 steps=2", "--out", str(out)]) == 0
    x = torch.load(out, weights_only=True)
    mk, keys = _model_key(saved), _attack_keys(saved)
    parts = [read_set(f)[1] for _, f in sorted(unit_files(saved, mk, keys["pgd"]).items())]
    assert isinstance(x, torch.Tensor) and x.shape == (16, 3, 32, 32) and torch.equal(x, torch.cat(parts))
    capsys.readouterr()
    assert main(["export-adversarial", str(saved), "--model", "symvit_micro_patch4_32", "--evaluation", "attack cw",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "saved: attack " in err


def test_the_disk_needed_is_printed_and_a_folder_without_room_is_refused(tmp_path, capsys, monkeypatch, one_thread):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 6, 10 ** 6 - 900, 900))
    out = tmp_path / "full"
    assert _run(_suite(tmp_path), out, "--save-adversarial") == 2
    cap = capsys.readouterr()
    assert "adversarial images: 2 attack evaluation(s) x 1 model(s) take" in cap.out
    assert cap.err.count("\n") == 1 and "need" in cap.err and "900 B free" in cap.err
    assert not (out / "results.sqlite").exists()  # refused before the store, before any compute


def test_kill_9_then_resume_neither_loses_nor_duplicates_a_saved_image(tmp_path, capsys, monkeypatch, one_thread):
    plugin = tmp_path / "slow_adv_plugin.py"
    plugin.write_text(slow_plugin("slow_adv_model", 'float(os.environ.get("SLOW_SECONDS", "0"))'))
    suite = _suite(tmp_path, _text(CLEAN, FGSM, dict(PGD, steps=1), limit=40))
    args = ["--plugin", str(plugin), "run", "--suite", str(suite), "--model", "slow_adv_model", "--no-report",
            "--no-progress", "--device", "cpu", "--save-adversarial"]
    killed = tmp_path / "killed"
    env = {**os.environ, "SLOW_SECONDS": "0.15", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustbench_rpc", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    start, seen = time.time(), 0
    while time.time() < start + 120 and proc.poll() is None:
        try:
            with sqlite3.connect(killed / "results.sqlite", timeout=1) as con:
                seen = con.execute("SELECT COUNT(*) FROM units u JOIN evaluations e USING (eval_key) "
                                   "WHERE json_extract(e.info_json, '$.kind') = 'attack'").fetchone()[0]
        except sqlite3.Error:
            seen = 0
        if seen >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    monkeypatch.setenv("SLOW_SECONDS", "0")
    assert main(args + ["--out", str(killed)]) == 0  # resume
    reference = tmp_path / "reference"
    assert main(args + ["--out", str(reference)]) == 0
    mk, keys = _model_key(killed), _attack_keys(killed)
    for ek in keys.values():
        files = unit_files(killed, mk, ek)
        ids = [i for f in files.values() for i in read_set(f)[0]]
        assert sorted(files) == list(range(10)) and len(ids) == len(set(ids)) == 40
    assert not list((killed / "adversarial").rglob("*.tmp"))
    capsys.readouterr()
    main(["verify", str(reference), str(killed)])
    text = capsys.readouterr().out
    assert "adversarial images: 20 unit file(s) in both runs, 20 equal; 0 in one run only" in text
    assert "DIFF" not in text


def test_a_run_that_kept_no_images_is_compared_on_its_outcomes_only(saved, tmp_path, capsys, one_thread):
    plain = tmp_path / "plain"
    assert _run(_suite(tmp_path), plain) == 0
    capsys.readouterr()
    main(["verify", str(saved), str(plain)])
    text = capsys.readouterr().out
    assert "INFO: adversarial images kept by run a only (8 unit file(s)): not compared" in text
    assert "DIFF" not in text  # the same outcomes, sample by sample
