"""The `robustbench` suites against RobustBench's own loaders (PyPI robustbench 1.1.1 = RobustBench/robustbench
78fcc9e), on small trees built here: the images selected, their order-free identity, labels and preprocessing
(bit-identical tensors), ImageNet-C with the same ids, CIFAR-10 / CIFAR-10-C's .npy layout, and RobustBench's
corruption aggregate and mCE against AlexNet's rows.

robustbench 1.1.1 installs with ``pip install --no-deps robustbench==1.1.1`` (its pins, timm==1.0.9 and gdown,
would downgrade ours; the Makefile does this). Two import-time shims, nothing in its loaders: its
``loaders.py`` imports ``pkg_resources`` (gone from setuptools >= 81) for ``resource_filename``, and its
``eval.py`` imports ``autoattack`` (the git package's module name) while its PyPI metadata installs
``pyautoattack``, the same code under another name.
"""
from __future__ import annotations

import importlib
import importlib.resources
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.cli import commands as cli
from robustbench_rpc import metrics
from robustbench_rpc.data import robustbench as rbdata
from robustbench_rpc.data.imagenet_classes import IMAGENET_WNIDS
from robustbench_rpc.data.subsets import SubsetError, read_subset_file, sample_ids
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.evaluation.suite import expand, load_suite
from tiny_runs import suite_text


def robustbench_modules(*names: str) -> list[types.ModuleType]:
    """robustbench's modules ``names``, imported with the two shims above; skipped where robustbench is not
    installed."""
    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench not installed (pip install --no-deps robustbench==1.1.1)")
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            # pkg_resources.resource_filename(module, path): path relative to that module's folder
            shim.resource_filename = lambda mod, name: str(Path(sys.modules[mod].__file__).parent / name)
            sys.modules["pkg_resources"] = shim
    if importlib.util.find_spec("autoattack") is None:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [importlib.import_module(name) for name in names]


def _robustbench():
    """robustbench.data."""
    return robustbench_modules("robustbench.data")[0]


def _jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def _imagenet_tree(root: Path, n: int, side: tuple[int, int] | None, seed: int) -> list[str]:
    """root/<all 1000 wnids>/ with the first n of RobustBench's list as JPEGs (random sizes unless ``side``)
    plus decoys RobustBench does not list; returns the listed relative paths."""
    rng = np.random.default_rng(seed)
    for w in IMAGENET_WNIDS:
        (root / w).mkdir(parents=True, exist_ok=True)
    listed = rbdata.imagenet_test_ids(n)
    for i, rel in enumerate(listed):
        _jpeg(root / rel, rng, side or (int(rng.integers(230, 330)), int(rng.integers(230, 330))))
    for rel in (f"{listed[0].split('/')[0]}/ILSVRC2012_val_99999998.JPEG", f"{IMAGENET_WNIDS[0]}/ILSVRC2012_val_99999999.JPEG"):
        _jpeg(root / rel, rng, side or (250, 260))
    return listed


@pytest.fixture(scope="module")
def cnn224():
    """A small 1000-class model at 224 px, contract = RobustBench's Res256Crop224 (crop_pct 0.875, bilinear)."""
    import robustbench_rpc

    name = "rbproto_cnn224"
    from robustbench_rpc.models import MODELS

    if name not in MODELS:
        @robustbench_rpc.register_model(name, input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.25,) * 3,
                                        num_classes=1000, interpolation="bilinear", crop_pct=0.875)
        def _cnn(**kwargs):
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, 1000))
    return name


def _plan(tmp_path: Path, suite_text: str, **cfg):
    from robustbench_rpc.evaluation.plan import Plan, RunConfig

    suite = tmp_path / "suite.toml"
    suite.write_text(suite_text)
    return Plan(RunConfig(suite=str(suite), device="cpu", **cfg), log=lambda *a: None)


def _items(ds) -> dict[str, tuple[torch.Tensor, int, int]]:
    """relative path -> (image, label, sample_id) of a (Subset of an) image folder."""
    base, positions = (ds.dataset, ds.indices) if isinstance(ds, torch.utils.data.Subset) else (ds, range(len(ds)))
    out = {}
    for pos in positions:
        path = Path(base.samples[pos][0])
        x, y, sid = base[pos]
        out[f"{path.parent.name}/{path.name}"] = (x, y, sid)
    return out


# ---------------------------------------------------------------------------------------------- data

