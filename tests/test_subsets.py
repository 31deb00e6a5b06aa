"""Subsets that represent the dataset: stratified --limit, --subset FILE, ImageNet-C ids."""
from __future__ import annotations

import collections

import pytest
import torch

from robustbench_rpc.data.embedded import TensorSampleDataset
from robustbench_rpc.data.subsets import (
    SubsetError, read_subset_file, sample_ids, stratified_indices, subset_from_entries, take,
)


def test_stratified_limit_covers_every_class_evenly():
    labels = [c for c in range(100) for _ in range(50)]  # ImageNet val's shape: sorted by class, 50 each
    picked = stratified_indices(labels, 500)
    counts = collections.Counter(labels[i] for i in picked)
    assert len(picked) == 500 and len(counts) == 100 and set(counts.values()) == {5}
    assert picked == sorted(picked) and stratified_indices(labels, 500) == picked  # deterministic
    # first-N would have been 10 classes; an uneven N spreads the remainder over the first classes
    counts = collections.Counter(labels[i] for i in stratified_indices(labels, 200 + 7))
    assert sorted(counts.values()) == [2] * 93 + [3] * 7
    assert stratified_indices(labels, 10 ** 6) == list(range(len(labels)))


def test_small_classes_leave_their_share_to_the_others():
    labels = [0] * 2 + [1] * 40 + [2] * 40
    counts = collections.Counter(labels[i] for i in stratified_indices(labels, 30))
    assert counts == {0: 2, 1: 14, 2: 14}
    picks = [i for i in stratified_indices(labels, 30) if labels[i] == 1]
    assert picks[0] == 2 and picks[-1] > 30  # evenly spaced within the class, not its first files
    with pytest.raises(SubsetError):
        stratified_indices(labels, 0)


def _folder(tmp_path, classes=("n01", "n02", "n03"), per=4):
    from PIL import Image

    from robustbench_rpc.data.folders import ImageNetVal

    root = tmp_path / "val"
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(per):
            Image.new("RGB", (8, 8), (j * 40, 0, 0)).save(root / c / f"img_{c}_{j}.JPEG")
    return ImageNetVal(str(root), classes=list(classes), resize=8, crop=8)


def test_subset_file_by_path_or_id(tmp_path):
    ds = _folder(tmp_path)
    f = tmp_path / "subset.txt"
    f.write_text("# a published list\nn02/img_n02_1.JPEG\nval/n03/img_n03_0.JPEG\n0\n\n")
    entries = read_subset_file(f)
    pos = subset_from_entries(ds, entries, "--subset subset.txt")
    assert [ds.samples[i][0].split("/")[-1] for i in pos] == ["img_n01_0.JPEG", "img_n02_1.JPEG", "img_n03_0.JPEG"]
    assert sample_ids(take(ds, pos)) == [0, 5, 8]
    f.write_text("n02/nope.JPEG\n")
    with pytest.raises(SubsetError, match="nope.JPEG"):
        subset_from_entries(ds, read_subset_file(f), "--subset subset.txt")
    with pytest.raises(SubsetError, match="not found"):
        read_subset_file(tmp_path / "missing.txt")


def test_limit_in_a_run_is_stratified_and_recorded(tmp_path):
    from robustbench_rpc.evaluation.plan import Plan, RunConfig

    plan = Plan(RunConfig(suite="quick", limit=30, out=tmp_path / "o"))
    ds = plan.base_dataset("digits32")
    base = ds.dataset
    labels = collections.Counter(int(base.labels[i]) for i in ds.indices)
    assert len(ds) == 30 and set(labels.values()) == {3}  # 10 digits, 3 each
    assert plan.settings()["subset"] == {"method": "stratified", "limit": 30}
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(str(int(base.sample_ids[i])) for i in (5, 9, 100)))
    plan = Plan(RunConfig(suite="quick", subset=str(f), out=tmp_path / "o2"))  # replaces the suite's limit
    assert sample_ids(plan.base_dataset("digits32")) == [int(base.sample_ids[i]) for i in (5, 9, 100)]
    assert plan.settings()["subset"]["method"] == "file"


def test_imagenet_c_uses_the_clean_subsets_ids(tmp_path):
    from PIL import Image

    from robustbench_rpc.corruptions.folders import ImageNetCFolder
    from robustbench_rpc.data.subsets import positions_of_ids

    clean = _folder(tmp_path)
    for c in ("n01", "n02", "n03"):
        d = tmp_path / "c" / "fog" / "3" / c
        d.mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (8, 8)).save(d / f"img_{c}_{j}.JPEG")
    cds = ImageNetCFolder(str(tmp_path / "c"), "fog", 3, class_to_idx=["n01", "n02", "n03"], crop=None)
    sub = take(clean, stratified_indices(clean.targets, 6))
    want = sample_ids(sub)
    assert sample_ids(take(cds, positions_of_ids(cds, want, "imagenet-c fog s3"))) == want
