"""L1 and L0 robust-accuracy-vs-eps curves: the store keeps each sample's L1 and L0 perturbation norms (schema
version 4; L0 counts changed values over every channel, as foolbox does), a curve in either norm runs through the
CLI and ``benchmark()`` into a report table, a version-3 store opens and is migrated with its rows kept, and a
curve in a norm the store does not keep, or with an attack that does not take the curve's norm, is refused."""
from __future__ import annotations

import json
import math
import sqlite3
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import robustbench_rpc
from robustbench_rpc.api import TrustCheckWarning
from robustbench_rpc.cli import main
from robustbench_rpc.store import SCHEMA_VERSION
from robustbench_rpc.store.adversarial import read_set, unit_files
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import sql

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = """name = "c"
version = 1
description = "a curve"
[defaults]
dataset = "digits32"
models = ["symvit_micro_patch4_32:packaged"]
batch_size = 4
seed = 0
limit = 8
"""


def _curve(norm: str, attacks: str, name: str = "micro") -> str:
    return HEAD + f"""[[evaluation]]
kind = "curve"
name = "{norm} {name}"
norm = "{norm}"
attacks = [{attacks}]
"""


def _run(tmp_path, text: str, *extra: str) -> int:
    suite = tmp_path / "s.toml"
    suite.write_text(text)
    return main(["run", "--suite", str(suite), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu",
                 *extra])


def _clean_images(ids: list[int]) -> torch.Tensor:
    from robustbench_rpc.data.resolve import get_dataset

    ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
    by_id = {int(ds[i][2]): ds[i][0] for i in range(len(ds))}
    return torch.stack([by_id[i] for i in ids])


def test_l1_curve_through_the_cli_reports_a_finite_median_and_stores_l1(tmp_path):
    assert _run(tmp_path, _curve("L1", '{attack = "fmn", steps = 20}, {attack = "apgd", eps = 2.0, n_iter = 10}'),
                ) == 0
    out = tmp_path / "out"
    table = pd.read_csv(out / "tables" / "curve_l1_micro.csv")
    minimal = table[table["kind"] == "minimum-norm"].iloc[0]
    assert math.isfinite(minimal["median_norm"]) and minimal["median_norm"] > 0
    fixed = table[table["kind"] == "fixed-budget"].iloc[0]
    assert fixed["eps"] == 2.0 and fixed["curve_lo"] <= fixed["robust_accuracy"] + 1e-9
    assert "Robust accuracy vs eps: L1 micro" in (out / "index.html").read_text()
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        for _, info in evals.iterrows():
            rows = store.samples(eval_key=info["eval_key"])
            broken = rows[(rows["clean_correct1"] == 1) & (rows["correct1"] == 0)]
            if info["name"] == "fmn":  # a minimal L1 norm per broken sample, none for a sample never broken
                assert len(broken) and (broken["l1"] > 0).all() and (broken["l0"] >= 1).all()
                assert rows.loc[rows["correct1"] == 1, "l1"].isna().all()
            else:  # the fixed budget holds in the stored L1 norms
                assert (rows["l1"] <= 2.0 + 1e-4).all() and rows["l1"].notna().all()


def test_l0_curve_through_benchmark_stores_the_count_of_changed_values(tmp_path):
    """The stored l0 of each sample equals the nonzero values of its saved adversarial image minus the clean one,
    every channel value counted; the report's L0 curve has a finite median."""
    suite = tmp_path / "l0.toml"
    suite.write_text(_curve("L0", '{attack = "fmn", steps = 20, save_adversarial = true}, '
                                  '{attack = "fmn", eps = 12, steps = 20}'))
    out = tmp_path / "out"
    with warnings.catch_warnings():  # 20 FMN steps: the attack-failure indicators may say so; not this test's topic
        warnings.simplefilter("ignore", TrustCheckWarning)
        result = robustbench_rpc.benchmark("symvit_micro_patch4_32:packaged", suite=str(suite), out=out,
                                           device="cpu")
    table = pd.read_csv(out / "tables" / "curve_l0_micro.csv")
    assert np.allclose(result.tables["curve_l0_micro"]["median_norm"].astype(float), table["median_norm"],
                       equal_nan=True)  # benchmark() returns the curve's table as the report writes it
    minimal = table[table["kind"] == "minimum-norm"].iloc[0]
    assert math.isfinite(minimal["median_norm"]) and float(minimal["median_norm"]).is_integer()
    assert (table["kind"] == "fixed-budget").sum() == 1
    assert "each channel value counted separately" in (out / "index.html").read_text()
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        minimum = evals[evals["params"].map(lambda p: p.get("eps") is None)].iloc[0]
        model_key = store.models()["model_key"].iloc[0]
        rows = store.samples(model_key, minimum["eval_key"])
    files = unit_files(out, model_key, minimum["eval_key"])
    ids, images = [], []
    for _, f in sorted(files.items()):
        i, im, _ = read_set(f)
        ids += i
        images.append(im)
    delta = torch.cat(images) - _clean_images(ids)
    by_hand = (delta.flatten(1) != 0).sum(dim=1).double().numpy()  # every channel value separately
    stored = rows.set_index("sample_id").loc[ids]
    broken = (stored["clean_correct1"] == 1).to_numpy() & (stored["correct1"] == 0).to_numpy()
    assert broken.sum() >= 3
    assert np.array_equal(stored["l0"].to_numpy()[broken], by_hand[broken])
    # the convention is foolbox's: its L0 distance of the same images is the same count
    import foolbox

    clean = _clean_images(ids)
    theirs = foolbox.distances.LpDistance(0)(clean, torch.cat(images)).double().numpy()
    assert np.array_equal(theirs, by_hand)


