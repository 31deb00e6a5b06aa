"""ADE20K-C: corruptions on the fly (seeded per image, RGB; BGR only when asked, as FAN's gen_city_c.py) with
the masks untouched, and pre-generated <corruption>/<severity>/ folders paired with the clean annotations."""
import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_rpc.corruptions import corrupt, derive_seed
from robustbench_rpc.corruptions.segmentation import CorruptedSegmentation, corrupted_folder
from robustbench_rpc.data.segmentation import SegmentationDataError, ade20k


@pytest.fixture()
def ade(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(
            tmp_path / "images" / "validation" / f"ADE_val_{i:08d}.png")  # PNG: exact pixels
        Image.fromarray(rng.integers(0, 151, (64, 72)).astype(np.uint8)).save(
            tmp_path / "annotations" / "validation" / f"ADE_val_{i:08d}.png")
    return ade20k(tmp_path)


def test_on_the_fly_corruption_is_seeded_per_image_and_keeps_masks(ade):
    ds = CorruptedSegmentation(ade, "gaussian_noise", 3, seed=5)
    image, mask, sid = ds[1]
    clean_image, clean_mask, clean_sid = ade[1]
    assert sid == clean_sid == 1 and torch.equal(mask, clean_mask)
    assert image.shape == clean_image.shape and not torch.equal(image, clean_image)
    assert torch.equal(image, CorruptedSegmentation(ade, "gaussian_noise", 3, seed=5)[1][0])
    seed = derive_seed(5, "gaussian_noise", 3, 1)
    assert torch.equal(image, corrupt(clean_image, "gaussian_noise", 3, seed=seed))
    assert ds.info == {"corruption": "gaussian_noise", "severity": 3, "source": "on-the-fly",
                       "severity_table": "imagenet-c", "seed": 5, "channel_order": "rgb"}
    assert ds.num_classes == 150 and ds.ignore_index == 255


def test_bgr_order_only_when_asked_and_as_fan_feeds_it(ade):
    rgb = CorruptedSegmentation(ade, "saturate", 4, seed=0)[0][0]
    bgr = CorruptedSegmentation(ade, "saturate", 4, seed=0, channel_order="bgr")[0][0]
    assert not torch.equal(rgb, bgr)  # saturation in HSV depends on which channel is red
    clean = (ade[0][0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    fan = corrupt(np.ascontiguousarray(clean[..., ::-1]), "saturate", 4, seed=derive_seed(0, "saturate", 4, 0))
    assert torch.equal(bgr, torch.from_numpy(np.ascontiguousarray(fan[..., ::-1].transpose(2, 0, 1))).float() / 255)
    with pytest.raises(ValueError, match="channel_order must be 'rgb' or 'bgr'"):
        CorruptedSegmentation(ade, "saturate", 4, channel_order="BRG")


def test_pre_generated_folder_pairs_with_clean_annotations(ade, tmp_path):
    folder = tmp_path / "ade20k_c" / "fog" / "2"
    folder.mkdir(parents=True)
    for i in (2, 0):  # a partial copy: ids must follow the clean set, not the folder
        Image.fromarray(np.full((64, 72, 3), 9 * i, dtype=np.uint8)).save(folder / f"ADE_val_{i:08d}.jpg")
    ds = corrupted_folder(tmp_path / "ade20k_c", "fog", 2, ade)
    assert len(ds) == 2 and [ds[k][2] for k in range(2)] == [0, 2]
    assert torch.equal(ds[1][1], ade[2][1]) and ds.classes == ade.classes
    with pytest.raises(SegmentationDataError, match=r"fog/3 not found \(corruptions in .*: fog;"):
        corrupted_folder(tmp_path / "ade20k_c", "fog", 3, ade)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / "stray.jpg")
    with pytest.raises(SegmentationDataError, match="1 image.* no clean image of the same name.*stray.jpg"):
        corrupted_folder(tmp_path / "ade20k_c", "fog", 2, ade)
