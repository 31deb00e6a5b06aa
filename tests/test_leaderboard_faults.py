"""`robustbench-rpc leaderboard` as a hostile new user meets it: folders it must not overwrite, a board state
killed mid-write or damaged, runs edited or deleted after the board read them, published JSON that is broken or
lies, an unknown --rank-by, Ctrl-C. Each outcome is one line (or a flag on the board), never a traceback, never
a lost file or a number that was not measured the way its column says."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_leaderboard_robustbench import imagenet_run
from tiny_runs import copy_run, run, sql, suite

from robustbench_rpc import atomic
from robustbench_rpc.cli import commands as cli
from robustbench_rpc.leaderboard import STATE

CLEAN = """name = "lb-faults"
[defaults]
dataset = "digits32"
batch_size = 8
[[evaluation]]
kind = "clean"
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lbf")
    out = {}
    for name, model in (("a", "symvit_micro_patch4_32"), ("b", "vit_micro_patch4_32")):
        assert run(suite(tmp / f"s{name}", CLEAN), tmp / name, "--limit", "8", "--no-report", "--model",
                   f"{model}:packaged") == 0
        out[name] = tmp / name
    return out


def lb(capsys, *argv: str) -> tuple[int, str, list[str]]:
    code = cli.main(["leaderboard", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()


def board(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "leaderboard.csv")


def one_line_error(code: int, err: list[str], *words: str) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err


# ------------------------------------------------------------------------------------ folders kept

def test_out_refuses_a_run_folder_and_a_folder_of_the_users_files(runs, tmp_path, capsys):
    run_copy = copy_run(runs["a"], tmp_path / "runcopy")
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    code, _, err = lb(capsys, runs["b"], "--out", run_copy)
    one_line_error(code, err, str(run_copy), "run folder")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    (mine / "leaderboard.md").write_text("my notes")
    code, _, err = lb(capsys, runs["a"], "--out", mine)
    one_line_error(code, err, str(mine), "other files")
    assert (mine / "index.html").read_text() == "my page" and (mine / "leaderboard.md").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "leaderboard.md"]
    # a board folder (its state inside) and an empty folder are the board's to write
    empty = tmp_path / "empty"
    empty.mkdir()
    assert lb(capsys, runs["a"], "--out", empty)[0] == 0 and (empty / STATE).is_file()
    assert lb(capsys, runs["b"], "--out", empty)[0] == 0 and set(board(empty)["model"]) == {
        "symvit_micro_patch4_32", "vit_micro_patch4_32"}


def test_board_state_is_one_file_a_kill_while_writing_never_shows_a_finished_run_incomplete(runs, tmp_path, capsys,
                                                                                           monkeypatch):
    out = tmp_path / "board"
    assert lb(capsys, runs["a"], "--out", out)[0] == 0
    to_csv = pd.DataFrame.to_csv

    def killed_at_outcomes(self, path=None, *a, **k):  # the kill lands after the board's state was written
        if "outcomes.csv" in str(path):
            raise KeyboardInterrupt
        return to_csv(self, path, *a, **k)
    monkeypatch.setattr(pd.DataFrame, "to_csv", killed_at_outcomes)
    code, _, err = lb(capsys, runs["b"], "--out", out)
    assert code == 130 and len(err) == 1 and "interrupted (Ctrl-C)" in err[0] and str(out) in err[0]
    monkeypatch.undo()
    replace = os.replace

    def killed_at_state(src, dst):  # the kill lands before the new state replaced the old one
        if str(dst).endswith(STATE):
            raise KeyboardInterrupt
        return replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", killed_at_state)
    assert lb(capsys, copy_run(runs["b"], tmp_path / "b2"), "--out", out)[0] == 130
    monkeypatch.undo()
    code, out_text, _ = lb(capsys, "--out", out)  # rebuilt from the state alone
    df = board(out)
    assert code == 0 and set(df["model"]) == {"symvit_micro_patch4_32", "vit_micro_patch4_32"}
    assert not df["flags"].astype("string").fillna("").str.contains("incomplete").any() and df["complete"].all()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncated", "empty", "not gzip"])
def test_a_damaged_board_state_is_one_line(runs, tmp_path, capsys, damage):
    out = tmp_path / "board"
    assert lb(capsys, runs["a"], "--out", out)[0] == 0
    state = out / STATE
    data = state.read_bytes()
    state.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not gzip": b"{}"}[damage])
    code, _, err = lb(capsys, runs["b"], "--out", out)
    one_line_error(code, err, str(out), STATE, "unreadable", "new --out")
    fresh = tmp_path / "fresh"  # the way out the message names works
    assert lb(capsys, runs["a"], runs["b"], "--out", fresh)[0] == 0 and len(set(board(fresh)["model"])) == 2


def test_the_outcomes_file_is_for_the_reader_not_the_boards_state(runs, tmp_path, capsys):
    """outcomes.csv.gz is written for the reader; the board's state is the one file STATE, so a truncated
    outcomes file neither breaks nor changes the next build."""
    out = tmp_path / "board"
    assert lb(capsys, runs["a"], "--out", out)[0] == 0
    outcomes = out / "outcomes.csv.gz"
    outcomes.write_bytes(outcomes.read_bytes()[:20])
    assert lb(capsys, runs["b"], "--out", out)[0] == 0
    assert not board(out)["flags"].astype("string").fillna("").str.contains("incomplete").any()
    assert len(pd.read_csv(outcomes)) == 16  # rewritten whole: 8 images x 2 models


# --------------------------------------------------------------------------------- stale numbers

def test_edited_sample_rows_are_read_again(runs, tmp_path, capsys):
    mine = copy_run(runs["a"], tmp_path / "a")
    out = tmp_path / "board"
    assert lb(capsys, mine, "--out", out)[0] == 0
    before = board(out)["value"].iloc[0]
    sql(mine, "UPDATE samples SET correct1 = 1 - correct1, correct5 = 1 - correct5, pred = (pred + 1) % 10 "
              "WHERE sample_id = (SELECT MIN(sample_id) FROM samples)")
    code, printed, _ = lb(capsys, mine, "--out", out)
    assert code == 0 and "1 read, 0 unchanged since the last build" in printed
    assert abs(board(out)["value"].iloc[0] - before) == pytest.approx(1 / 8)


def test_a_deleted_run_is_flagged_and_removable(runs, tmp_path, capsys):
    gone = copy_run(runs["a"], tmp_path / "gone")
    out = tmp_path / "board"
    assert lb(capsys, gone, runs["b"], "--out", out)[0] == 0
    shutil.rmtree(gone)
    code, printed, _ = lb(capsys, "--out", out)
    df = board(out)
    assert code == 0 and "1 of them gone from disk" in printed
    assert df[df["model"] == "symvit_micro_patch4_32"]["flags"].str.contains("run folder gone").all()
    assert not df[df["model"] == "vit_micro_patch4_32"]["flags"].astype("string").fillna("").str.contains("gone").any()
    assert lb(capsys, "--out", out, "--remove", gone)[0] == 0
    assert set(board(out)["model"]) == {"vit_micro_patch4_32"}
    code, _, err = lb(capsys, "--out", out, "--remove", tmp_path / "never")
    one_line_error(code, err, "--remove", "never", "not on the board")


def test_log_counts_runs_once(runs, tmp_path, capsys):
    out = tmp_path / "board"
    code, printed, _ = lb(capsys, runs["a"], runs["a"], runs["b"], runs["b"], "--out", out)
    assert code == 0 and "2 run(s) (2 read, 0 unchanged since the last build, 0 kept from the board)" in printed
    code, printed, _ = lb(capsys, runs["a"], "--out", out)
    assert "2 run(s) (0 read, 1 unchanged since the last build, 1 kept from the board)" in printed


def test_unknown_rank_by_is_one_line_with_did_you_mean(runs, tmp_path, capsys):
    code, _, err = lb(capsys, runs["a"], "--out", tmp_path / "board", "--rank-by", "claen")
    one_line_error(code, err, "--rank-by 'claen'", "did you mean clean (digits32)")
    assert not (tmp_path / "board").exists()


def test_ctrl_c_is_one_line_and_keeps_the_previous_board(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "board"
    assert lb(capsys, runs["a"], "--out", out)[0] == 0
    before = (out / STATE).read_bytes()
    import robustbench_rpc.leaderboard as leaderboard

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(leaderboard, "read_run", interrupted)
    code, _, err = lb(capsys, runs["b"], "--out", out)
    assert code == 130 and len(err) == 1 and err[0].startswith("interrupted (Ctrl-C)") and str(out) in err[0]
    assert (out / STATE).read_bytes() == before

    def terminated(*a, **k):
        raise cli._Terminated()
    monkeypatch.setattr(leaderboard, "read_run", terminated)
    code, _, err = lb(capsys, runs["b"], "--out", out)
    assert code == 143 and len(err) == 1 and err[0].startswith("terminated (SIGTERM)")
    assert (out / STATE).read_bytes() == before


def test_export_reports_each_file_once_when_two_rows_share_a_name(tmp_path, capsys):
    one = imagenet_run(tmp_path / "one", "my_vit", {"clean": 3896, "aa": 2982})
    # the same name, another checkpoint: another row, whose file must not overwrite the first one's
    two = imagenet_run(tmp_path / "two", "my_vit", {"clean": 3500, "aa": 2000}, checkpoint="cd" * 32)
    out = tmp_path / "board"
    code, printed, _ = lb(capsys, one, two, "--out", out, "--export-model-info")
    files = sorted((out / "model_info").rglob("*.json"))
    assert code == 0 and f"model_info: {len(files)} JSON file(s)" in printed and len(files) == 2
    assert {json.loads(f.read_text())["clean_acc"] for f in files} == {"77.92", "70.0"}


# ------------------------------------------------------------------------------------ published

def _published(tmp_path: Path, name: str = "Someone2024Robust", text: str | None = None, **fields) -> Path:
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": "x", "dataset": "cifar10", "eps": "8/255", "clean_acc": "80.00", "autoattack_acc": "50.00",
           "additional_data": False, **fields}
    path = folder / f"{name}.json"
    path.write_text(text if text is not None else json.dumps({k: v for k, v in doc.items() if v is not ...}))
    return path


@pytest.mark.parametrize("text, key", [('{"name": "x", "clean_acc": "80.0', None), ("", None), ("not json", None),
                                       ("[1, 2]", None), ("null", None)])
def test_broken_published_json_is_one_line_naming_the_file(tmp_path, capsys, text, key):
    path = _published(tmp_path, text=text)
    code, _, err = lb(capsys, "--published", path, "--out", tmp_path / "board")
    one_line_error(code, err, str(path))


@pytest.mark.parametrize("key, value", [("clean_acc", "nan"), ("autoattack_acc", "inf"), ("autoattack_acc", "150"),
                                        ("clean_acc", "-5"), ("external", 150), ("clean_acc", True),
                                        ("eps", "eight"), ("unreliable", "yes")])
def test_a_published_number_out_of_range_is_one_line_naming_file_and_key(tmp_path, capsys, key, value):
    path = _published(tmp_path, **{key: value})
    code, _, err = lb(capsys, "--published", path, "--out", tmp_path / "board")
    one_line_error(code, err, str(path), key)


def test_published_nan_constant_is_refused(tmp_path, capsys):
    path = _published(tmp_path, text='{"dataset": "cifar10", "eps": "8/255", "clean_acc": NaN}')
    code, _, err = lb(capsys, "--published", path, "--out", tmp_path / "board")
    one_line_error(code, err, str(path), "NaN")


def test_published_without_eps_takes_its_folders_budget_flagged(tmp_path, capsys):
    path = _published(tmp_path, eps=...)
    out = tmp_path / "board"
    assert lb(capsys, "--published", path, "--out", out)[0] == 0
    df = board(out)
    assert not df["column"].str.contains("nan").any() and "AutoAttack standard Linf 8/255" in set(df["column"])
    assert df["flags"].str.contains("eps not stated").all()


def test_published_robust_above_clean_is_flagged(tmp_path, capsys):
    path = _published(tmp_path, clean_acc="40.00", autoattack_acc="55.00")
    out = tmp_path / "board"
    assert lb(capsys, "--published", path, "--out", out)[0] == 0
    df = board(out)
    assert df["flags"].str.contains("robust above clean").all()
    assert "one of the two numbers is wrong" in (out / "leaderboard.md").read_text()


def test_html_in_a_published_name_is_escaped_in_markdown(tmp_path, capsys):
    path = _published(tmp_path, name="<img src=x onerror=alert(1)>")
    out = tmp_path / "board"
    assert lb(capsys, "--published", path, "--out", out)[0] == 0
    md = (out / "leaderboard.md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "<img" not in (out / "index.html").read_text()


def test_a_board_folder_from_before_the_one_file_state_is_read_and_converted(runs, tmp_path, capsys):
    """A board written as board.json + outcomes.csv.gz (the state's earlier two-file form) still updates; its
    state is then the one file."""
    out = tmp_path / "board"
    assert lb(capsys, runs["a"], "--out", out)[0] == 0
    before = board(out)
    meta = json.loads(gzip.decompress((out / STATE).read_bytes()))
    entries, frames = [], []
    for src in meta["sources"]:
        for e in src.pop("entries"):
            outcomes = pd.DataFrame(e.pop("outcomes"))
            frames.append(outcomes.assign(run=e["run"], model_key=e["model_key"], eval_key=e["eval_key"]))
            entries.append(e)
    (out / "board.json").write_text(json.dumps({**meta, "version": 1, "entries": entries}))
    pd.concat(frames).to_csv(out / "outcomes.csv.gz", index=False)
    (out / STATE).unlink()
    code, printed, _ = lb(capsys, "--out", out)
    assert code == 0 and "1 kept from the board" in printed and (out / STATE).is_file()
    assert not (out / "board.json").exists()
    pd.testing.assert_frame_equal(board(out), before)


def test_a_published_file_deleted_since_is_named_and_removable(tmp_path, capsys):
    path = _published(tmp_path)
    out = tmp_path / "board"
    assert lb(capsys, "--published", path, "--out", out)[0] == 0
    path.unlink()
    code, _, err = lb(capsys, "--out", out)
    one_line_error(code, err, str(path), "--remove")
    code, printed, _ = lb(capsys, "--out", out, "--remove", path)
    assert code == 0 and "0 published file(s) -> 0 board(s)" in printed  # the board, emptied
    assert lb(capsys, "--published", _published(tmp_path, name="Other"), "--out", out)[0] == 0
    assert set(board(out)["model"]) == {"Other"}
