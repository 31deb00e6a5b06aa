import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.data import folders as F
from robustbench_rpc.data.imagenet_classes import (
    IMAGENET_A_INDICES, IMAGENET_A_WNIDS, IMAGENET_O_WNIDS, IMAGENET_R_INDICES, IMAGENET_R_WNIDS, IMAGENET_WNIDS,
)


def _img(path, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_folder(root, classes, per_class=2, ext=".JPEG", size=(40, 30)):
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            _img(d / f"img_{j}{ext}", size, seed=10 * ci + j)
    return root


def test_class_tables():
    assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert IMAGENET_WNIDS[0] == "n01440764" and IMAGENET_WNIDS[-1] == "n15075141"
    for wnids, idx in ((IMAGENET_A_WNIDS, IMAGENET_A_INDICES), (IMAGENET_R_WNIDS, IMAGENET_R_INDICES)):
        assert len(wnids) == 200 and list(idx) == sorted(idx)
        assert [IMAGENET_WNIDS[i] for i in idx] == list(wnids)
    # well-known first entries of the published masks
    assert IMAGENET_A_INDICES[:5] == (6, 11, 13, 15, 17)
    assert IMAGENET_R_INDICES[:5] == (1, 2, 4, 6, 8)


def test_imagenet_val_labels_ids_and_transform(tmp_path):
    classes = [IMAGENET_WNIDS[0], IMAGENET_WNIDS[5]]
    make_folder(tmp_path, classes, size=(300, 260))
    ds = F.ImageNetVal(tmp_path, allow_missing_classes=True)
    assert len(ds) == 4
    x, y, sid = ds[2]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert (y, sid) == (5, 2)
    small = F.ImageNetVal(tmp_path, resize=None, crop=None, allow_missing_classes=True)
    assert small[0][0].shape == (3, 260, 300)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (4, 3, 224, 224) and yb.tolist() == [0, 0, 5, 5] and ib.tolist() == [0, 1, 2, 3]


def test_transform_from_data_config():
    t = F.transform_from_data_config({"input_size": (3, 224, 224), "crop_pct": 0.9,
                                      "interpolation": "bicubic", "mean": (0.5,) * 3})
    assert (t.resize, t.crop, t.interpolation) == (248, 224, "bicubic")
    out = t(Image.new("RGB", (500, 375)))
    assert out.shape == (3, 224, 224)


def test_class_mismatch_detected_at_construction(tmp_path):
    make_folder(tmp_path, [IMAGENET_WNIDS[0], "cats", "dogs"], per_class=1)
    with pytest.raises(F.ClassMismatchError) as e:
        F.ImageNetVal(tmp_path)
    msg = str(e.value)
    assert "cats" in msg and "dogs" in msg and "missing classes (999)" in msg and str(tmp_path) in msg
    with pytest.raises(F.ClassMismatchError, match="unexpected folders"):
        F.ImageNetVal(tmp_path, allow_missing_classes=True)
    ok = F.ImageNetVal(tmp_path, classes=[IMAGENET_WNIDS[0], "cats", "dogs"], resize=None, crop=None)
    assert sorted(ok.targets) == [0, 1, 2]
    with pytest.raises(F.ClassMismatchError, match="ImageNet-A"):
        F.ImageNetA(tmp_path)


def test_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        F.ImageNetVal(tmp_path / "val")
    assert str(tmp_path / "val") in str(e.value)


def test_unreadable_image_reported_or_skipped(tmp_path):
    make_folder(tmp_path, [IMAGENET_WNIDS[1]], per_class=3)
    bad = tmp_path / IMAGENET_WNIDS[1] / "img_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    ds = F.ImageNetVal(tmp_path, allow_missing_classes=True, resize=None, crop=None)
    assert len(ds) == 3
    ds[0]
    with pytest.raises(F.UnreadableImageError) as e:
        ds[1]
    assert str(bad) in str(e.value)
    skip = F.ImageNetVal(tmp_path, allow_missing_classes=True, resize=None, crop=None,
                         skip_unreadable=True)
    assert len(skip) == 2 and skip.n_skipped == 1 and skip.skipped_paths == [str(bad)]
    assert [skip[i][2] for i in range(2)] == [0, 2]  # ids stay those of the full listing


def test_truncated_jpeg_is_unreadable(tmp_path):
    make_folder(tmp_path, [IMAGENET_WNIDS[2]], per_class=2, size=(64, 64))
    path = tmp_path / IMAGENET_WNIDS[2] / "img_0.JPEG"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    skip = F.ImageNetVal(tmp_path, allow_missing_classes=True, skip_unreadable=True)
    assert skip.n_skipped == 1 and len(skip) == 1


def test_imagenet_a_r_labels_and_mask(tmp_path):
    a_root = make_folder(tmp_path / "a", IMAGENET_A_WNIDS[:2], per_class=1)
    with pytest.raises(F.ClassMismatchError, match="missing classes"):
        F.ImageNetA(a_root)
    a = F.ImageNetA(a_root, allow_missing_classes=True, resize=None, crop=None)
    assert a.targets == [IMAGENET_A_INDICES[0], IMAGENET_A_INDICES[1]]
    assert torch.equal(F.class_mask_for(a), torch.tensor(IMAGENET_A_INDICES))
    r = F.ImageNetR(make_folder(tmp_path / "r", IMAGENET_R_WNIDS[-1:], per_class=1),
                    allow_missing_classes=True, resize=None, crop=None)
    assert r.targets == [IMAGENET_R_INDICES[-1]]
    assert torch.equal(F.class_mask_for("imagenet-r"), torch.tensor(IMAGENET_R_INDICES))
    assert torch.equal(F.class_mask_for("imagenet"), torch.arange(1000))
    with pytest.raises(KeyError, match="no class mask"):
        F.class_mask_for("imagenet-z")


def test_masked_logits_argmax_over_subset():
    torch.manual_seed(0)
    logits = torch.randn(8, 1000)
    mask = F.class_mask_for("imagenet-a")
    logits[:, 0] = 100.0  # class 0 is not an ImageNet-A class
    masked = F.mask_logits(logits, mask)
    pred = masked.argmax(1)
    assert torch.all(torch.isin(pred, mask))
    assert torch.equal(pred, mask[logits[:, mask].argmax(1)])
    p = masked.softmax(1)
    assert torch.allclose(p[:, mask], logits[:, mask].softmax(1))
    assert torch.isfinite((p * masked.log_softmax(1)).sum(1)).all()  # entropy stays NaN-free
    model = torch.nn.Linear(4, 1000)
    wrapped = F.MaskedLogits(model, mask)
    out = wrapped(torch.randn(3, 4))
    assert torch.all(torch.isin(out.argmax(1), mask))
    assert F.restrict_logits(logits, mask).shape == (8, 200)


def test_imagenet_o(tmp_path):
    # the release: folder names are ImageNet-1k wnids (the 200 of IMAGENET_O_WNIDS); more in test_imagenet_o.py
    root = make_folder(tmp_path / "o", IMAGENET_O_WNIDS[:2], per_class=2)
    o = F.ImageNetO(root, resize=None, crop=None, allow_missing_classes=True)
    assert len(o) == 4 and set(o.targets) == {-1}
    assert [o[i][2] for i in range(4)] == [0, 1, 2, 3]
    wrong = make_folder(tmp_path / "wrong", ["n00000001"], per_class=1)
    with pytest.raises(F.ClassMismatchError, match="n00000001"):
        F.ImageNetO(wrong, allow_missing_classes=True)
    own = F.OODImageFolder(wrong, resize=None, crop=None)  # an OOD set of one's own: any folder names
    assert own.targets == [-1]
