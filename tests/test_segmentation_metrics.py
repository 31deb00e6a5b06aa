"""Segmentation metrics against an independent computation written plainly here (and torchmetrics when it is
installed): mmsegmentation's IoUMetric conventions (ignore index, reduce_zero_label through the ADE20K reader,
NaN classes skipped), counts summed over images, and the seeded image-level bootstrap, paired for two models."""
import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.data.segmentation import ade20k
from robustbench_rpc.metrics_seg import (
    batch_areas, intersect_and_union, paired_seg_bootstrap, seg_bootstrap, seg_metrics,
)


def plain_metrics(pairs, num_classes, ignore=255):
    """Pixel by pixel: (aAcc, mAcc, mIoU, IoU list with None where undefined) over (pred, label) pairs."""
    inter, pred_area, label_area = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for pred, label in pairs:
        for p, t in zip(np.asarray(pred).ravel().tolist(), np.asarray(label).ravel().tolist()):
            if t == ignore:
                continue
            label_area[t] += 1
            pred_area[p] += 1
            inter[t] += p == t
    iou = [inter[c] / (pred_area[c] + label_area[c] - inter[c]) if pred_area[c] + label_area[c] else None
           for c in range(num_classes)]
    acc = [inter[c] / label_area[c] if label_area[c] else None for c in range(num_classes)]
    mean = lambda xs: sum(x for x in xs if x is not None) / sum(x is not None for x in xs)  # noqa: E731
    return sum(inter) / sum(label_area), mean(acc), mean(iou), iou


def test_hand_computed_example_with_ignore_and_absent_classes():
    # image 1: 5 scored pixels (one ignored, predicted 2 there: not counted); image 2: class 2 only
    label1, pred1 = torch.tensor([[0, 0, 1], [1, 255, 2]]), torch.tensor([[0, 1, 1], [1, 2, 0]])
    label2, pred2 = torch.tensor([[2, 2]]), torch.tensor([[2, 0]])
    a1 = intersect_and_union(pred1, label1, 4)
    assert a1.tolist() == [[1, 2, 0, 0], [3, 3, 1, 0], [2, 3, 0, 0], [2, 2, 1, 0]]
    m = seg_metrics(np.stack([a1, intersect_and_union(pred2, label2, 4)]))
    # totals I=[1,2,1], U=[4,3,3], L=[2,2,3]; class 3 absent everywhere: NaN, skipped
    assert m["aAcc"] == pytest.approx(4 / 7)
    assert m["mIoU"] == pytest.approx((1 / 4 + 2 / 3 + 1 / 3) / 3)
    assert m["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert np.isnan(m["IoU"][3]) and np.isnan(m["Acc"][3]) and m["n_pixels"] == 7 and m["n_images"] == 2
    # a class predicted but never labelled: IoU 0 counts in mIoU, its Acc is undefined
    extra = intersect_and_union(torch.tensor([[3]]), torch.tensor([[0]]), 4)
    m2 = seg_metrics(np.stack([a1, intersect_and_union(pred2, label2, 4), extra]))
    assert m2["IoU"][3] == 0 and np.isnan(m2["Acc"][3])
    assert m2["mIoU"] == pytest.approx((1 / 5 + 2 / 3 + 1 / 3 + 0) / 4)


def test_counts_are_summed_over_images_not_averaged():
    big = intersect_and_union(torch.zeros(10, 10, dtype=torch.long), torch.zeros(10, 10, dtype=torch.long), 2)
    small = intersect_and_union(torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), 2)
    m = seg_metrics(np.stack([big, small]))
    assert m["aAcc"] == pytest.approx(100 / 101)  # a per-image mean would say 0.5
    assert m["mIoU"] == pytest.approx((100 / 101 + 0) / 2)


def _ade_tree(root, raws):
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    for i, raw in enumerate(raws):
        Image.fromarray(np.zeros((*raw.shape, 3), dtype=np.uint8)).save(root / "images" / "validation" / f"{i}.jpg")
        Image.fromarray(raw.astype(np.uint8)).save(root / "annotations" / "validation" / f"{i}.png")


def test_ade20k_tree_with_known_predictions_equals_the_plain_computation(tmp_path):
    rng = np.random.default_rng(0)
    raws = []
    for shape in [(6, 5), (4, 7), (5, 5)]:
        raw = rng.choice([0, 1, 2, 3, 4, 150, 255], size=shape, p=[.2, .2, .2, .15, .1, .1, .05])
        raws.append(raw)
    _ade_tree(tmp_path, raws)
    ds = ade20k(tmp_path)
    preds = [rng.choice([0, 1, 2, 3, 149], size=r.shape) for r in raws]  # model classes 0..149
    areas = np.stack([intersect_and_union(torch.as_tensor(p), ds[i][1], 150, ds.ignore_index)
                      for i, p in enumerate(preds)])
    m = seg_metrics(areas)
    # the plain computation reads the raw files' convention itself: 0 and 255 ignored, class = value - 1
    shifted = [(p, np.where((r == 0) | (r == 255), 255, r - 1)) for p, r in zip(preds, raws)]
    a_acc, m_acc, m_iou, iou = plain_metrics(shifted, 150)
    assert m["aAcc"] == pytest.approx(a_acc) and m["mAcc"] == pytest.approx(m_acc)
    assert m["mIoU"] == pytest.approx(m_iou)
    assert [None if np.isnan(x) else pytest.approx(x) for x in m["IoU"]] == iou
    assert sum(x is not None for x in iou) == 5  # classes 0..3 and 149 (file values 1..4, 150); the rest NaN


