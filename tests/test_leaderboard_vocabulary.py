"""The board and the run's report speak one vocabulary: built from ONE run (the shipped RPC micro model, a
dynamic model, with an APGD marked ``adaptive = true`` at 1/255 and a PGD at 2/255), they agree on which
evaluations are adaptive (``evalspec.is_adaptive``), on eps labels (``evalspec.eps_label``) and on the threat
model's defaults (``evalspec.threat_of``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustbench_rpc import evalspec
from robustbench_rpc.leaderboard import build_leaderboard
from robustbench_rpc.store.results import ResultsStore
import tiny_runs
from tiny_runs import suite_text

RPC = "rpc_symvit_micro_patch4_32"
SUITE = suite_text(dict(kind="clean"),
                   dict(kind="attack", attack="apgd", norm="Linf", eps=["1/255"], n_iter=1, adaptive=True),
                   dict(kind="attack", attack="pgd", norm="Linf", eps=["2/255"], steps=1),
                   name="vocabulary", version=None, models=None, batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vocab")
    out = tmp / "run"
    suite = tiny_runs.suite(tmp, SUITE, "suite.toml")
    assert tiny_runs.run(suite, out, "--limit", "8", "--model", f"{RPC}:packaged") == 0
    return out


def test_report_and_board_agree_on_adaptive_eps_labels_and_threat_defaults(run, tmp_path):
    report = (run / "report.md").read_text()
    res = build_leaderboard([run], tmp_path / "board", log=lambda *_: None)
    (board,) = res["boards"]
    (row,) = board.rows.values()
    # adaptive: the report counts the APGD as the RPC model's adaptive evaluation, and so does the board
    rpc_line = next(line for line in report.splitlines() if line.startswith(f"| {RPC} |"))
    assert "| dynamic |" in rpc_line and "not adaptively evaluated" not in report
    assert row.model["dynamics"]["kind"] == "dynamic"
    assert not any("adaptive" in f for f in row.flags), row.flags
    # eps labels: one writer, so both say 1/255 and 2/255 (never 0.003922)
    labels = [c.label for c in board.columns]
    assert "apgd Linf 1/255" in labels and "pgd Linf 2/255" in labels
    assert "1/255" in report and "2/255" in report
    assert "0.003922" not in report + " ".join(labels) + (tmp_path / "board" / "leaderboard.md").read_text()
    # threat defaults: the board's fingerprint states the threat model evalspec gives the stored parameters
    with ResultsStore(run / "results.sqlite", readonly=True) as store:
        infos = [store.evaluation_info(k) for k in store.evaluations()["eval_key"]]
    for info in (i for i in infos if i["kind"] == "attack"):
        col = next(c for c in board.columns if c.fingerprint.get("name") == info["name"])
        threat = tuple(col.fingerprint[f"threat.{k}"] for k in evalspec.THREAT_DEFAULTS)
        assert threat == evalspec.threat_of(info["params"])
        assert evalspec.threat_text(info["params"]) in report
        assert col.label.endswith(evalspec.eps_label(info["params"]["eps"]))
    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert set(csv["column"]) >= {"apgd Linf 1/255", "pgd Linf 2/255"}
