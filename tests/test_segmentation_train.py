"""`robustbench-rpc train` on a segmentation recipe: per-pixel CE on digits-seg64, a checkpoint the user path
loads, an interrupted training resumed to the same weights, one-line refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_rpc.cli import main
from robustbench_rpc.training.recipe import RECIPES_DIR

RECIPE = """
name = "tiny-seg-train"
version = 1
task = "segmentation"
seed = 0
[model]
name = "segmenter_linear_symvit_micro"
backbone_init = "symvit_micro_patch4_32.safetensors"
[data]
dataset = "digits-seg64"
limit = 32
[optim]
lr = 1e-3
batch_size = 16
epochs = 2
warmup_epochs = 1
[validation]
limit = 4
every = 1
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> str:
    p = tmp_path / "tiny-seg-train.toml"
    p.write_text(text)
    return str(p)


def test_train_then_evaluate_the_checkpoint_and_resume_to_the_same_weights(tmp_path, capsys):
    from robustbench_rpc.models import load_model
    from robustbench_rpc.training.seg_train import train_segmentation

    recipe = _recipe(tmp_path)
    whole = tmp_path / "whole"
    assert main(["train", "--recipe", recipe, "--out", str(whole), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2: loss" in out and "val mIoU" in out and "checkpoint:" in out
    model = load_model("segmenter_linear_symvit_micro", checkpoint=str(whole / "last.safetensors"))
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 11, 64, 64)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/2"):  # logged after the epoch's files are written
            raise Stop

    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        train_segmentation(recipe, {}, cut, device="cpu", log=stop_after_first_epoch)
    assert main(["train", "--recipe", recipe, "--out", str(cut), "--device", "cpu"]) == 0
    assert "resuming after epoch 1/2" in capsys.readouterr().out
    a = load_model("segmenter_linear_symvit_micro", checkpoint=str(whole / "last.safetensors"))
    b = load_model("segmenter_linear_symvit_micro", checkpoint=str(cut / "last.safetensors"))
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_another_recipe_into_the_same_folder_is_one_line(tmp_path, capsys):
    recipe = _recipe(tmp_path, RECIPE.replace("epochs = 2", "epochs = 1"))
    out = tmp_path / "o"
    assert main(["train", "--recipe", recipe, "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["train", "--recipe", recipe, "--lr", "0.01", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a training of another recipe" in err


@pytest.mark.parametrize("edit, message", [
    (("limit = 32", "limt = 32"), "unknown key 'data.limt'"),
    (('name = "segmenter_linear_symvit_micro"', 'name = "symvit_micro_patch4_32"'), "is a classification model"),
    (('backbone_init = "symvit_micro_patch4_32.safetensors"', 'backbone_init = "nope.safetensors"'),
     "model.backbone_init: no checkpoint file nope.safetensors"),
])
def test_bad_segmentation_recipes_are_one_line(tmp_path, capsys, edit, message):
    recipe = _recipe(tmp_path, RECIPE.replace(*edit))
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_shipped_segmentation_checkpoints_hold_their_recipes():
    from robustbench_rpc.models.checkpoint import PACKAGED_DIR, read_checkpoint_metadata
    from robustbench_rpc.training.seg_train import build_seg_recipe

    for name in ("segmenter_linear_symvit_micro", "segmenter_linear_rpc_symvit_micro"):
        recipe = build_seg_recipe(name, {})
        assert recipe["name"] == name and recipe["model"]["name"] == name
        assert (RECIPES_DIR / f"{name}.toml").is_file()
        meta = read_checkpoint_metadata(PACKAGED_DIR / f"{name}.safetensors")
        assert meta["recipe"] == recipe and meta["task"] == "segmentation"  # trained by that very recipe
