"""``verify`` compares everything it claims to. A real rerun reproduces; a rerun tampered in
any stored field (per-sample values, rows, units, evaluations, trust checks, infos, meta, the manifest)
does not, with a line naming the model, the evaluation and the first differing keys; bad input is one
line (exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_rpc.cli.commands import main
from tiny_runs import ATTACK_SUITE, EXTRA_EVAL, copy_run, query, run, sql, suite

MODEL = "symvit_micro_patch4_32"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(suite file, reference run, an independent rerun of it)."""
    root = tmp_path_factory.mktemp("verify")
    suite_file = suite(root, ATTACK_SUITE)
    for name in ("ref", "rerun"):
        assert run(suite_file, root / name, "--no-report") == 0
    return suite_file, root / "ref", root / "rerun"


def _verify(capsys, a: Path, b: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["verify", str(a), str(b), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _key(out: Path, kind: str) -> str:
    return query(out, f"SELECT eval_key FROM evaluations WHERE info_json LIKE '%\"kind\":\"{kind}\"%'")[0][0]


def test_a_rerun_reproduces(runs, capsys):
    _, ref, rerun = runs
    rc, out, _ = _verify(capsys, ref, rerun)
    assert rc == 0, out
    assert "DIFF" not in out and "verdict: reproduced" in out and "floats exact" in out
    assert "32 shared (model, evaluation, sample) rows, 0 only in a, 0 only in b; 0 differing values" in out


ONE = "(SELECT MIN(sample_id) FROM samples WHERE eval_key = '{attack}')"
TAMPER = {
    "confidence": ("UPDATE samples SET confidence = confidence * (1 + 1e-6) WHERE eval_key = '{clean}' AND "
                   "sample_id = (SELECT MIN(sample_id) FROM samples)", ["1 sample(s) differ in confidence",
                                                                         f"{MODEL} [", "'clean' on digits32"]),
    "label": ("UPDATE samples SET label = (label + 1) % 10 WHERE eval_key = '{attack}' AND sample_id = " + ONE,
              ["differ in label", "'attack fgsm eps=2/255' on digits32"]),
    "swapped labels": ("UPDATE samples SET label = CASE WHEN label = 1 THEN 2 WHEN label = 2 THEN 1 ELSE label END "
                       "WHERE eval_key = '{clean}' AND label IN (1, 2)", ["differ in label"]),
    "prediction": ("UPDATE samples SET pred = (pred + 3) % 10, correct1 = 1 - correct1 WHERE eval_key = '{attack}' "
                   "AND sample_id = " + ONE, ["differ in pred", "differ in correct1"]),
    "clean correctness": ("UPDATE samples SET clean_correct1 = 1 - clean_correct1 WHERE eval_key = '{attack}' AND "
                          "sample_id = " + ONE, ["differ in clean_correct1"]),
    "plain top-5": ("UPDATE samples SET plain_correct5 = NULL WHERE eval_key = '{attack}' AND sample_id = " + ONE,
                    ["differ in plain_correct5", "vs missing"]),
    "norm": ("UPDATE samples SET linf = linf * 2 WHERE eval_key = '{attack}' AND sample_id = " + ONE,
             ["differ in linf"]),
    "one sample row": ("DELETE FROM samples WHERE eval_key = '{attack}' AND sample_id = " + ONE,
                       ["1 sample row(s) of", "only in run a: sample ids", "do not hold the sample rows"]),
    "an extra row": ("INSERT INTO samples (model_key, eval_key, sample_id, unit, label, pred, correct1, correct5, "
                     "confidence) SELECT model_key, eval_key, 99999, unit, 1, 1, 1, 1, 0.5 FROM samples "
                     "WHERE eval_key = '{clean}' LIMIT 1", ["only in run b: sample ids 99999"]),
    "a whole unit": ("DELETE FROM samples WHERE eval_key = '{clean}' AND unit = 2; "
                     "DELETE FROM units WHERE eval_key = '{clean}' AND unit = 2",
                     ["1 unit(s) of", "only in run a: unit 2 (n=4)", "4 sample row(s) of"]),
    "a sample moved to another unit": ("UPDATE samples SET unit = 3 WHERE eval_key = '{clean}' AND unit = 2 AND "
                                       "sample_id = (SELECT MIN(sample_id) FROM samples WHERE eval_key = '{clean}' "
                                       "AND unit = 2)", ["differ in unit"]),
    "a unit's recorded n": ("UPDATE units SET n = 5 WHERE eval_key = '{clean}' AND unit = 0",
                            ["record another n: unit 0: 4 vs 5"]),
    "a whole evaluation": ("DELETE FROM samples WHERE eval_key = '{attack}'; DELETE FROM units WHERE eval_key = "
                           "'{attack}'; DELETE FROM evaluations WHERE eval_key = '{attack}'",
                           ["1 evaluation(s) only in run a: 'attack fgsm eps=2/255' on digits32", "16 sample row(s)"]),
    "a check's status": ("UPDATE checks SET status = 'fail' WHERE \"check\" = 'large_eps'",
                         ["trust check 'large_eps' of", "status pass vs fail"]),
    "a check's details": ("UPDATE checks SET details_json = replace(details_json, '\"n\":16', '\"n\":15') "
                          "WHERE \"check\" = 'chance_level'", ["'chance_level'", "details differ: n: 16 vs 15"]),
    "a check's message": ("UPDATE checks SET message = message || '!' WHERE \"check\" = 'differentiability'",
                          ["'differentiability'", "message differs"]),
    "a missing check": ("DELETE FROM checks WHERE \"check\" = 'stochastic_model'",
                        ["1 trust check(s) only in run a: 'stochastic_model'"]),
    "evaluation info": ("UPDATE evaluations SET info_json = replace(info_json, '\"seed\":3', '\"seed\":4') "
                        "WHERE eval_key = '{clean}'", ["evaluation 'clean' on digits32", "seed: 3 vs 4"]),
    "model info": ("UPDATE models SET info_json = replace(info_json, '\"num_classes\":10', '\"num_classes\":11')",
                   [f"model {MODEL} [", "num_classes: 10 vs 11"]),
    "meta settings": ("UPDATE meta SET value_json = replace(value_json, '\"seed\":3', '\"seed\":4') "
                      "WHERE key = 'settings'", ["meta record 'settings' differs: seed: 3 vs 4"]),
}


@pytest.mark.parametrize("what", list(TAMPER))
def test_any_stored_difference_is_not_reproduced(runs, tmp_path, capsys, what):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    script, expected = TAMPER[what]
    sql(b, script.format(clean=_key(b, "clean"), attack=_key(b, "attack")))
    rc, out, err = _verify(capsys, ref, b)
    assert rc == 1 and "verdict: NOT reproduced" in out, out
    for text in expected:
        assert text in out, (text, out)
    assert err == ""


def test_timings_and_machine_paths_are_not_differences(runs, tmp_path, capsys):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    sql(b, "UPDATE checks SET details_json = json_set(details_json, '$.seconds', 99.5) WHERE \"check\" = "
           "'chance_level'; UPDATE models SET info_json = json_set(info_json, '$.checkpoint', '/elsewhere/m.safetensors')")
    rc, out, _ = _verify(capsys, ref, b)
    assert rc == 0 and "DIFF" not in out, out
    assert "INFO: model symvit_micro_patch4_32" in out and "checkpoint differs" in out


def test_an_extra_evaluation_of_the_same_suite_name_and_version(runs, tmp_path, capsys):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    more = suite(tmp_path / "more", ATTACK_SUITE + EXTRA_EVAL)  # name and version unchanged: b resumes, adding one
    assert run(more, b, "--no-report") == 0
    rc, out, _ = _verify(capsys, ref, b)
    assert rc == 1 and "1 evaluation(s) only in run b: 'attack noise eps=8/255' on digits32" in out
    assert "16 sample row(s) of" in out and "only in run b" in out


def test_tolerance_accepts_small_float_differences_only(runs, tmp_path, capsys):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    sql(b, "UPDATE samples SET confidence = confidence + 1e-7, linf = linf + 1e-7")
    assert _verify(capsys, ref, b)[0] == 1
    rc, out, _ = _verify(capsys, ref, b, "--tolerance", "1e-6")
    assert rc == 0 and "floats within 1e-06" in out
    sql(b, f"UPDATE samples SET label = (label + 1) % 10 WHERE eval_key = '{_key(b, 'clean')}' AND sample_id = "
           "(SELECT MIN(sample_id) FROM samples)")
    assert _verify(capsys, ref, b, "--tolerance", "1")[0] == 1  # integers compare exactly, always
    for bad in ("-1", "nan"):
        rc, out, err = _verify(capsys, ref, b, "--tolerance", bad)
        assert rc == 2 and err.startswith("error: --tolerance must be") and "\n" not in err.strip()


def test_many_differences_are_counted_with_the_first_few_named(runs, tmp_path, capsys):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    sql(b, "UPDATE samples SET confidence = confidence / 2")
    rc, out, _ = _verify(capsys, ref, b)
    assert rc == 1 and "16 sample(s) differ in confidence" in out and "and 11 more" in out
    assert "32 differing values" in out


def test_manifest_problems(runs, tmp_path, capsys):
    _, ref, rerun = runs
    b = copy_run(rerun, tmp_path / "b")
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text[: len(text) // 2])  # cut short
    rc, out, err = _verify(capsys, ref, b)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: the manifest {b / 'manifest.json'} is not valid JSON")
    (b / "manifest.json").write_text(text.replace('"run": 3', '"run": 4'))  # edited: seeds
    rc, out, _ = _verify(capsys, ref, b)
    assert rc == 1 and "REPRO: seeds.run differs" in out
    assert "run b's manifest.json differs from the manifest in its results.sqlite (seeds.run: 4 vs 3)" in out
    rc, _, err = _verify(capsys, ref, b / "results.sqlite")
    assert rc == 2 and "is a results store, not a manifest" in err
    (b / "manifest.json").unlink()
    rc, _, err = _verify(capsys, ref, b)
    assert rc == 2 and err.strip() == f"error: no manifest at {b / 'manifest.json'} (pass a run folder or a manifest.json)"


def test_manifests_only_and_a_missing_store(runs, tmp_path, capsys):
    _, ref, rerun = runs
    rc, out, _ = _verify(capsys, ref / "manifest.json", rerun / "manifest.json")
    assert rc == 0 and "per-sample outcomes: not compared" in out
    b = copy_run(rerun, tmp_path / "b")
    (b / "results.sqlite").unlink()
    rc, out, err = _verify(capsys, ref, b)
    assert rc == 2 and out == "" and err.strip().startswith(f"error: no results store at {b / 'results.sqlite'}")
