"""A given adversarial set ranks the board as RobustBench's ``external`` field does (its MALT entries): run ->
export-adversarial -> a set that breaks images AutoAttack could not -> evaluate-external -> leaderboard.

AutoAttack standard is near-optimal on a small honest model, so no real attack beats it here in seconds. The
test's model therefore hides a weakness from it, the case external evaluations exist for: a nearest-centroid
classifier that shifts its prediction by one class when the image carries a checkerboard of sub-8-bit offsets
(a trigger read through ``detach``, so gradients never see it, and that Square's +-eps steps and APGD's random
start do not reach). The same classifier without the trigger is the second row: both hold the same AutoAttack
number, and only the external set tells them apart."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import torch

from robustbench_rpc.cli.commands import main
from robustbench_rpc.store.adversarial import encode, read_set
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import suite_text

PLUGIN = """
import torch
from torch import nn
import robustbench_rpc
from robustbench_rpc.data.resolve import get_dataset


def _centroids():
    ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
    xs = torch.stack([ds[i][0] for i in range(len(ds))]).flatten(1)
    ys = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return torch.stack([xs[ys == k].mean(0) for k in range(10)])


CENTROIDS = _centroids()  # at import: models are first built on the meta device


class Centroids(nn.Module):
    def __init__(self, trigger):
        super().__init__()
        self.register_buffer("c", CENTROIDS.clone())
        self.register_buffer("p", (torch.arange(3 * 32 * 32) % 2 * 2 - 1).float())
        self.trigger = trigger

    def forward(self, x):
        x = x.flatten(1)
        logits = -((x[:, None, :] - self.c[None]) ** 2).sum(-1) / 20
        if self.trigger:
            offsets = (x * 255 - torch.round(x * 255)).detach()
            hit = (offsets * self.p).mean(1) > 0.125
            logits = torch.where(hit[:, None], logits.roll(1, 1), logits)
        return logits


@robustbench_rpc.register_model("centroid_trigger", input_size=32, mean=0.0, std=1.0, num_classes=10)
def centroid_trigger(**kw):
    return Centroids(True)


@robustbench_rpc.register_model("centroid_plain", input_size=32, mean=0.0, std=1.0, num_classes=10)
def centroid_plain(**kw):
    return Centroids(False)
