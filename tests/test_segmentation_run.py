"""Segmentation suites through the CLI: per-image counts in the store, resume, verify, export, the report's numbers
recomputed from the store, one-line refusals, and paper-seg on an ADE20K-layout tree the test builds."""
from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robustbench_rpc.cli import main
from robustbench_rpc.metrics_seg import seg_bootstrap, seg_metrics, worst_case_areas
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.store.seg_areas import read_areas
from tiny_runs import suite_text

SUITE = suite_text(dict(kind="clean"), dict(kind="corruption", corruptions=["gaussian_noise"], severities=[1, 5]),
                   dict(kind="attack", attacks=["pixel-pgd", "segpgd", "cospgd"], eps=["4/255"], steps=1),
                   name="tiny-seg", version=None, top={"task": "segmentation"}, dataset="digits-seg64",
                   models=["segmenter_linear_symvit_micro", "segmenter_linear_rpc_symvit_micro"], batch_size=2, limit=4,
                   short_side=0)


def _suite(tmp_path: Path, text: str = SUITE) -> str:
    p = tmp_path / "tiny-seg.toml"
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segrun")
    out = tmp / "out"
    assert main(["run", "--suite", _suite(tmp), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return tmp, out


def _store(out: Path) -> ResultsStore:
    return ResultsStore(out / "results.sqlite", readonly=True)


def test_every_image_of_every_evaluation_has_its_counts(seg_run):
    _, out = seg_run
    with _store(out) as store:
        areas = read_areas(store)
        evals = store.evaluations()
        assert len(store.models()) == 2 and len(evals) == 1 + 2 + 3
        assert len(areas) == 2 * 6
        for (m, e), (ids, a) in areas.items():
            assert ids == [0, 66, 133, 199]  # 4 images spread evenly over the 200 test canvases
            assert a.shape == (4, 4, 11)
            inter, union, pred, label = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
            assert (union == pred + label - inter).all() and (pred.sum(1) == 64 * 64).all()
        attacks = evals[evals["kind"] == "attack"]
        s = store.samples()
        adv = s[s["eval_key"].isin(attacks["eval_key"])]
        assert (adv["linf"] <= 4 / 255 + 1e-6).all() and (adv["linf"] > 0).all()  # within budget on every image


def test_report_recomputes_every_number_from_the_store(seg_run, capsys):
    tmp, out = seg_run
    table = pd.read_csv(out / "seg_table.csv")
    again = tmp / "again"
    assert main(["report", str(out), "--out", str(again)]) == 0
    assert pd.read_csv(again / "seg_table.csv").equals(table)
    assert (again / "seg_curves.png").is_file() and (again / "seg_examples.png").is_file()
    assert "clean" in (again / "index.html").read_text()
    with _store(out) as store:
        areas = read_areas(store)
        evals = {k: store.evaluation_info(k) for k in store.evaluations()["eval_key"]}
    for (m, e), (_, a) in areas.items():
        info = evals[e]
        if info["kind"] != "clean":
            continue
        row = table[(table["model_key"] == m) & (table["column"] == "clean")].set_index("metric")
        for metric in ("aAcc", "mAcc", "mIoU"):
            assert row.loc[metric, "value"] == pytest.approx(seg_metrics(a)[metric], abs=1e-12)
        assert tuple(row.loc["mIoU", ["value", "lo", "hi"]]) == pytest.approx(seg_bootstrap(a, "mIoU", seed=0))
    m = next(iter({m for m, _ in areas}))
    atk = {evals[e]["params"]["attack"]: a for (mm, e), (_, a) in areas.items() if mm == m
           and evals[e]["kind"] == "attack"}
    worst, _ = worst_case_areas({k: atk[k] for k in ("pixel-pgd", "segpgd", "cospgd")})
    pairs = pd.read_csv(again / "seg_attack_pairs.csv")
    assert pd.read_csv(out / "seg_attack_pairs.csv").equals(pairs) and len(pairs) == 2 * 2
    from robustbench_rpc.metrics_seg import paired_seg_bootstrap

    with _store(out) as store:
        model_name = store.model_info(m)["name"]
    got = pairs[(pairs["model"] == model_name) & (pairs["attack"] == "segpgd")].iloc[0]
    want = paired_seg_bootstrap(atk["segpgd"], atk["pixel-pgd"], "mIoU", seed=0)
    assert (got["mIoU_minus_pgd_ce"], got["lo"], got["hi"]) == pytest.approx(want)
    row = table[(table["model_key"] == m) & (table["column"] == "worst case Linf 4/255")].set_index("metric")
    assert row.loc["mIoU", "value"] == pytest.approx(seg_metrics(worst)["mIoU"], abs=1e-12)
    assert row.loc["aAcc", "value"] <= min(seg_metrics(a)["aAcc"] for a in atk.values()) + 1e-12


def test_a_rerun_resumes_and_recomputes_a_unit_that_lost_its_counts(seg_run, tmp_path):
    tmp, out = seg_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    con = sqlite3.connect(copy / "results.sqlite")
    before = dict(((m, e, u), t) for m, e, u, t in con.execute("SELECT model_key, eval_key, unit, finished_at "
                                                               "FROM units"))
    m, e = con.execute("SELECT model_key, eval_key FROM seg_areas LIMIT 1").fetchone()
    con.execute("DELETE FROM seg_areas WHERE model_key = ? AND eval_key = ? AND unit = 1", (m, e))
    con.commit()
    con.close()
    assert main(["run", "--suite", _suite(tmp), "--out", str(copy), "--device", "cpu", "--no-progress",
                 "--no-report"]) == 0
    con = sqlite3.connect(copy / "results.sqlite")
    after = dict(((mm, ee, u), t) for mm, ee, u, t in con.execute("SELECT model_key, eval_key, unit, finished_at "
                                                                  "FROM units"))
    con.close()
    assert set(after) == set(before)
    assert [k for k in after if after[k] != before[k]] == [(m, e, 1)]  # only the damaged unit was recomputed
    with _store(copy) as s_copy, _store(out) as s_out:
        assert all(np.array_equal(a[1], read_areas(s_out)[k][1]) for k, a in read_areas(s_copy).items())


def test_verify_compares_the_counts_and_export_writes_them(seg_run, tmp_path, capsys):
    tmp, out = seg_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["verify", str(out), str(copy)]) == 0
    con = sqlite3.connect(copy / "results.sqlite")
    m, e, i, text = con.execute("SELECT model_key, eval_key, sample_id, areas_json FROM seg_areas LIMIT 1").fetchone()
    a = np.asarray(eval(text))
    a[0, 0] += 1
    con.execute("UPDATE seg_areas SET areas_json = ? WHERE model_key = ? AND eval_key = ? AND sample_id = ?",
                (str(a.tolist()).replace(" ", ""), m, e, i))
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["verify", str(out), str(copy)]) == 1
    text = capsys.readouterr().out
    assert f"differ in their segmentation counts, e.g. sample {i} class 0" in text
    with _store(out) as store:
        paths = store.export(tmp_path / "export", formats=("csv",))
    long = pd.read_csv(paths["seg_areas.csv"])
    assert len(long) == 2 * 6 * 4 * 11
    assert (long["union"] == long["pred"] + long["label"] - long["intersect"]).all()