def test_l0_label_of_the_curve_axis_counts_input_elements():
    from robustbench_rpc.reports.curve_report import _axis_label

    assert "changed input elements" in _axis_label("L0", {})
    assert _axis_label("L1", {}) == "eps (L1, pixel units)"
    assert _axis_label("L2", {"space": "normalized"}) == "eps (L2, normalized units)"


V3_SAMPLES = """CREATE TABLE samples (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, sample_id INTEGER NOT NULL,
    unit INTEGER NOT NULL, label INTEGER NOT NULL, pred INTEGER NOT NULL,
    correct1 INTEGER NOT NULL CHECK (correct1 IN (0, 1)), correct5 INTEGER NOT NULL CHECK (correct5 IN (0, 1)),
    confidence REAL NOT NULL, clean_correct1 INTEGER CHECK (clean_correct1 IN (0, 1)), linf REAL, l2 REAL,
    clean_correct5 INTEGER CHECK (clean_correct5 IN (0, 1)), plain_correct1 INTEGER CHECK (plain_correct1 IN (0, 1)),
    plain_correct5 INTEGER CHECK (plain_correct5 IN (0, 1)), PRIMARY KEY (model_key, eval_key, sample_id),
    FOREIGN KEY (model_key, eval_key, unit) REFERENCES units(model_key, eval_key, unit) DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;
CREATE INDEX samples_unit ON samples(model_key, eval_key, unit);
CREATE TABLE meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
CREATE TABLE models (model_key TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE evaluations (eval_key TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE units (model_key TEXT NOT NULL REFERENCES models(model_key),
    eval_key TEXT NOT NULL REFERENCES evaluations(eval_key), unit INTEGER NOT NULL, n INTEGER NOT NULL,
    finished_at TEXT NOT NULL, PRIMARY KEY (model_key, eval_key, unit));
CREATE TABLE seg_areas (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, sample_id INTEGER NOT NULL,
    unit INTEGER NOT NULL, areas_json TEXT NOT NULL, PRIMARY KEY (model_key, eval_key, sample_id)) WITHOUT ROWID;
CREATE TABLE checks (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, "check" TEXT NOT NULL, status TEXT NOT NULL,
    message TEXT NOT NULL, details_json TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (model_key, eval_key, "check"));
"""


def _v3_store(path, linf: float = 0.03):
    """A store as schema version 3 wrote it (no l1, l0 columns), one attack row."""
    con = sqlite3.connect(path)
    con.executescript(V3_SAMPLES)
    con.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    con.execute("INSERT INTO models VALUES ('m', ?)", (json.dumps({"name": "m"}),))
    con.execute("INSERT INTO evaluations VALUES ('e', ?)", (json.dumps(
        {"kind": "attack", "name": "fmn", "dataset": "d", "params": {"norm": "L2"}, "n_samples": 1}),))
    con.execute("INSERT INTO units VALUES ('m', 'e', 0, 1, 'now')")
    con.execute("INSERT INTO samples VALUES ('m', 'e', 7, 0, 3, 1, 0, 1, 0.6, 1, ?, 0.4, 1, 0, 1)", (linf,))
    con.commit()
    con.close()


def test_version_3_store_opens_migrates_and_keeps_its_rows_without_l1_l0(tmp_path):
    path = tmp_path / "results.sqlite"
    _v3_store(path)
    with ResultsStore(path, readonly=True) as ro:  # read as it is, the new columns missing
        s = ro.samples()
        assert s["l2"].tolist() == [0.4] and s["l1"].isna().all() and s["l0"].isna().all()
        assert ro.get_meta("schema_version") == 3 and ro.verify() == []
    with ResultsStore(path) as rw:  # opened for writing: migrated in place, the old row kept
        assert rw.get_meta("schema_version") == SCHEMA_VERSION == 4
        rw.register_evaluation("e2", {"kind": "attack", "name": "fmn", "dataset": "d", "params": {"norm": "L0"},
                                      "n_samples": 1})
        rw.write_unit("m", "e2", 0, {"sample_id": [7], "label": [3], "pred": [1], "correct1": [0], "correct5": [1],
                                    "confidence": [0.5], "linf": [0.2], "l2": [0.3], "l1": [0.5], "l0": [6]})
        s = rw.samples().set_index("eval_key")
        assert s.loc["e", "l2"] == 0.4 and np.isnan(s.loc["e", "l1"]) and np.isnan(s.loc["e", "l0"])
        assert s.loc["e2", "l1"] == 0.5 and s.loc["e2", "l0"] == 6
        assert rw.verify() == []
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(samples)")]
    assert columns[-2:] == ["l1", "l0"]