"""
SUITE = suite_text(dict(kind="clean"), dict(kind="attack", attack="autoattack", eps=["8/255"]), name="lb-external",
                   version=None, models=None, batch_size=16, seed=3, limit=16)
AA = "AutoAttack standard Linf 8/255"
BEST = "best known Linf 8/255"


def _trigger(x: torch.Tensor) -> torch.Tensor:
    """The checkerboard of +-0.25/255 offsets from the 8-bit grid, at most 0.75/255 from ``x``, inside [0, 1]."""
    sign = (torch.arange(x.numel()) % 2 * 2 - 1).float().view_as(x)
    v = torch.round(x * 255) + 0.25 * sign
    v = torch.where((v > 255) | (v < 0), v - sign, v)
    return v / 255


def _correct(run: Path, model: str, kind: str) -> pd.Series:
    with ResultsStore(run / "results.sqlite", readonly=True) as s:
        ev = s.evaluations()
        key = ev.loc[ev["kind"] == kind, "eval_key"].iloc[0]
        mk = s.models().set_index("name").loc[model, "model_key"]
        return s.samples(model_key=mk, eval_key=key).set_index("sample_id")["correct1"]


def test_a_given_set_that_beats_autoattack_is_the_best_known_number_and_reranks_the_board(tmp_path, one_thread):
    plugin = tmp_path / "centroids.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "suite.toml").write_text(SUITE)
    run = tmp_path / "run"
    assert main(["--plugin", str(plugin), "run", "--suite", str(tmp_path / "suite.toml"), "--out", str(run),
                 "--model", "centroid_trigger", "--model", "centroid_plain", "--save-adversarial", "--no-report",
                 "--no-progress", "--device", "cpu"]) == 0
    aa_correct = _correct(run, "centroid_trigger", "attack")
    assert aa_correct.tolist() == _correct(run, "centroid_plain", "attack").tolist()  # one AutoAttack number
    robust = aa_correct[aa_correct == 1].index.tolist()
    assert len(robust) >= 4, "AutoAttack broke nearly every image: no room for the external set to go lower"

    # AutoAttack's own set, with half the images it could not break replaced by the clean image + the trigger
    saved = tmp_path / "aa.safetensors"
    assert main(["export-adversarial", str(run), "--model", "centroid_trigger", "--evaluation",
                 "attack autoattack eps=8/255", "--out", str(saved)]) == 0
    ids, images, _ = read_set(saved)
    from robustbench_rpc.data.resolve import get_dataset

    ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
    clean = {int(item[2]): item[0] for item in (ds[i] for i in range(len(ds)))}  # (image, label, sample id)
    broken = robust[: len(robust) // 2]
    for sid in broken:
        images[ids.index(sid)] = _trigger(clean[sid])
    given = tmp_path / "given.safetensors"
    given.write_bytes(encode(images, ids, {}))
    ext = tmp_path / "ext"
    assert main(["--plugin", str(plugin), "evaluate-external", "--model", "centroid_trigger", "--adversarial",
                 str(given), "--dataset", "digits32", "--limit", "16", "--norm", "Linf", "--eps", "8/255",
                 "--out", str(ext), "--device", "cpu", "--no-progress", "--no-report",
                 "--seed", "3"]) == 0  # the run's seed: an un-checkpointed model's row is its init seed's
    ext_correct = _correct(ext, "centroid_trigger", "external")
    expected = aa_correct.copy()
    expected[broken] = 0
    assert ext_correct.loc[aa_correct.index].tolist() == expected.tolist()  # lower exactly where it was built to

    board_dir = tmp_path / "board"
    assert main(["leaderboard", str(run), str(ext), "--out", str(board_dir)]) == 0
    board = pd.read_csv(board_dir / "leaderboard.csv")
    cell = board.set_index(["model", "column"])
    n = len(aa_correct)
    ext_label = next(c for c in board["column"] if c.startswith("external set Linf 8/255 sha256:"))
    # the trigger row's best known number is the external set's, lower than its AutoAttack standard number
    assert cell.loc[("centroid_trigger", ext_label), "value"] == ext_correct.mean()
    assert cell.loc[("centroid_trigger", BEST), "value"] == ext_correct.mean() == (len(robust) - len(broken)) / n
    assert cell.loc[("centroid_trigger", AA), "value"] == cell.loc[("centroid_plain", AA), "value"] == len(robust) / n
    assert cell.loc[("centroid_plain", BEST), "value"] == len(robust) / n  # no external set: AutoAttack's own
    # the board ranks by best known: the two rows tied under AutoAttack now stand apart
    ranked = board[board["ranked_by"]].set_index("model")
    assert set(ranked["column"]) == {BEST}
    assert ranked.loc["centroid_plain", "rank"] == 1 and ranked.loc["centroid_trigger", "rank"] == 2
    by_aa = tmp_path / "by_aa"
    assert main(["leaderboard", str(run), str(ext), "--out", str(by_aa), "--rank-by", AA]) == 0
    ranked_aa = pd.read_csv(by_aa / "leaderboard.csv").query("ranked_by").set_index("model")
    assert ranked_aa.loc["centroid_plain", "rank"] == ranked_aa.loc["centroid_trigger", "rank"] == 1
    # and the row says where its number comes from: the external set's run and column
    trigger_best = cell.loc[("centroid_trigger", BEST)]
    assert str(ext.resolve()) in trigger_best["runs"].split(" ")
    assert ext_label in trigger_best["note"] and AA in trigger_best["note"], trigger_best["note"]
    assert "no adaptive attack or external set" in cell.loc[("centroid_plain", BEST), "note"]