def test_matches_torchmetrics_when_installed():
    tm = pytest.importorskip("torchmetrics")
    gen = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 4, (3, 8, 8), generator=gen)
    labels = torch.randint(0, 4, (3, 8, 8), generator=gen)
    ours = seg_metrics(batch_areas(preds, labels, 4))
    theirs = tm.functional.jaccard_index(preds, labels, task="multiclass", num_classes=4, average="macro")
    assert ours["mIoU"] == pytest.approx(float(theirs), abs=1e-6)  # every class present: no NaN convention


def test_logits_argmax_and_bad_inputs():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = 1
    labels = torch.tensor([[[2, 2], [0, 255]]])
    assert batch_areas(logits, labels, 3)[0].tolist() == [[0, 0, 2], [1, 0, 3], [0, 0, 3], [1, 0, 2]]
    with pytest.raises(ValueError, match="label 7 is outside 0..2 and is not the ignore index 255"):
        intersect_and_union(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="does not match label"):
        intersect_and_union(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 3)


def _random_areas(seed, n=12, classes=5, noise=0.3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, 6, 6), generator=gen)
    labels[:, 0, 0] = 255
    flip = torch.rand(labels.shape, generator=gen) < noise
    preds = torch.where(flip, torch.randint(0, classes, labels.shape, generator=gen), labels.clamp(max=classes - 1))
    return batch_areas(preds, labels, classes)


def test_bootstrap_is_seeded_and_equals_a_plain_resampling_loop():
    areas = _random_areas(0)
    value, lo, hi = seg_bootstrap(areas, "mIoU", n_boot=200, seed=7)
    assert (value, lo, hi) == seg_bootstrap(areas, "mIoU", n_boot=200, seed=7)
    assert (lo, hi) != seg_bootstrap(areas, "mIoU", n_boot=200, seed=8)[1:]
    assert lo <= value <= hi
    rows = np.random.default_rng(7).integers(0, len(areas), size=(200, len(areas)))
    values = [seg_metrics(areas[row])["mIoU"] for row in rows]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    a_value, a_lo, a_hi = seg_bootstrap(areas, "aAcc", n_boot=50, seed=0)
    assert a_lo <= a_value <= a_hi


def test_paired_bootstrap_uses_the_same_images_for_both_models():
    good, bad = _random_areas(0, noise=0.1), _random_areas(0, noise=0.6)
    assert paired_seg_bootstrap(good, good, n_boot=100, seed=3) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_seg_bootstrap(good, bad, "mIoU", n_boot=300, seed=3)
    assert diff == pytest.approx(seg_metrics(good)["mIoU"] - seg_metrics(bad)["mIoU"]) and 0 < lo <= diff <= hi
    rows = np.random.default_rng(3).integers(0, len(good), size=(300, len(good)))
    diffs = [seg_metrics(good[r])["mIoU"] - seg_metrics(bad[r])["mIoU"] for r in rows]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    with pytest.raises(ValueError, match="not scored on the same images"):
        paired_seg_bootstrap(good, _random_areas(1), n_boot=10)


def test_worst_case_per_image_over_attacks():
    from robustbench_rpc.metrics_seg import worst_case_areas

    labels = torch.tensor([[[0, 0], [1, 1]], [[1, 1], [1, 0]]])
    a = batch_areas(torch.tensor([[[1, 0], [1, 1]], [[1, 1], [1, 0]]]), labels, 2)  # 3 and 4 pixels right
    b = batch_areas(torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]]), labels, 2)  # 4 and 1 pixels right
    worst, picked = worst_case_areas({"pgd": a, "segpgd": b})
    assert picked == ["pgd", "segpgd"]
    assert np.array_equal(worst, np.stack([a[0], b[1]]))
    assert seg_metrics(worst)["aAcc"] == pytest.approx(4 / 8)
    assert seg_metrics(worst)["aAcc"] <= min(seg_metrics(a)["aAcc"], seg_metrics(b)["aAcc"])
    assert worst_case_areas({"x": a, "y": a})[1] == ["x", "x"]  # ties: the attack named first
    with pytest.raises(ValueError, match="not scored on the same images"):
        worst_case_areas({"pgd": a, "other": a[::-1]})
