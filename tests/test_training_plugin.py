"""The researcher's path: an attention variant of my own in a plug-in file, trained clean and
adversarially on digits32 and on a small image folder, then evaluated with ``run`` and nothing else to say."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from robustbench_rpc.cli.commands import main
from robustbench_rpc.data import digits32
from robustbench_rpc.models import CheckpointError, load_model, read_checkpoint_metadata, sha256_of
from robustbench_rpc.models.trained import apply_recorded_attention
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import write_suite

PLUGIN = '''
import math

import torch
from torch import nn

from robustbench_rpc.attention import register_attention
from robustbench_rpc.attention.symmetric import SymmetricAttention


@register_attention("test_tempered")
class TemperedAttention(SymmetricAttention):
    """Symmetric attention with a learned temperature per head: softmax(K K^T / (sqrt(d) tau_h)) V."""

    def __init__(self, dim, num_heads=8, tau0=1.0, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.tau0 = float(tau0)
        self.log_tau = nn.Parameter(torch.full((num_heads, 1, 1), math.log(self.tau0)))

    def mix(self, k, v):
        return ((k @ k.transpose(-2, -1)) * self.scale / self.log_tau.exp()).softmax(-1) @ v

    def variant_params(self):
        return {"tau0": self.tau0}
'''
TINY = ["--model-arg", "embed_dim=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2"]
SMALL = ["--epochs", "1", "--set", "validation.steps=2", "--no-progress"]
@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "tempered_attention.py"
    path.write_text(PLUGIN)
    return str(path)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> str:
    path = write_suite(tmp_path_factory.mktemp("suite") / "tiny.toml", dict(kind="clean"),
                       dict(kind="attack", attack="pgd", eps=["8/255"], steps=2), models=None, batch_size=16, seed=0,
                       limit=32)
    return str(path)


def _train(plugin: str, out: Path, *args: str, model: tuple[str, ...] = tuple(TINY)) -> dict:
    rc = main(["--plugin", plugin, "train", "--model", "symvit_micro_patch4_32", *model, "--attention", "test_tempered",
               "--attention-arg", "tau0=2", *SMALL, *args, "--out", str(out)])
    assert rc == 0
    return read_checkpoint_metadata(out / "last.safetensors")


def _run(plugin: str, suite: str, spec: str, out: Path, *args: str):
    assert main(["--plugin", plugin, "run", "--suite", suite, "--model", spec, "--out", str(out), "--no-progress",
                 "--no-report", "--device", "cpu", *args]) == 0
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        evals = s.evaluations()
        clean = set(evals.loc[evals["kind"] == "clean", "eval_key"])
        samples = s.samples()
        return s.models().iloc[0], samples[samples["eval_key"].isin(clean)]


def test_plugin_variant_trained_clean_then_adversarially_on_digits32_and_evaluated(plugin, suite, tmp_path):
    # the variant patched into the shipped SymViT weights (its temperature is new), then trained with them
    clean = _train(plugin, tmp_path / "clean", "--init", "symvit_micro_patch4_32.safetensors", "--lr", "1e-3",
                   "--set", "data.limit=128", "--set", "validation.limit=32", model=())
    assert clean["build"]["attention"] == {"variant": "test_tempered", "layers": "all", "args": {"tau0": 2},
                                           "reinit": []}
    assert clean["build"]["plugins"] == [plugin]
    weights = load_file(tmp_path / "clean" / "last.safetensors")
    assert not torch.allclose(weights["blocks.0.attn.log_tau"], torch.full((4, 1, 1), 0.6931), atol=1e-4)  # learned
    # adversarial fine-tuning of the plug-in model from its own checkpoint
    adv = _train(plugin, tmp_path / "adv", "--init", str(tmp_path / "clean" / "last.safetensors"),
                 "--objective", "pgd-at", "--set", "objective.steps=2", "--lr", "1e-4", "--set", "data.limit=128",
                 "--set", "validation.limit=32", model=())
    assert adv["init"]["sha256"] == sha256_of(tmp_path / "clean" / "last.safetensors")
    assert adv["recipe"]["objective"]["name"] == "pgd-at"
    # run evaluates it as trained: the variant rebuilt from the metadata, the same clean accuracy on the same images
    info, samples = _run(plugin, suite, f"symvit_micro_patch4_32:{tmp_path / 'adv' / 'last.safetensors'}",
                            tmp_path / "run")
    assert [g["variant"] for g in info["attention"]["groups"]] == ["test_tempered"]
    assert len(samples) == 32  # the suite's 32 images are the validation's 32 (both stratified)
    assert samples["correct1"].mean() == pytest.approx(adv["metrics"][-1]["clean_acc"]) and \
        adv["metrics"][-1]["clean_acc"] > 0.5


def test_a_missing_plugin_names_the_file_the_training_loaded(tmp_path):
    model = load_model("symvit_micro_patch4_32").model
    build = {"model": "symvit_micro_patch4_32", "attention": {"variant": "someone_elses_variant", "layers": "all"},
             "plugins": ["/home/me/my_attention.py"]}
    with pytest.raises(CheckpointError, match="'someone_elses_variant', which is not registered: pass the plug-in "
                                              "that defines it \\(the training loaded --plugin "
                                              "/home/me/my_attention.py"):
        apply_recorded_attention(model, build, "x.safetensors", "symvit_micro_patch4_32")


def _image_folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    ds = digits32("train")
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        picks = (ds.labels == c).nonzero().flatten()[:per_class]
        for i in picks.tolist():
            arr = (ds.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i:04d}.png")
    return root


def test_plugin_variant_trained_adversarially_on_an_image_folder_and_evaluated(plugin, suite, tmp_path):
    images = _image_folder(tmp_path / "images")
    common = ["--dataset", "folder", "--data-root", str(images), "--model-arg", "num_classes=3", "--workers", "0"]
    meta = _train(plugin, tmp_path / "pgdat", *common, "--objective", "pgd-at", "--set", "objective.steps=2")
    assert meta["data"]["validation"].startswith("folder (held out 0.1")  # 3 of 30 images, one per class
    assert meta["metrics"][-1]["n_val"] == 3 and meta["data"]["n_train"] == 27
    meta = _train(plugin, tmp_path / "trades", *common, "--objective", "trades", "--set", "objective.steps=2",
                  "--set", "objective.beta=3")
    assert meta["recipe"]["objective"]["beta"] == 3.0
    info, samples = _run(plugin, suite, f"symvit_micro_patch4_32:{tmp_path / 'trades' / 'last.safetensors'}",
                            tmp_path / "run", "--dataset", "folder", "--data-root", f"folder={images}")
    assert [g["variant"] for g in info["attention"]["groups"]] == ["test_tempered"]
    assert set(samples["label"]) == {0, 1, 2}