def test_version_3_store_read_as_is_still_has_its_norms_checked(tmp_path):
    """The L1 / L0 rules are skipped for a store without those columns, the Linf / L2 rule is not."""
    from robustbench_rpc.store.errors import StoreCorruptError

    _v3_store(tmp_path / "results.sqlite", linf=-0.5)
    with pytest.raises(StoreCorruptError, match="negative perturbation norm"):
        ResultsStore(tmp_path / "results.sqlite", readonly=True)


def test_a_stored_l0_that_is_no_count_is_refused_on_open(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.register_model("m", {"name": "m"})
        store.register_evaluation("e", {"kind": "attack", "name": "fmn", "dataset": "d", "params": {},
                                        "n_samples": 1})
        store.write_unit("m", "e", 0, {"sample_id": [0], "label": [1], "pred": [2], "correct1": [0],
                                       "correct5": [1], "confidence": [0.5], "l0": [3]})
    sql(tmp_path, "UPDATE samples SET l0 = 2.5")
    from robustbench_rpc.store.errors import StoreCorruptError

    with pytest.raises(StoreCorruptError, match="L0 norm that is no count"):
        ResultsStore(path, readonly=True)


@pytest.mark.parametrize("norm, attacks, says", [
    ("L3", '{attack = "fmn"}', "norm must be one of \"L0\", \"L1\", \"L2\", \"Linf\""),
    ("L0", '{attack = "fmn"}, {attack = "pgd", eps = 10}', "attack pgd does not take norm 'L0'"),
    ("L1", '{attack = "ddn"}', "attack ddn does not take norm 'L1'"),
])
def test_a_curve_in_a_norm_not_kept_or_not_taken_is_refused_in_one_line(tmp_path, capsys, norm, attacks, says):
    assert _run(tmp_path, _curve(norm, attacks)) == 2
    err = capsys.readouterr().err
    assert says in err and "norm" in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out" / "results.sqlite").exists()


def test_verify_compares_l1_and_l0_and_leaves_them_out_against_an_older_store(tmp_path, capsys):
    from tiny_runs import ATTACK_SUITE, copy_run, run, suite

    suite_file = suite(tmp_path, ATTACK_SUITE)
    assert run(suite_file, tmp_path / "a", "--no-report") == 0
    b = copy_run(tmp_path / "a", tmp_path / "b")
    sql(b, "UPDATE samples SET l1 = l1 * 2 WHERE l1 > 0")
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "a"), str(b)]) == 1
    assert "differ in l1" in capsys.readouterr().out
    old = copy_run(tmp_path / "a", tmp_path / "old")  # as schema version 3 wrote it: no l1, l0 columns
    sql(old, "DROP INDEX samples_unit; ALTER TABLE samples DROP COLUMN l1; ALTER TABLE samples DROP COLUMN l0; "
             "CREATE INDEX samples_unit ON samples(model_key, eval_key, unit); "
             "UPDATE meta SET value_json = '3' WHERE key = 'schema_version'")
    assert main(["verify", str(old), str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "INFO: sample field l1 is not in both stores" in printed and "differ in" not in printed


def test_an_l1_or_l0_budget_is_written_as_a_number_not_in_pixel_levels():
    """1/255 steps are Linf pixel levels; an L1 budget of 2.0 is '2' (not '510/255') in every label."""
    from robustbench_rpc.evalspec import attack_label, eps_label
    from robustbench_rpc.reports.protocol import eval_label

    assert eps_label(2.0, "L1") == "2" and eps_label(12, "L0") == "12" and eps_label(1.0, "L2") == "1"
    assert eps_label(8 / 255) == eps_label(8 / 255, "Linf") == eps_label(8 / 255, "?") == "8/255"
    assert attack_label("apgd", {"norm": "L1", "eps": 2.0, "n_iter": 10}) == "apgd norm=L1 eps=2 n_iter=10"
    assert attack_label("pgd", {"eps": 4 / 255, "steps": 10}) == "pgd eps=4/255 steps=10"
    assert eval_label({"kind": "attack", "name": "apgd", "params": {"norm": "L1", "eps": 2.0}}) == "apgd L1 eps=2"