def test_shipped_imagenet_list_is_robustbenchs_in_its_order():
    _robustbench()
    theirs = (importlib.resources.files("robustbench") / "helper_files" / "imagenet_test_image_ids.txt").read_text()
    ours = rbdata.imagenet_test_ids()
    assert ours == [line.strip() for line in theirs.splitlines() if line.strip()]
    assert len(ours) == 5000 and ours != sorted(ours)  # RobustBench's order, not the folder order
    per_class = np.bincount([IMAGENET_WNIDS.index(p.split("/")[0]) for p in ours], minlength=1000)
    assert per_class.max() > 5 and per_class.min() < 5  # a random draw, not 5 per class
    assert read_subset_file("robustbench-imagenet-5000") == ours
    assert read_subset_file("robustbench-imagenet-5000:7") == ours[:7]
    assert read_subset_file("first-3") == ["0", "1", "2"]
    for bad in ("robustbench-imagenet-5000:0", "robustbench-imagenet-5000:x", "first-0"):
        with pytest.raises(SubsetError, match="--subset"):
            read_subset_file(bad)
    license_file = importlib.resources.files("robustbench_rpc.data") / "robustbench_files" / "LICENSE-robustbench.txt"
    assert "MIT" in license_file.read_text() and "Copyright (c) 2020 Francesco Croce" in license_file.read_text()


def test_preprocessings_equal_robustbenchs():
    rb = _robustbench()
    rng = np.random.default_rng(0)
    assert set(rb.PREPROCESSINGS) == set(rbdata.PREPROCESSINGS)
    for w, h in ((300, 400), (512, 300), (224, 224), (290, 291)):
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for name, theirs in rb.PREPROCESSINGS.items():
            assert torch.equal(rbdata.PREPROCESSINGS[name](img), theirs(img)), (name, w, h)
    contract = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear"}
    assert rbdata.robustbench_preprocessing(contract) == "Res256Crop224"
    assert rbdata.robustbench_preprocessing({**contract, "interpolation": "bicubic"}) == "BicubicRes256Crop224"
    assert rbdata.robustbench_preprocessing({**contract, "crop_pct": 0.9}) is None  # timm's ViT default: not RB's


# ----------------------------------------------------------------------------------- ImageNet (+ -C)

IMAGENET_SUITE = suite_text(dict(kind="clean"), dict(kind="corruption", source="imagenet-c",
                                                      corruptions=["fog", "shot_noise"], severities=[2]),
                            name="rb-imagenet-tiny", version=None, dataset="imagenet", models=None, batch_size=4)


def test_imagenet_and_imagenet_c_selection_and_preprocessing_equal_load_imagenet(tmp_path, cnn224):
    rb = _robustbench()
    n = 10
    listed = _imagenet_tree(tmp_path / "val", n, None, seed=1)
    for c in ("fog", "shot_noise"):  # ImageNet-C: the same files, released as 224 x 224
        _imagenet_tree(tmp_path / "ImageNet-C" / c / "2", n, (224, 224), seed=2)
    plan = _plan(tmp_path, IMAGENET_SUITE, models=[cnn224], subset=f"robustbench-imagenet-5000:{n}",
                 data_roots={"imagenet": str(tmp_path / "val"), "imagenet-c": str(tmp_path / "ImageNet-C")})
    ours = _items(plan.base_dataset("imagenet"))
    assert sorted(ours) == sorted(listed)  # exactly RobustBench's first n, decoys left out
    x_rb, y_rb = rb.load_imagenet(n_examples=n, data_dir=str(tmp_path), transforms_test=rb.PREPROCESSINGS["Res256Crop224"])
    for i, rel in enumerate(listed):
        x, y, _ = ours[rel]
        assert torch.equal(x, x_rb[i]) and y == int(y_rb[i]), rel
    clean_ids = {rel: sid for rel, (_, _, sid) in ours.items()}
    prep = {e.kind: plan.eval_info(e)["preprocessing"]["robustbench"] for e in plan.evals}
    assert prep == {"clean": "Res256Crop224", "corruption": "Res224"}  # recorded for the leaderboard
    for e in plan.evals:
        if e.kind != "corruption":
            continue
        c = e.params["corruption"]
        corrupted = _items(plan.dataset_for(e))
        x_c, y_c = rb.load_imagenetc(n_examples=n, severity=2, data_dir=str(tmp_path), corruptions=[c],
                                     prepr=rb.PREPROCESSINGS["Res224"])
        for i, rel in enumerate(listed):
            x, y, sid = corrupted[rel]
            assert sid == clean_ids[rel]  # the clean image's id: paired with the clean evaluation
            assert torch.equal(x, x_c[i]) and y == int(y_c[i]), (c, rel)


