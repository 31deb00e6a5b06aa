"""Segmentation data: the embedded digit canvases (deterministic, mask = digit class + 1 on its pixels), the
released ADE20K layout (reduce_zero_label as mmsegmentation) and a folder of one's own, each bad file one line."""
import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.data import segmentation as seg
from robustbench_rpc.data.segmentation import (
    ADE20K_CLASSES, IGNORE_INDEX, SegmentationDataError, ade20k, digits_seg64, segmentation_folder,
)


def test_embedded_canvases_are_deterministic_and_masks_mark_the_digits():
    test = digits_seg64("test")
    assert len(test) == 200 and test.num_classes == 11 and test.classes[0] == "background"
    image, mask, sid = test[5]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64 and sid == 5
    assert 0 <= image.min() and image.max() <= 1
    seg._digits_seg64.cache_clear()
    again = digits_seg64("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.masks, test.masks)
    # a pixel is a digit's exactly where the digit's scan is at least 0.25 bright (cells never overlap)
    assert torch.equal(test.masks > 0, test.images[:, 0] >= 0.25)
    per_canvas = [len(set(m.unique().tolist()) - {0}) for m in test.masks]
    assert 1 <= min(per_canvas) and max(per_canvas) <= 4
    assert set(test.masks.unique().tolist()) == set(range(11))
    train = digits_seg64("train")
    assert len(train) == 600 and not torch.equal(train.images[:200], test.images)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        digits_seg64("val")


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _ade_tree(root, masks):
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    for i, m in enumerate(masks):
        h, w = np.asarray(m).shape
        Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(
            root / "images" / "validation" / f"ADE_val_{i:08d}.jpg")
        _png(root / "annotations" / "validation" / f"ADE_val_{i:08d}.png", m)


def test_ade20k_layout_reduces_the_zero_label_as_mmsegmentation(tmp_path):
    raw = np.array([[0, 1, 2, 150], [255, 75, 0, 3], [10, 20, 30, 40]])
    _ade_tree(tmp_path, [raw, np.ones((5, 7))])
    ds = ade20k(tmp_path)
    assert len(ds) == 2 and ds.num_classes == 150 == len(ADE20K_CLASSES) and ds.classes[0] == "wall"
    image, mask, sid = ds[0]
    assert image.shape == (3, 3, 4) and sid == 0
    # mmseg: gt[gt == 0] = 255; gt = gt - 1; gt[gt == 254] = 255
    expected = raw.copy()
    expected[expected == 0] = 255
    expected = expected - 1
    expected[expected == 254] = 255
    assert mask.tolist() == expected.tolist()
    assert ds[1][1].shape == (5, 7) and (ds[1][1] == 0).all()
    ds.check_all()


def test_ade20k_bad_files_are_one_line_naming_the_file(tmp_path):
    _ade_tree(tmp_path / "big", [np.array([[151, 1], [1, 1]])])
    with pytest.raises(SegmentationDataError, match=r"ADE_val_00000000.png: label 151 is outside the 150 classes"):
        ade20k(tmp_path / "big")[0]

    _ade_tree(tmp_path / "size", [np.ones((4, 4))])
    _png(tmp_path / "size" / "annotations" / "validation" / "ADE_val_00000000.png", np.ones((4, 5)))
    with pytest.raises(SegmentationDataError, match=r"ADE_val_00000000.png is 5x4 but its image .*jpg is 4x4") as err:
        ade20k(tmp_path / "size").check_all()
    assert "\n" not in str(err.value)

    _ade_tree(tmp_path / "lost", [np.ones((2, 2)), np.ones((2, 2))])
    (tmp_path / "lost" / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(SegmentationDataError, match=r"1 image\(s\) without a PNG mask .*ADE_val_00000001.jpg"):
        ade20k(tmp_path / "lost")

    _ade_tree(tmp_path / "rgb", [np.ones((2, 2))])
    Image.fromarray(np.ones((2, 2, 3), dtype=np.uint8)).save(
        tmp_path / "rgb" / "annotations" / "validation" / "ADE_val_00000000.png")
    with pytest.raises(SegmentationDataError, match="mode RGB has several channels"):
        ade20k(tmp_path / "rgb")[0]
    with pytest.raises(SegmentationDataError, match="folder .*images/validation not found"):
        ade20k(tmp_path / "nowhere")


def test_own_folder_with_a_class_list(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("# my classes\nsky\nroad\n\ncar\n")
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    _png(tmp_path / "masks" / "a.png", [[0, 1, 2], [255, 2, 0]])
    ds = segmentation_folder(tmp_path)
    assert ds.classes == ("sky", "road", "car") and ds.ignore_index == IGNORE_INDEX
    assert ds[0][1].tolist() == [[0, 1, 2], [255, 2, 0]]
    zero = segmentation_folder(tmp_path, reduce_zero_label=True)
    assert zero[0][1].tolist() == [[255, 0, 1], [255, 1, 255]]
    _png(tmp_path / "masks" / "a.png", [[0, 1, 3], [255, 2, 0]])
    with pytest.raises(SegmentationDataError,
                       match=r"masks/a.png: label 3 is outside the 3 classes .* ignore index 255"):
        ds[0]
    (tmp_path / "classes.txt").write_text("sky\nsky\n")
    with pytest.raises(SegmentationDataError, match="names 'sky' more than once"):
        segmentation_folder(tmp_path)
    with pytest.raises(SegmentationDataError, match="class list .*nope.txt not found"):
        segmentation_folder(tmp_path, classes="nope.txt")


def test_pre_compute_scan_names_bad_masks_before_any_compute(tmp_path):
    from robustbench_rpc.data.images import UnreadableFilesError, check_readable

    _ade_tree(tmp_path, [np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4))])
    ann = tmp_path / "annotations" / "validation"
    _png(ann / "ADE_val_00000001.png", np.ones((4, 6)))
    (ann / "ADE_val_00000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = ade20k(tmp_path)
    assert [i for i, _ in ds.unreadable()] == [1, 2]
    with pytest.raises(UnreadableFilesError, match=r"2 of the 3 .*ADE_val_00000001.jpg \(its mask .* is 6x4, the "
                                                   r"image 4x4\); .*ADE_val_00000002.jpg \(its mask .*\)") as err:
        check_readable(ds, skip=False, what="ade20k")
    assert "\n" not in str(err.value)
    kept = check_readable(ds, skip=True, what="ade20k")
    assert len(kept) == 1 and kept[0][2] == 0 and kept.skipped_ids == [1, 2]
