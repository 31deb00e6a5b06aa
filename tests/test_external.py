"""External evaluations: a set saved here and handed back gives exactly the stored robust accuracy (per sample);
RobustBench's .pt, our .safetensors and PNG folders are read; faults (one step outside the budget, a wrong shape,
missing ids, values outside [0, 1]) are refused in one line before compute; the suite kind stores the same."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robustbench_rpc.cli.commands import main
from robustbench_rpc.store.adversarial import encode
from robustbench_rpc.store.results import ResultsStore
from test_adversarial_save import CLEAN, _suite, _text, saved_run
from tiny_runs import run

MODEL = "symvit_micro_patch4_32:packaged"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    return saved_run(tmp_path_factory.mktemp("ext"))


def _export(run: Path, dest: Path, *what: str) -> Path:
    assert main(["export-adversarial", str(run), "--model", "symvit_micro_patch4_32", *what, "--out", str(dest)]) == 0
    return dest


def _external(adv: Path, out: Path, *extra: str) -> int:
    return main(["evaluate-external", "--model", MODEL, "--adversarial", str(adv), "--dataset", "digits32",
                 "--limit", "16", "--norm", "Linf", "--eps", "8/255", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--no-report", *extra])


def _rows(out: Path, kind: str, name: str | None = None):
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        ev = s.evaluations()
        ek = ev.loc[(ev["kind"] == kind) & ((ev["name"] == name) if name else True), "eval_key"].iloc[0]
        return s.samples(eval_key=ek).set_index("sample_id"), s.evaluation_info(ek)


def _clean_images() -> torch.Tensor:
    from robustbench_rpc.data import subsets
    from robustbench_rpc.data.resolve import get_dataset

    ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
    return torch.stack([ds[i][0] for i in subsets.stratified_indices(subsets.labels_of(ds), 16)])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_saved_set_handed_back_gives_exactly_the_stored_robust_accuracy(saved, tmp_path, capsys, suffix):
    adv = _export(saved, tmp_path / f"pgd{suffix}", "--evaluation", "attack pgd eps=8/255 steps=2")
    capsys.readouterr()
    assert _external(adv, tmp_path / "ext") == 0
    printed = capsys.readouterr().out
    stored, _ = _rows(saved, "attack", "pgd")
    ext, info = _rows(tmp_path / "ext", "external")
    assert list(ext.index) == list(stored.index)
    for col in ("correct1", "pred", "clean_correct1", "linf"):
        assert ext[col].tolist() == stored[col].tolist(), col
    acc = 100 * stored["correct1"].mean()
    assert f"external robust accuracy {acc:.2f}%" in printed
    # how the store marks it (the leaderboard reads these keys)
    assert info["kind"] == "external" and info["params"]["external"] is True
    assert info["params"]["adversarial_sha256"] == hashlib.sha256(adv.read_bytes()).hexdigest()
    assert info["params"]["adversarial_format"] == ("robustbench-pt" if suffix == ".pt" else "safetensors")


def test_the_worst_case_set_gives_the_stored_worst_case_per_sample(saved, tmp_path):
    adv = _export(saved, tmp_path / "worst.safetensors", "--worst-case", "8/255")
    assert _external(adv, tmp_path / "ext") == 0
    fgsm, _ = _rows(saved, "attack", "fgsm")
    pgd, _ = _rows(saved, "attack", "pgd")
    ext, _ = _rows(tmp_path / "ext", "external")
    assert ext["correct1"].tolist() == (fgsm["correct1"] & pgd["correct1"]).tolist()


def test_a_png_folder_named_by_id_is_read_with_its_8_bit_rounding_allowed(saved, tmp_path):
    adv = _export(saved, tmp_path / "pngs", "--evaluation", "attack fgsm eps=8/255")
    assert sorted(p.stem for p in adv.glob("*.png")) == sorted(str(i) for i in _rows(saved, "attack", "fgsm")[0].index)
    assert _external(adv, tmp_path / "ext") == 0
    ext, info = _rows(tmp_path / "ext", "external")
    assert len(ext) == 16 and info["params"]["adversarial_format"] == "png-folder"
    assert info["params"]["quantization_tolerance"] == pytest.approx(0.5 / 255)


def _refused(capsys, adv: Path, out: Path, *words: str) -> None:
    capsys.readouterr()
    assert _external(adv, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "nothing was evaluated" in err or "holds a tensor of shape" in err, err
    for w in words:
        assert w in err, err
    assert not (out / "results.sqlite").exists()  # refused before the store, before any compute


def test_faults_are_refused_in_one_line_before_compute(saved, tmp_path, capsys):
    x = torch.load(_export(saved, tmp_path / "pgd.pt", "--evaluation", "attack pgd eps=8/255 steps=2"),
                   weights_only=True)
    clean = _clean_images()
    over = x.clone()
    c, h, w = (clean[3] < 0.5).nonzero()[0].tolist()
    over[3, c, h, w] = clean[3, c, h, w] + 9 / 255  # one 8-bit step past 8/255, on one value of one image
    torch.save(over, tmp_path / "over.pt")
    _refused(capsys, tmp_path / "over.pt", tmp_path / "o1", "1 fault(s) in 16 images", "exceed Linf eps=8/255",
             "worst excess 0.00392 = 1/255")
    torch.save(x[:, :, :31, :31].clone(), tmp_path / "shape.pt")
    _refused(capsys, tmp_path / "shape.pt", tmp_path / "o2", "have shape (3, 31, 31)", "(3, 32, 32)")
    torch.save(x[:15].clone(), tmp_path / "short.pt")
    _refused(capsys, tmp_path / "short.pt", tmp_path / "o3", "shape (15, 3, 32, 32)", "the evaluated set has 16")
    ids = _rows(saved, "attack", "pgd")[0].index.tolist()
    (tmp_path / "missing.safetensors").write_bytes(encode(x[1:], ids[1:], {}))
    _refused(capsys, tmp_path / "missing.safetensors", tmp_path / "o4",
             f"1 of the 16 evaluated sample ids have no image", f"[{ids[0]}]")
    box = x.clone()
    box[5, 0, 0, 0] = 1.5
    torch.save(box, tmp_path / "box.pt")
    _refused(capsys, tmp_path / "box.pt", tmp_path / "o5", "leave [0, 1]", "max 1.5")


def test_external_is_a_suite_kind_and_the_report_shows_it(saved, tmp_path):
    adv = _export(saved, tmp_path / "pgd.pt", "--evaluation", "attack pgd eps=8/255 steps=2")
    text = _text(CLEAN, dict(kind="external", adversarial=str(adv), norm="Linf", eps="8/255"))
    out = tmp_path / "suite_run"
    assert run(_suite(tmp_path, text), out) == 0
    ext, _ = _rows(out, "external")
    stored, _ = _rows(saved, "attack", "pgd")
    assert ext["correct1"].tolist() == stored["correct1"].tolist()
    report = (out / "report.md").read_text()
    assert "External evaluations (given adversarial sets)" in report
    assert f"{100 * stored['correct1'].mean():.1f} [" in report.split("## External evaluations")[1]


def test_bad_flags_are_one_line_naming_the_flag(saved, tmp_path, capsys):
    adv = _export(saved, tmp_path / "pgd.pt", "--evaluation", "attack pgd eps=8/255 steps=2")
    for flags, words in (([f"--adversarial={tmp_path / 'missing.pt'}"], "--adversarial"),
                         (["--eps=8"], "did you mean '8/255'"), (["--norm=L7"], "--norm")):
        capsys.readouterr()
        argv = ["evaluate-external", "--model", MODEL, "--adversarial", str(adv), "--dataset", "digits32",
                "--limit", "16", "--eps", "8/255", "--out", str(tmp_path / "o"), *flags]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o").exists()
