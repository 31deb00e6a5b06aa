import pytest

from robustbench_rpc.evalspec import SuiteError, eps_label, parse_eps
from robustbench_rpc.evaluation.suite import expand, list_suites, load_suite, suite_from_dict


def test_packaged_suites_validate_and_expand():
    assert {"quick", "paper", "robustbench"} <= set(list_suites())
    quick = expand(load_suite("quick"), "digits32")
    kinds = {e.kind for e in quick}
    assert kinds == {"clean", "attack", "corruption", "ood"}
    pgd = [e for e in quick if e.name == "pgd"]
    assert [round(e.params["eps"] * 255) for e in pgd] == [1, 2, 4, 8, 16]
    paper = expand(load_suite("paper"), "imagenet")
    fgsm = sorted(round(e.params["eps"] * 255) for e in paper if e.name == "fgsm")
    assert fgsm == [1, 2, 3, 4, 5, 6]
    pgd = [e for e in paper if e.name == "pgd"]
    assert all(e.params["steps"] == 20 and e.params["alpha"] == pytest.approx(0.15 * e.params["eps"]) for e in pgd)
    assert sum(e.kind == "corruption" for e in paper) == 75
    assert len({e.key for e in paper}) == len(paper)


def test_eps_parsing():
    assert parse_eps("4/255", "x") == pytest.approx(4 / 255)
    assert parse_eps(0.5, "x") == 0.5
    assert eps_label(4 / 255) == "4/255" and eps_label(0.5) == "0.5"
    with pytest.raises(SuiteError, match="eps 'four'"):
        parse_eps("four", "suite.toml")


def _raw(**ev):
    return {"name": "t", "evaluation": [ev]}


@pytest.mark.parametrize("raw,match", [
    (_raw(kind="clen"), "did you mean clean"),
    (_raw(kind="attack", attack="pgdd", eps=["1/255"]), "unknown attack 'pgdd'.*pgd"),
    (_raw(kind="corruption", corruptions=["gaussian_nose"]), "unknown corruption 'gaussian_nose'.*gaussian_noise"),
    (_raw(kind="corruption", severities=[0, 6]), "severities must be within 1..5"),
    (_raw(kind="clean", datset="x"), "unknown key 'datset'.*dataset"),
    ({"name": "t", "evaluation": [{"kind": "clean"}], "defaults": {"batchsize": 3}}, "unknown key 'batchsize'"),
    ({"name": "t"}, "missing required key 'evaluation'"),
    ({"name": "t", "version": "one", "evaluation": [{"kind": "clean"}]}, "version must be a whole number >= 1"),
    ({"name": "t", "version": 1.5, "evaluation": [{"kind": "clean"}]}, r"version must be .*got 1\.5"),
    ({"name": 3, "evaluation": [{"kind": "clean"}]}, "name must be a non-empty string, got 3"),
])
def test_bad_suites_name_the_problem(raw, match):
    with pytest.raises(SuiteError, match=match):
        expand(suite_from_dict(raw, "my.toml"), "digits32")


def test_unknown_suite_and_bad_toml(tmp_path):
    with pytest.raises(SuiteError, match="Did you mean: quick"):
        load_suite("quik")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SuiteError, match="bad.toml: invalid TOML"):
        load_suite(bad)


@pytest.mark.parametrize("ev,match", [
    (dict(kind="attack", attack="pgd", eps=[]), r"my.toml \[\[evaluation\]\] #1: attack pgd: eps is an empty list"),
    (dict(kind="attack", attack="pgd", eps=["-1/255"]), r"my.toml .*eps of attack 'pgd' must be finite and >= 0"),
    (dict(kind="attack", attack="fgsm", eps=[8]), r"my.toml .*eps=8 is beyond the Linf range.*did you mean '8/255'"),
    (dict(kind="attack", preset="pixel", eps=[]), r"my.toml .*eps is an empty list"),
])
def test_bad_eps_lists_are_refused(ev, match):
    with pytest.raises(SuiteError, match=match):
        expand(suite_from_dict(_raw(**ev), "my.toml"), "digits32")


def test_large_eps_is_fine_where_the_range_allows_it():
    # normalized-space Linf budgets exceed 1 legitimately (1/std ~ 4.4); L2 budgets are not bounded by 1
    evs = expand(suite_from_dict({"name": "t", "evaluation": [
        dict(kind="attack", attack="fgsm", eps=[2.0], space="normalized", clip=False),
        dict(kind="attack", attack="pgd", eps=[3.0], norm="L2")]}, "my.toml"), "digits32")
    assert [e.params["eps"] for e in evs] == [2.0, 3.0]
