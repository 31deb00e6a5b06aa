"""Adaptive evaluation through the CLI: a gradient-masked ``--plugin`` model with standard and
adaptive attacks, the trust checks that flag it, the report's standard-vs-adaptive headline, and a dynamic
model without adaptive evaluation marked as such."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_rpc.store.results import ResultsStore
from tiny_runs import MICRO, RPC_MICRO, run, write_suite

PLUGIN = '''
import torch
from torch import nn
import robustbench_rpc
from robustbench_rpc.adaptive_protocol import straight_through


class Defended(nn.Module):
    """An MLP behind input quantization to 4 grey levels: zero gradient almost everywhere (the user's defense);
    quantize=False is the same network undefended (a surrogate for transfer)."""
    bpda_approximations = {"identity": "the rounding's backward is the identity"}
    bpda_backward = None

    def __init__(self, quantize=True):
        super().__init__()
        self.quantize = quantize
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        if not self.quantize:
            return self.net(x)
        q = torch.round(x * 3) / 3
        return self.net(straight_through(q, x) if self.bpda_backward == "identity" else q)


CONTRACT = dict(input_size=(3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3, num_classes=10)


@robustbench_rpc.register_model("adaptive_quantized", **CONTRACT)
def quantized(**kwargs):
    return Defended(quantize=True)


@robustbench_rpc.register_model("adaptive_unquantized", **CONTRACT)
def unquantized(**kwargs):
    return Defended(quantize=False)
'''


def _train_weights(path: Path) -> None:
    """The defended network's weights, trained on quantized digits32 (about a second)."""
    import torch
    from torch import nn

    from robustbench_rpc.data.embedded import digits32

    ds = digits32("train")
    x, y = ds.images.float(), ds.labels.long()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(200):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(net(torch.round(x[idx] * 3) / 3), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, path)


PGD = dict(kind="attack", attack="pgd", eps=["16/255"], steps=10)


def _suite(path: Path, weights: Path) -> Path:
    """Clean, PGD, BPDA and transfer (from the unquantized net) at 16/255 on the quantized plugin model."""
    return write_suite(path, dict(kind="clean"), PGD,
                       dict(kind="attack", attack="bpda", eps=["16/255"], approximation="identity",
                            base_args={"steps": 10}),
                       dict(kind="attack", attack="transfer", eps=["16/255"],
                            surrogate=f"adaptive_unquantized:{weights}", base_args={"steps": 10}),
                       name="adaptive-run", models=[f"adaptive_quantized:{weights}"], batch_size=64, seed=0, limit=64)


def _store(out: Path):
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        return s.models(), s.evaluations(), s.aggregates(), s.checks()


def test_gradient_masked_plugin_model_standard_and_adaptive(tmp_path):
    plugin, suite, out = tmp_path / "adaptive_plugin.py", tmp_path / "suite.toml", tmp_path / "run"
    plugin.write_text(PLUGIN)
    _train_weights(tmp_path / "weights.pt")
    assert run(_suite(suite, tmp_path / "weights.pt"), out, plugin=plugin) == 0
    models, evals, agg, checks = _store(out)
    assert models.iloc[0]["dynamics"] == {"kind": "static", "source": "detected",
                                          "why": models.iloc[0]["dynamics"]["why"]}
    top1 = dict(zip(evals.set_index("eval_key").loc[agg["eval_key"], "name"], agg["top1"]))
    assert top1["clean"] >= 0.8
    assert top1["pgd"] >= top1["clean"] - 0.1, "standard PGD is fooled by the masking"
    assert top1["bpda"] <= top1["pgd"] - 0.3 and top1["transfer"] <= top1["pgd"] - 0.3
    status = dict(zip(checks["check"], checks["status"]))
    message = dict(zip(checks["check"], checks["message"]))
    assert status["differentiability"] == "fail" and "'bpda'" in message["differentiability"]
    assert status["large_eps"] == "fail"
    assert status["adaptive_gap"] == "fail" and "McNemar p" in message["adaptive_gap"]
    assert status["eps_zero_identity"] == "pass" and status["softmax_output"] == "pass"
    bpda = evals[evals["name"] == "bpda"].iloc[0]
    assert bpda["params"]["approximation"] == "identity" and bpda["resolved"]["approximation"] == "identity"
    report = (out / "report.md").read_text()
    assert "Standard 16/255 (worst of PGD)" in report and "Adaptive - standard 16/255 (pp)" in report
    headline = report.split("## Headline results")[1].split("**Protocol")[0]
    assert "| adaptive_quantized (weights.pt) | static |" in headline
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["model_dynamics"]["adaptive_quantized (weights.pt)"]["kind"] == "static"


def test_dynamic_model_without_adaptive_evaluation_is_marked(tmp_path):
    suite, out = tmp_path / "suite.toml", tmp_path / "run"
    write_suite(suite, dict(kind="clean"), dict(kind="attack", attack="fgsm", eps=["2/255"]), name="dyn",
                models=[MICRO, RPC_MICRO], batch_size=16, seed=0, limit=16)
    assert run(suite, out) == 0
    models, *_ = _store(out)
    kinds = dict(zip(models["name"], [d["kind"] for d in models["dynamics"]]))
    assert kinds == {"symvit_micro_patch4_32": "static", "rpc_symvit_micro_patch4_32": "dynamic"}
    headline = (out / "report.md").read_text().split("## Headline results")[1].split("**Protocol")[0]
    assert "| rpc_symvit_micro_patch4_32 † | dynamic, not adaptively evaluated |" in headline
    assert "| symvit_micro_patch4_32 | static |" in headline
    assert "not adaptively evaluated: its robust accuracy comes from standard attacks only" in \
        (out / "report.md").read_text()


THRESHOLD_PLUGIN = '''
import torch
from torch import nn
import robustbench_rpc


class Thresholded(nn.Module):
    """The MLP behind a hard threshold, (x > 0.5).float(): no autograd graph reaches the input at all."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net((x > 0.5).float())


@robustbench_rpc.register_model("adaptive_thresholded", input_size=(3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3,
                                num_classes=10)
def thresholded(**kwargs):
    return Thresholded()
'''

def test_the_adaptive_preset_runs_on_a_model_that_cuts_the_input_graph(tmp_path):
    """The reference libraries' APGD raised "element 0 of tensors does not require grad" on such a model (a
    traceback ending the run); now every attack of the preset runs on it and the checks name the masking."""
    plugin, suite, out = tmp_path / "adaptive_threshold.py", tmp_path / "suite.toml", tmp_path / "run"
    plugin.write_text(THRESHOLD_PLUGIN)
    _train_weights(tmp_path / "weights.pt")
    write_suite(suite, PGD, dict(kind="attack", preset="adaptive", eps=["16/255"]), name="adaptive-preset-run",
                models=[f"adaptive_thresholded:{tmp_path / 'weights.pt'}"], batch_size=64, seed=0, limit=16)
    assert run(suite, out, "--no-report", plugin=plugin) == 0
    _, evals, agg, checks = _store(out)
    assert sorted(evals["name"]) == sorted(["pgd", "apgd", "apgd", "square", "bpda", "bpda", "bpda", "transfer"])
    assert len(agg) == len(evals) and (agg["n"] == 16).all()
    status = dict(zip(checks["check"], checks["status"]))
    assert status["differentiability"] == "fail"
