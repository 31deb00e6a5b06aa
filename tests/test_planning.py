"""Planning faults the house reorganisation fixed, each replayed through the user's path."""
import json
import sqlite3

import pytest

import robustbench_rpc  # noqa: F401
from robustbench_rpc.cli.commands import main
from robustbench_rpc.data import subsets
from robustbench_rpc.evalspec import SuiteError
from robustbench_rpc.evaluation.plan import Plan, RunConfig

HEAD = "symvit_micro_patch4_32+linear:packaged"
CLEAN_SUITE = 'name = "t"\n[defaults]\nlimit = 8\nbatch_size = 8\n[[evaluation]]\nkind = "clean"\n'


def _stored_model_infos(out):
    with sqlite3.connect(out / "results.sqlite") as con:
        return [json.loads(r[0]) for r in con.execute("SELECT info_json FROM models")]


def test_head_model_uses_the_given_contract(tmp_path):
    """--mean/--std on a BACKBONE+HEAD model were checked in planning, then dropped at load."""
    suite = tmp_path / "s.toml"
    suite.write_text(CLEAN_SUITE)
    out = tmp_path / "run"
    rc = main(["run", "--suite", str(suite), "--model", HEAD, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
               "--out", str(out), "--no-report", "--no-progress"])
    assert rc == 0
    (info,) = _stored_model_infos(out)
    assert info["mean"] == [0.5, 0.5, 0.5] and info["std"] == [0.25, 0.25, 0.25]


def test_head_model_passes_trusted_globals_to_its_backbone(monkeypatch):
    import robustbench_rpc.heads.model as head_model
    import robustbench_rpc.models as models

    seen = []
    real = head_model.load_checkpoint

    def spy(model, path, **kw):
        seen.append(kw.get("trusted_globals"))
        return real(model, path, **kw)

    monkeypatch.setattr(head_model, "load_checkpoint", spy)  # where the head form loads its backbone
    models.load_model(HEAD, trusted_globals=["numpy.dtype"])
    assert seen == [["numpy.dtype"]]


def test_diagnose_limit_is_the_runs_stratified_limit(tmp_path, monkeypatch):
    """`diagnose --limit N` took the first N images while `run --limit N` spreads N over the classes."""
    import robustbench_rpc.diagnostics as diagnostics

    seen = {}

    def capture(model, dataset, **kw):
        seen["ids"] = subsets.sample_ids(dataset)
        return [], []

    monkeypatch.setattr(diagnostics, "diagnose_inputs", capture)
    monkeypatch.setattr(diagnostics, "write_outputs", lambda rows, axes, out, plots: {"csv": tmp_path / "none.csv"})
    monkeypatch.setattr("robustbench_rpc.cli.commands._print_pap_summary", lambda csv: None)
    assert main(["diagnose", "--model", "rpc_symvit_micro_patch4_32:packaged", "--limit", "20",
                 "--out", str(tmp_path / "d")]) == 0
    plan = Plan(RunConfig(suite="quick", models=["rpc_symvit_micro_patch4_32:packaged"], limit=20,
                          out=tmp_path / "r"), log=lambda *_: None)
    assert seen["ids"] == subsets.sample_ids(plan.base_dataset("digits32"))
    labels = subsets.labels_of(plan.base_dataset("digits32"))
    assert len(set(labels)) == 10  # the first 20 digits32 images cover fewer classes unevenly


def test_plan_is_frozen_once_validated(tmp_path):
    plan = Plan(RunConfig(suite="quick", limit=8, out=tmp_path / "o"), log=lambda *_: None)
    with pytest.raises(AttributeError, match="frozen"):
        plan.batch_size = 3


def test_run_config_from_the_cli_flags_names_every_field():
    """RunConfig.from_args reads every field from the run command's flags (no field re-spelled by hand)."""
    import dataclasses

    from robustbench_rpc.cli.commands import build_parser

    args = build_parser().parse_args(["run", "--model", "a", "--model-arg", "x=1", "--data-root", "folder=/d",
                                      "--mean", "0.5,0.5,0.5", "--batch-size", "4", "--no-report"])
    cfg = RunConfig.from_args(args)
    assert cfg.models == ["a"] and cfg.model_kwargs == {"x": 1} and cfg.data_roots == {"folder": "/d"}
    assert cfg.data_config == {"mean": "0.5,0.5,0.5"} and cfg.batch_size == 4 and cfg.report is False
    defaults = RunConfig()
    untouched = [f.name for f in dataclasses.fields(RunConfig)
                 if getattr(RunConfig.from_args(build_parser().parse_args(["run"])), f.name)
                 != getattr(defaults, f.name)]
    assert untouched == [], f"flag defaults differ from RunConfig's: {untouched}"


@pytest.mark.parametrize("bad,match", [
    ('batch_size = 12.7', "batch_size must be a whole number"),
    ('batch_size = "abc"', "batch_size must be a whole number"),
    ('limit = true', "limit must be a whole number"),
    ('seed = "x"', "seed must be a whole number"),
    ('data_roots = "x"', "data_roots must be a table"),
])
def test_suite_defaults_of_the_wrong_type_are_refused(tmp_path, bad, match):
    suite = tmp_path / "s.toml"
    suite.write_text(CLEAN_SUITE.replace("[defaults]\n", f"[defaults]\n{bad}\n").replace(
        "limit = 8\n", "" if bad.startswith("limit") else "limit = 8\n").replace(
        "batch_size = 8\n", "" if bad.startswith("batch_size") else "batch_size = 8\n"))
    with pytest.raises(SuiteError, match=match):
        Plan(RunConfig(suite=str(suite), out=tmp_path / "o"), log=lambda *_: None)


def test_cli_batch_size_zero_is_refused_not_ignored(tmp_path):
    with pytest.raises(SuiteError, match="--batch-size must be >= 1"):
        Plan(RunConfig(suite="quick", batch_size=0, out=tmp_path / "o"), log=lambda *_: None)


def test_unknown_model_arg_is_one_line(tmp_path, capsys):
    rc = main(["run", "--suite", "quick", "--model", "symvit_micro_patch4_32:packaged", "--model-arg", "bogus=1",
               "--limit", "8", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bogus" in err and "symvit_micro_patch4_32" in err


def test_limit_under_a_suite_that_lists_its_images_takes_the_lists_first_n(tmp_path):
    """RobustBench's n_examples: the first N ids of its list, in the list's order (not a stratified draw)."""
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(str(i) for i in (981, 5, 851, 12, 48, 1)) + "\n")
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "t"\n[defaults]\nmodels = ["symvit_micro_patch4_32:packaged"]\nsubset = "{listing}"\n'
                     '[[evaluation]]\nkind = "clean"\n')
    plan = Plan(RunConfig(suite=str(suite), limit=3, out=tmp_path / "o"), log=lambda *_: None)
    assert plan.subset_entries == ["981", "5", "851"] and plan.limit is None
    assert sorted(subsets.sample_ids(plan.base_dataset("digits32"))) == [5, 851, 981]
    with pytest.raises(SuiteError, match="both choose the images"):
        Plan(RunConfig(suite=str(suite), limit=3, subset=str(listing), out=tmp_path / "o"), log=lambda *_: None)