def test_a_unit_is_written_whole_or_not_at_all(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m", {"name": "m"})
    store.register_evaluation("e", {"kind": "clean", "name": "clean", "dataset": "d", "n_samples": 2})
    rows = {"sample_id": [0, 1], "label": [-1, -1], "pred": [0, 0], "correct1": [0, 0], "correct5": [0, 0],
            "confidence": [0.5, 0.5]}
    with pytest.raises(ValueError, match="segmentation counts given for samples"):
        store.write_unit("m", "e", 0, rows, seg_areas={0: np.zeros((4, 3), int)})  # one image's counts missing
    assert store.done_units("m", "e") == set()  # the transaction rolled back: no rows, no units row
    assert store.write_unit("m", "e", 0, rows, seg_areas={0: np.zeros((4, 3), int), 1: np.ones((4, 3), int)})
    assert not store.write_unit("m", "e", 0, rows, seg_areas={0: np.zeros((4, 3), int), 1: np.ones((4, 3), int)})
    store.close()


def test_a_classification_model_in_a_segmentation_suite_is_one_line(tmp_path, capsys):
    code = main(["run", "--suite", _suite(tmp_path), "--model", "symvit_micro_patch4_32", "--out",
                 str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model symvit_micro_patch4_32 is a classification model")
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_packaged_segmentation_suites_parse():
    from robustbench_rpc.evaluation.seg_plan import evaluations, read_suite

    for name, n in (("quick-seg", 1 + 15 + 3), ("paper-seg", 1 + 75 + 3)):
        suite = read_suite(name)
        assert suite is not None and len(evaluations(suite, name)) == n


def _ade_tree(root: Path, sizes) -> None:
    rng = np.random.default_rng(0)
    for split in ("validation",):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for k, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "images" / split / f"ADE_val_{k:08d}.jpg")
            Image.fromarray(rng.integers(0, 151, (h, w), dtype=np.uint8)).save(
                root / "annotations" / split / f"ADE_val_{k:08d}.png")


def test_paper_seg_runs_a_few_ade20k_images_with_sliding_windows_at_512(tmp_path):
    from robustbench_rpc.evaluation.seg_plan import SUITES_DIR

    root = tmp_path / "ADEChallengeData2016"
    _ade_tree(root, [(40, 56), (48, 32)])
    suite = tomllib.loads((SUITES_DIR / "paper-seg.toml").read_text())
    assert suite["defaults"]["short_side"] == 512
    # the packaged defaults (512 px, stride = window); the evaluations cut to clean + one corruption for speed
    text = (SUITES_DIR / "paper-seg.toml").read_text().split("[[evaluation]]")[0]
    text += '[[evaluation]]\nkind = "clean"\n[[evaluation]]\nkind = "corruption"\ncorruptions = ["fog"]\n' \
            'severities = [3]\n'
    p = tmp_path / "paper-seg-cut.toml"
    p.write_text(text)
    out = tmp_path / "out"
    # a 512-window Segmenter with a small encoder (depth/width as model arguments) keeps the CPU time short
    code = main(["run", "--suite", str(p), "--data-root", f"ade20k={root}", "--model", "segmenter_linear_symvit_tiny",
                 "--model-arg", "depth=1", "--model-arg", "embed_dim=48", "--model-arg", "num_heads=1",
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    with _store(out) as store:
        areas = read_areas(store)
    assert len(areas) == 2
    for _, (ids, a) in areas.items():
        assert a.shape == (2, 4, 150)
        assert (a[:, 3].sum(1) > 0).all() and (a[:, 2].sum(1) == a[:, 3].sum(1)).all()  # every scored pixel predicted
    # label 0 ("other") is ignored (reduce_zero_label): scored pixels = the annotation's non-zero pixels
    ann = [np.asarray(Image.open(f)) for f in sorted((root / "annotations" / "validation").glob("*.png"))]
    first = next(iter(areas.values()))[1]
    assert [int(x[3].sum()) for x in first] == [int((m != 0).sum()) for m in ann]


def test_paper_seg_without_its_folder_is_one_line(tmp_path, capsys):
    code = main(["run", "--suite", "paper-seg", "--model", "segmenter_linear_symvit_tiny", "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--data-root ade20k=PATH" in err


def test_leaderboard_puts_segmentation_runs_on_boards_of_their_own(seg_run, tmp_path, capsys):
    _, out = seg_run
    board = tmp_path / "board"
    assert main(["leaderboard", str(out), str(out), "--out", str(board)]) == 0
    text = (board / "segmentation.md").read_text()
    assert text.count("## digits-seg64") == 1 and "(runs disagree)" not in text
    assert "| 1 | segmenter_linear" in text and "| 2 | segmenter_linear" in text
    csv = pd.read_csv(board / "segmentation.csv")
    table = pd.read_csv(out / "seg_table.csv")
    assert sorted(csv["value"]) == pytest.approx(sorted(table["value"]))  # the report's numbers, not top-1
    assert not (board / "index.html").exists()  # no classification board made of per-pixel runs
