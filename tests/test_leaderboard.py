"""`robustbench-rpc leaderboard`: several tiny runs (digits32, shipped micro models, --limit 16) with overlapping
and non-overlapping models and deliberately different protocols, merged into boards through the CLI; published
RobustBench model_info rows in, model_info JSON out; the page in a real browser (skipped without Chromium)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_rpc.cli import commands as cli
from robustbench_rpc import metrics
from robustbench_rpc.data import robustbench as rbdata
from robustbench_rpc.data.subsets import subset_fingerprint
from robustbench_rpc.leaderboard import build_leaderboard
from robustbench_rpc.leaderboard.fingerprint import differences, is_reduced_autoattack, selection_of
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import suite_text

SYM, RPC, VIT = "symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32", "vit_micro_patch4_32"
_CLEAN = (dict(kind="clean"),
          dict(kind="corruption", source="on-the-fly", corruptions=["gaussian_noise"], severities=[3]))
CLEAN_SUITE = suite_text(*_CLEAN, name="lb-clean", version=None, models=None, batch_size=16)
ATTACK_SUITE = suite_text(*_CLEAN, dict(kind="attack", attack="autoattack", norm="Linf", eps=["4/255"],
                                        version="custom", attacks_to_run=["apgd-ce"], n_iter=2),
                          name="lb-attack", version=None, models=None, batch_size=16)


def _run(tmp: Path, name: str, suite: str, models: list[str], *extra: str) -> Path:
    (tmp / f"{name}.toml").write_text(suite)
    out = tmp / name
    argv = ["run", "--suite", str(tmp / f"{name}.toml"), "--out", str(out), "--device", "cpu", "--no-progress",
            "--no-report", "--reference", models[0], *extra]
    for m in models:
        argv += ["--model", f"{m}:packaged"]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """a: SymViT + RPC; b: SymViT again (same images, same protocol) + ViT; c: SymViT under bf16 autocast (a
    different protocol); d: SymViT on 32 images (other images); e: RPC with a reduced AutoAttack."""
    tmp = tmp_path_factory.mktemp("lb")
    return {
        "a": _run(tmp, "a", CLEAN_SUITE, [SYM, RPC], "--limit", "16"),
        "b": _run(tmp, "b", CLEAN_SUITE, [SYM, VIT], "--limit", "16"),
        "c": _run(tmp, "c", CLEAN_SUITE, [SYM], "--limit", "16", "--amp", "bf16"),
        "d": _run(tmp, "d", CLEAN_SUITE, [SYM], "--limit", "32"),
        "e": _run(tmp, "e", ATTACK_SUITE, [RPC], "--limit", "16"),
    }


def _board(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "leaderboard.csv")


def test_runs_merge_into_boards_split_by_protocol(runs, tmp_path, capsys):
    out = tmp_path / "board"
    assert cli.main(["leaderboard", *(str(runs[k]) for k in "abcde"), "--out", str(out), "--rank-by", "clean"]) == 0
    printed = capsys.readouterr().out
    assert "board 1" in printed and "board 2" in printed and str(out / "index.html") in printed
    df = _board(out)
    assert set(df["board"]) == {1, 2}  # 16 images vs 32 images: never in one column
    b1, b2 = df[df["board"] == 1], df[df["board"] == 2]
    assert set(b1["model"]) == {SYM, RPC, VIT} and set(b2["model"]) == {SYM}
    # SymViT in runs a and b: identical outcomes, one row, both runs named
    sym_clean = b1[(b1["model"] == SYM) & b1["column"].str.startswith("clean (digits32) [A]")]
    assert len(sym_clean) == 1 and {Path(r).name for r in sym_clean.iloc[0]["runs"].split()} == {"a", "b"}
    # bf16 (run c) is another protocol: its own column, saying which field differs
    labels = sorted(set(b1["column"]))
    assert "clean (digits32) [A]" in labels and "clean (digits32) [B]" in labels
    md = (out / "leaderboard.md").read_text()
    assert "differs from [A] in: precision (fp32 vs bf16)" in md
    assert "a separate board" in md and "samples.selection (stratified 16 vs stratified 32)" in md
    # the reduced AutoAttack of run e: its column and the flag on RPC's row
    assert any(c.startswith("AutoAttack (reduced) Linf 4/255") for c in labels)
    assert "reduced AutoAttack" in b1[b1["model"] == RPC]["flags"].iloc[0]
    # ranks by the clean column [A] with intervals; McNemar pairs, Holm-adjusted
    ranked = b1[b1["ranked_by"]]
    assert set(ranked["model"]) == {SYM, RPC, VIT} and ranked["rank"].min() == 1
    assert (ranked["rank_lo"] <= ranked["rank"]).all() and (ranked["rank"] <= ranked["rank_hi"]).all()
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs[pairs["board"] == 1]) == 3 and (pairs["p_holm"] >= pairs["p_value"] - 1e-12).all()
    # the values are the stores': SymViT's clean accuracy on run a
    with ResultsStore(runs["a"] / "results.sqlite", readonly=True) as s:
        agg = s.aggregates()
    keys = {r["model_key"]: r["name"] for r in s_models(runs["a"])}
    sym_key = next(k for k, n in keys.items() if n == SYM)
    expected = agg[(agg["model_key"] == sym_key) & (agg["kind"] == "clean")]["top1"].iloc[0]
    assert sym_clean.iloc[0]["value"] == pytest.approx(expected)
    outcomes = pd.read_csv(out / "outcomes.csv.gz")
    assert {"run", "model_key", "eval_key", "sample_id", "correct1"} <= set(outcomes.columns)


def s_models(run: Path) -> list[dict]:
    with ResultsStore(run / "results.sqlite", readonly=True) as s:
        return s.models().to_dict("records")


def test_one_more_run_updates_the_board_without_rereading(runs, tmp_path):
    out = tmp_path / "board"
    first = build_leaderboard([runs["a"]], out, log=lambda *_: None)
    assert first["read"] and len(_board(out)["model"].unique()) == 2
    moved = tmp_path / "a-moved"  # the first run is no longer where it was: the board keeps its outcomes
    shutil.copytree(runs["a"], moved)
    again = build_leaderboard([runs["b"]], out, log=lambda *_: None)
    assert again["read"] == [str(runs["b"].resolve())] and not again["reused"]
    assert set(_board(out)["model"]) == {SYM, RPC, VIT}
    same = build_leaderboard([runs["a"], runs["b"]], out, log=lambda *_: None)
    assert not same["read"] and len(same["reused"]) == 2  # nothing new: no run read into the board again


def test_same_model_different_outcomes_is_an_error_naming_runs_and_sample(runs, tmp_path, capsys):
    tampered = tmp_path / "a-copy"
    shutil.copytree(runs["a"], tampered)
    con = sqlite3.connect(tampered / "results.sqlite")
    sid = con.execute("SELECT MIN(sample_id) FROM samples").fetchone()[0]
    con.execute("UPDATE samples SET pred = (pred + 1) % 10, correct1 = 1 - correct1 WHERE sample_id = ?", (sid,))
    con.commit()
    con.close()
    code = cli.main(["leaderboard", str(runs["a"]), str(tampered), "--out", str(tmp_path / "board")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(runs["a"].resolve()) in err[0] and str(tampered.resolve()) in err[0] and f"sample {sid}" in err[0]
    assert cli.main(["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "b2")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_stores_are_never_written(runs, tmp_path):
    """Read-only: the database and its write-ahead log keep their bytes (SQLite's -shm index is shared memory
    every reader maps, so it is not compared)."""
    def content():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in runs["a"].iterdir()
                if p.is_file() and not p.name.endswith("-shm")}

    before = content()
    build_leaderboard([runs["a"]], tmp_path / "board", log=lambda *_: None)
    assert content() == before


# ------------------------------------------------------------------------------------- unit level

def test_fingerprint_fields():
    std = {"kind": "attack", "name": "autoattack", "attack.version": "standard", "attack.n_iter": 100}
    assert not is_reduced_autoattack(std)
    assert is_reduced_autoattack({**std, "attack.version": "custom"})
    assert is_reduced_autoattack({**std, "attack.n_iter": 20})
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b (2 vs 3)", "c (unrecorded vs 4)"]
    assert selection_of({"method": "file", "file": "first-10000", "sha256": "x"}, 10000, 10000) == "all"
    assert selection_of({"method": "file", "file": "first-50", "sha256": "abc"}, 10000, 50) == "list sha256:abc"


def test_holm_and_rank_intervals():
    # Holm: p sorted (0.01, 0.02, 0.04) * (3, 2, 1) = (0.03, 0.04, 0.04) with the running maximum
    assert metrics.holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    rng = np.random.default_rng(0)
    strong, weak = (rng.random(400) < 0.9).astype(float), (rng.random(400) < 0.3).astype(float)
    close = (rng.random(400) < 0.31).astype(float)
    assert metrics.bootstrap_rank_intervals(np.stack([strong, weak, close]), n_boot=200) == [(1, 1), (2, 3), (2, 3)]


def _synthetic_imagenet_run(folder: Path, clean_k: int, aa_k: int) -> Path:
    """A store shaped like `run --suite robustbench` on RobustBench's 5,000 ids (written through the store
    API: no ImageNet here), for the published-row and export paths."""
    folder.mkdir()
    entries = rbdata.imagenet_test_ids()
    subset = {"method": "file", "file": rbdata.IMAGENET_SUBSET, "entries": 5000, "sha256": subset_fingerprint(entries)}
    with ResultsStore(folder / "results.sqlite") as s:
        s.set_meta("settings", {"dataset": "imagenet", "subset": subset})
        s.register_model("m1", {"name": "my_vit", "arch": "my_vit", "checkpoint_sha256": "ab" * 32, "kwargs": {},
                                "num_classes": 1000, "mean": [0.5] * 3, "std": [0.5] * 3, "precision": "fp32"})
        common = {"dataset": "imagenet", "n_samples": 5000, "dataset_size": 50000, "subset": subset, "seed": 0}
        s.register_evaluation("clean", {**common, "kind": "clean", "name": "clean", "params": {}})
        s.register_evaluation("aa", {**common, "kind": "attack", "name": "autoattack",
                                     "params": {"norm": "Linf", "eps": 4 / 255, "version": "standard"},
                                     "resolved": {"norm": "Linf", "eps": 4 / 255, "version": "standard", "n_iter": 100}})
        for key, k in (("clean", clean_k), ("aa", aa_k)):
            correct = [1] * k + [0] * (5000 - k)
            s.write_unit("m1", key, 0, {"sample_id": list(range(5000)), "label": [0] * 5000,
                                        "pred": [0 if c else 1 for c in correct], "correct1": correct,
                                        "correct5": correct, "confidence": [0.9] * 5000})
    return folder


def test_published_model_info_rows_join_and_rows_export(tmp_path):
    run = _synthetic_imagenet_run(tmp_path / "rb", clean_k=3896, aa_k=2982)
    pub = tmp_path / "model_info" / "imagenet" / "Linf"
    pub.mkdir(parents=True)
    (pub / "Someone2024Robust.json").write_text(json.dumps({
        "link": "https://example.org", "name": "x", "authors": "y", "additional_data": False,
        "number_forward_passes": 1, "dataset": "imagenet", "venue": "z", "architecture": "ResNet-50",
        "eps": "4/255", "clean_acc": "77.92", "reported": "59.64", "autoattack_acc": "59.64", "footnote": None}))
    out = tmp_path / "board"
    assert cli.main(["leaderboard", str(run), "--out", str(out), "--published", str(tmp_path / "model_info"),
                     "--export-model-info"]) == 0
    df = _board(out)
    assert set(df["board"]) == {1}  # the published row sits on the measured board: same protocol
    aa = df[df["column"] == "AutoAttack standard Linf 4/255"]
    assert set(aa["model"]) == {"my_vit", "Someone2024Robust"}
    pub_row = aa[aa["model"] == "Someone2024Robust"].iloc[0]
    assert pub_row["published"] and pub_row["value"] == pytest.approx(0.5964)
    lo, hi = metrics.wilson_interval(2982, 5000)  # 59.64 % of RobustBench's 5,000: the count is recoverable
    assert pub_row["lo"] == pytest.approx(lo) and pub_row["hi"] == pytest.approx(hi)
    assert "published" in pub_row["flags"]
    assert pd.read_csv(out / "pairs.csv").empty  # no per-sample outcomes for a published row: no McNemar
    exported = json.loads((out / "model_info" / "imagenet" / "Linf" / "my_vit.json").read_text())
    assert exported["clean_acc"] == "77.92" and exported["autoattack_acc"] == "59.64"
    assert exported["eps"] == "4/255" and exported["dataset"] == "imagenet" and exported["architecture"] == "my_vit"
    assert "RobustBench's protocol" in exported["footnote"]
    assert set(exported) >= {"link", "number_forward_passes", "corruptions_acc", "corruptions_mce", "autoattack_acc"}


def test_leaderboard_page_in_a_browser(runs, tmp_path):
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                    None)
    if chromium is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium)")
    out = tmp_path / "board"
    build_leaderboard([runs[k] for k in "abcde"], out, rank_by="clean", log=lambda *_: None)
    page = (out / "index.html").read_text()
    assert "<link" not in page and "src=\"http" not in page  # one self-contained page
    probe = """<script>window.addEventListener('load', () => {
      const t = document.querySelector('table.board'); const th = [...t.tHead.rows[0].cells];
      const model = th.findIndex(h => h.textContent === 'model');
      const col = th.findIndex(h => h.textContent.startsWith('clean (digits32) [A]'));
      const read = () => [...t.tBodies[0].rows].map(r => r.cells[col].dataset.v);
      th[col].click(); const asc = read(); th[col].click(); const desc = read();
      th[model].click(); const names = [...t.tBodies[0].rows].map(r => r.cells[model].textContent);
      const pre = document.createElement('pre'); pre.id = 'probe';
      pre.textContent = JSON.stringify({asc, desc, names, width: document.documentElement.scrollWidth,
                                        inner: window.innerWidth});
      document.body.appendChild(pre);});</script>"""
    probe_page = out / "probe.html"
    probe_page.write_text(page.replace("</body>", probe + "</body>"))
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"]
    dom = subprocess.run(args + ["--dump-dom", probe_page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    got = json.loads(dom.split('<pre id="probe">')[1].split("</pre>")[0].replace("&quot;", '"'))
    values = [float(v) for v in got["asc"] if v]
    assert values == sorted(values) and [float(v) for v in got["desc"] if v] == sorted(values, reverse=True)
    assert got["names"] == sorted(got["names"]) and got["width"] <= got["inner"]  # no sideways page scroll
    shot = tmp_path / "leaderboard.png"
    subprocess.run(args + [f"--screenshot={shot}", (out / "index.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