def test_packaged_robustbench_suites_are_robustbenchs_protocol():
    imagenet = load_suite("robustbench")
    assert imagenet.defaults["subset"] == "robustbench-imagenet-5000" and "limit" not in imagenet.defaults
    evals = expand(imagenet, "imagenet")
    attacks = [e for e in evals if e.kind == "attack"]
    assert [(e.name, e.params["norm"], e.params["eps"], e.params["version"]) for e in attacks] == [
        ("autoattack", "Linf", 4 / 255, "standard")]
    corr = {(e.params["corruption"], e.params["severity"]) for e in evals if e.kind == "corruption"}
    assert corr == {(c, s) for c in rbdata.CORRUPTIONS for s in range(1, 6)}
    assert {e.params["source"] for e in evals if e.kind == "corruption"} == {"imagenet-c"}
    for name, dataset, threats in (("robustbench-cifar10", "cifar10", {("Linf", 8 / 255), ("L2", 0.5)}),
                                   ("robustbench-cifar100", "cifar100", {("Linf", 8 / 255)})):
        suite = load_suite(name)
        evals = expand(suite, dataset)
        assert suite.defaults["subset"] == "first-10000"
        assert {(e.params["norm"], e.params["eps"]) for e in evals if e.kind == "attack"} == threats
        assert {e.params["version"] for e in evals if e.kind == "attack"} == {"standard"}
        assert len([e for e in evals if e.kind == "corruption"]) == 75


# ------------------------------------------------------------------------------------ CIFAR-10 (+ -C)

