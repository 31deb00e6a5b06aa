"""The training datasets: CIFAR-10 as torchvision / RobustBench store it, the ImageNet train layout, and
augmentation that is deterministic given the seed (per image and epoch for on-disk sets)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.data.imagenet_classes import IMAGENET_WNIDS
from robustbench_rpc.training import RecipeError, Settings, build_recipe, train
from robustbench_rpc.training.data import crop_flip, shift
from robustbench_rpc.training.folders import AugmentedImages, train_transform

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2}
QUICK = {"optim.epochs": 1, "validation.steps": 1, "validation.limit": 8}


def _fake_cifar10(root: Path, per_batch: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def test_cifar10_in_torchvisions_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    root = _fake_cifar10(tmp_path / "data")
    # our fake files cannot have the real files' md5s: torchvision's integrity check is what is bypassed here
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    r = build_recipe(None, {"model.name": "symvit_micro_patch4_32", "model.kwargs": TINY, "data.dataset": "cifar10",
                            "data.root": str(root / "cifar-10-batches-py"), **QUICK})
    res = train(r, tmp_path / "o", Settings(progress=False), log=lambda _: None)
    from robustbench_rpc.models import read_checkpoint_metadata

    meta = read_checkpoint_metadata(res["last_checkpoint"])
    assert meta["data"]["n_train"] == 40 and meta["data"]["augment"] == "pad 4 + crop + flip"
    assert meta["data"]["validation"] == "cifar10-test" and res["n_val"] == 8


def test_missing_cifar_is_one_line(tmp_path):
    r = build_recipe(None, {"model.name": "symvit_micro_patch4_32", "data.dataset": "cifar100",
                            "data.root": str(tmp_path), **QUICK})
    with pytest.raises(RecipeError, match="cifar100: no readable cifar-100-python under") as e:
        train(r, tmp_path / "o", Settings(progress=False), log=lambda _: None)
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


def _jpegs(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.JPEG")


def test_imagenet_train_layout(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 6), ("val", 2)):
        for w in IMAGENET_WNIDS:
            (root / split / w).mkdir(parents=True)
        for k, w in enumerate(IMAGENET_WNIDS[:2]):
            _jpegs(root / split / w, n, seed=k)
    r = build_recipe(None, {"model.name": "symvit_micro_patch4_32", "model.kwargs": {**TINY, "num_classes": 1000},
                            "data.dataset": "imagenet", "data.root": str(root), **QUICK})
    res = train(r, tmp_path / "o", Settings(progress=False, workers=0), log=lambda _: None)
    from robustbench_rpc.models import read_checkpoint_metadata

    meta = read_checkpoint_metadata(res["last_checkpoint"])
    assert meta["data"]["n_train"] == 12 and meta["data"]["augment"] == "rrc-flip"
    assert meta["data"]["validation"].startswith("imagenet val") and res["n_val"] == 4
    (root / "train" / "n99999999").mkdir()
    with pytest.raises(RecipeError, match="ImageNet train: class folders in .* do not match the 1000 expected "
                                          "classes; unexpected folders \\(1\\): n99999999"):
        train(r, tmp_path / "o2", Settings(progress=False, workers=0), log=lambda _: None)


def test_augmentation_is_deterministic_given_the_seed(tmp_path):
    x = torch.rand(6, 3, 32, 32)
    a = crop_flip(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, crop_flip(x, 4, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, crop_flip(x, 4, torch.Generator().manual_seed(2)))
    assert torch.equal(shift(x, 0, torch.Generator()), x)
    _jpegs(tmp_path / "c", 3, seed=0)
    samples = [(str(p), 0) for p in sorted((tmp_path / "c").iterdir())]
    cfg = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0}
    ds = AugmentedImages(samples, train_transform("rrc-flip", cfg, 4), seed=7)
    n = len(ds)
    state = torch.get_rng_state()
    first = ds[1 * n + 2][0]  # epoch 1, image 2
    assert torch.equal(torch.get_rng_state(), state)  # the trainer's RNG is left alone
    assert torch.equal(first, ds[1 * n + 2][0]) and not torch.equal(first, ds[2 * n + 2][0])
    assert first.shape == (3, 32, 32)
