"""robustbench_rpc.benchmark(): an nn.Module in memory through the whole harness; the guide's example as written."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import robustbench_rpc
from robustbench_rpc.models import ModelContractError
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import suite_text

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "running.md"  # its "From a notebook" section
SUITE = suite_text(dict(kind="clean"),
                   dict(kind="corruption", source="on-the-fly", corruptions=["contrast"], severities=[3]),
                   name="api-tiny", version=None, models=None, batch_size=16, limit=16)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def test_notebook_guide_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = GUIDE.read_text()
    section = text[text.index("## From a notebook\n"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "robustbench_rpc.benchmark(net" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/running.md", "exec"), scope)  # noqa: S102 - the guide's own example
    res = scope["res"]
    assert isinstance(res.headline, pd.DataFrame) and len(res.headline) == 1
    assert isinstance(res.tables["clean"], pd.DataFrame) and (res.out / "index.html").is_file()
    assert res.out == Path("runs/notebook") and (tmp_path / "runs/notebook/results.sqlite").is_file()
    assert str(res.out / "index.html") in capsys.readouterr().out


def test_module_is_evaluated_on_unit_images_and_resumes(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    net = _net()
    cfg = {"input_size": (3, 32, 32), "num_classes": 10}
    res = robustbench_rpc.benchmark(net, suite=str(suite), data_config=cfg, out=tmp_path / "o", device="cpu",
                                    report=False)
    with ResultsStore(res.out / "results.sqlite", readonly=True) as s:
        models, units = s.models(), s.units()
        clean_key = s.evaluations().query("kind == 'clean'")["eval_key"].iloc[0]
        rows = s.samples(eval_key=clean_key)
    assert len(models) == 1 and models["name"].iloc[0].startswith("module_sequential_")
    assert models["mean"].iloc[0] == [0.0, 0.0, 0.0] and models["std"].iloc[0] == [1.0, 1.0, 1.0]
    from robustbench_rpc.data import digits32

    ds = digits32("test")
    by_id = {int(ds[i][2]): i for i in range(len(ds))}
    x = torch.stack([ds[by_id[int(i)]][0] for i in rows["sample_id"]])
    with torch.no_grad():
        assert list(rows["pred"]) == net(x).argmax(1).tolist()  # the module itself, on [0, 1] images
    clean = res.tables["clean"]
    assert clean["n"].iloc[0] == 16
    again = robustbench_rpc.benchmark(net, suite=str(suite), data_config=cfg, out=tmp_path / "o", device="cpu",
                                      report=False)
    with ResultsStore(again.out / "results.sqlite", readonly=True) as s:
        assert s.units().equals(units) and len(s.models()) == 1  # same weights, same model: resumed, not redone


def test_contract_is_required_and_names_are_accepted(tmp_path):
    with pytest.raises(ModelContractError, match="declares no evaluation contract"):
        robustbench_rpc.benchmark(_net(), suite="smoke", out=tmp_path / "x")
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    res = robustbench_rpc.benchmark("symvit_micro_patch4_32:packaged", suite=str(suite), out=tmp_path / "n",
                                    device="cpu", report=False)
    assert res.headline.iloc[0, 0] == "symvit_micro_patch4_32"
    # a different module: a different name, so never mixed into another module's results
    other = robustbench_rpc.api.register_module(_net(seed=1), {"input_size": (3, 32, 32), "num_classes": 10})
    same = robustbench_rpc.api.register_module(_net(seed=0), {"input_size": (3, 32, 32), "num_classes": 10})
    assert other != same and same == robustbench_rpc.api.register_module(_net(seed=0),
                                                                           {"input_size": 32, "num_classes": 10})