def _cifar10_tree(root: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """torchvision's cifar-10-batches-py layout with n random test images (md5 checks patched in the test)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return data, labels


@pytest.fixture
def cifar_roots(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our files are not the real ones
    _cifar10_tree(tmp_path / "data", 64, seed=3)
    c_dir = tmp_path / "data" / "CIFAR-10-C"  # RobustBench's layout: 5 x 10,000 rows per corruption
    c_dir.mkdir()
    rng = np.random.default_rng(4)
    np.save(c_dir / "fog.npy", rng.integers(0, 256, size=(50000, 4, 4, 3), dtype=np.uint8))
    np.save(c_dir / "labels.npy", np.tile(rng.integers(0, 10, size=10000), 5).astype(np.uint8))
    return tmp_path / "data", c_dir


CIFAR_SUITE = suite_text(dict(kind="clean"), dict(kind="corruption", source="cifar10-c", corruptions=["fog"],
                                                   severities=[1, 3]),
                         name="rb-cifar10-tiny", version=None, dataset="cifar10", models=None, batch_size=8)


def test_cifar10_and_cifar10c_selection_equal_robustbenchs_loaders(tmp_path, cifar_roots):
    rb = _robustbench()
    data_dir, c_dir = cifar_roots
    n = 24
    plan = _plan(tmp_path, CIFAR_SUITE, models=["symvit_micro_patch4_32:packaged"], subset=f"first-{n}",
                 data_roots={"cifar10": str(data_dir), "cifar10-c": str(c_dir)})
    clean = plan.base_dataset("cifar10")
    assert {plan.eval_info(e)["preprocessing"]["transform"] for e in plan.evals} == {"ToTensor"}
    x_rb, y_rb = rb.load_cifar10(n_examples=n, data_dir=str(data_dir))
    assert sample_ids(clean) == list(range(n))
    for i in range(n):
        x, y, sid = clean[i]
        assert torch.equal(x, x_rb[i]) and y == int(y_rb[i]) and sid == i
    for e in (e for e in plan.evals if e.kind == "corruption"):
        s = e.params["severity"]
        ds = plan.dataset_for(e)
        x_c, y_c = rb.load_cifar10c(n_examples=n, severity=s, data_dir=str(data_dir), corruptions=["fog"])
        assert len(ds) == n
        for i in range(n):
            x, y, sid = ds[i]
            assert torch.equal(x, x_c[i]) and y == int(y_c[i]) and sid == i, (s, i)


def test_cifar10_run_outcomes_are_the_model_on_robustbenchs_tensors(tmp_path, cifar_roots):
    """Through the CLI: the stored predictions and confidences are the model's on load_cifar10's images."""
    rb = _robustbench()
    data_dir, c_dir = cifar_roots
    suite = tmp_path / "clean.toml"
    suite.write_text('name = "rb-cifar10-clean"\n[defaults]\ndataset = "cifar10"\nbatch_size = 8\n'
                     '[[evaluation]]\nkind = "clean"\n')
    out = tmp_path / "run"
    assert cli.main(["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged", "--subset", "first-16",
                     "--data-root", f"cifar10={data_dir}", "--out", str(out), "--device", "cpu", "--no-progress",
                     "--no-report"]) == 0
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        s = store.samples()
    from robustbench_rpc import load_model

    model = load_model("symvit_micro_patch4_32", checkpoint="packaged")
    x_rb, y_rb = rb.load_cifar10(n_examples=16, data_dir=str(data_dir))
    with torch.no_grad():
        probs = model(x_rb).softmax(1)
    assert list(s["sample_id"]) == list(range(16)) and list(s["label"]) == [int(v) for v in y_rb]
    assert list(s["pred"]) == probs.argmax(1).tolist()
    np.testing.assert_allclose(s["confidence"], probs.max(1).values.numpy(), atol=1e-5)


def test_cifar10_missing_files_is_one_line(tmp_path, capsys):
    suite = tmp_path / "clean.toml"
    suite.write_text('name = "x"\n[defaults]\ndataset = "cifar10"\n[[evaluation]]\nkind = "clean"\n')
    (tmp_path / "empty").mkdir()
    code = cli.main(["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged",
                     "--data-root", f"cifar10={tmp_path / 'empty'}", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cifar-10-batches-py/test_batch" in err[0]


# ------------------------------------------------------------------------------ corruption aggregates

def test_corruption_scores_follow_robustbenchs_corruptions_evaluation():
    """metrics.robustbench_corruption_scores = RobustBench's pandas computation in eval.py, line for line."""
    import pandas as pd

    alex = rbdata.alexnet_imagenet_c()
    assert len(alex) == 75 and alex[("shot_noise", 1)] == 0.2944 and alex[("elastic_transform", 5)] == 0.1898
    rng = np.random.default_rng(5)
    acc = {(c, s): float(rng.uniform(0.1, 0.8)) for c in rbdata.CORRUPTIONS for s in range(1, 6)}
    ours = metrics.robustbench_corruption_scores(acc, alex)
    # RobustBench: model_results = DataFrame(dict, index=[name]); full_results.loc['AlexNet']; per corruption
    # (1 - model_results[c]) / (1 - alexnet[c]).mean(), .values.mean() / len(corruptions), summed
    model_results = pd.DataFrame({k: [v] for k, v in acc.items()}, index=["m"])
    alexnet = pd.Series(alex)
    expected_mce = sum(((1 - model_results[c]) / (1 - alexnet[c]).mean()).values.mean() / len(rbdata.CORRUPTIONS)
                       for c in rbdata.CORRUPTIONS)
    assert ours["corruptions_acc"] == pytest.approx(model_results.values.mean(), abs=1e-12)
    assert ours["corruptions_mce"] == pytest.approx(expected_mce, abs=1e-12)
    # AlexNet against itself: 100 %, as its published model_info says ("corruptions_mce": "100.0")
    assert metrics.robustbench_corruption_scores(alex, alex)["corruptions_mce"] == pytest.approx(1.0)
    assert round(100 * metrics.robustbench_corruption_scores(alex)["corruptions_acc"], 2) == 21.12
    with pytest.raises(KeyError, match="speckle_noise s1"):
        metrics.robustbench_corruption_scores({("speckle_noise", 1): 0.5}, alex)


def test_imagenet_c_tree_of_only_the_subsets_files_lines_up_with_the_clean_images(tmp_path, cnn224):
    """RobustBench's loaders accept an ImageNet-C tree that holds only the listed files; its images are
    matched to the clean ones by class folder and file name and carry the clean images' ids."""
    n = 6
    listed = _imagenet_tree(tmp_path / "val", n, None, seed=1)
    for c in ("fog", "shot_noise"):
        _imagenet_tree(tmp_path / "ImageNet-C" / c / "2", n, (224, 224), seed=2)
        for f in (tmp_path / "ImageNet-C" / c / "2").rglob("*.JPEG"):
            if "/".join(f.parts[-2:]) not in listed:
                f.unlink()  # the decoys: the tree now holds the subset's files only
    plan = _plan(tmp_path, IMAGENET_SUITE, models=[cnn224], subset=f"robustbench-imagenet-5000:{n}",
                 data_roots={"imagenet": str(tmp_path / "val"), "imagenet-c": str(tmp_path / "ImageNet-C")})
    clean_ids = {rel: sid for rel, (_, _, sid) in _items(plan.base_dataset("imagenet")).items()}
    for e in plan.evals:
        if e.kind == "corruption":
            corrupted = _items(plan.dataset_for(e))
            assert sorted(corrupted) == sorted(listed)
            assert all(corrupted[rel][2] == clean_ids[rel] for rel in listed)
