"""Segmentation datasets: items ``(image (3, H, W) in [0, 1], mask (H, W) int64, sample_id)``.

A mask holds class indices ``0 .. num_classes - 1`` and ``ignore_index`` (255) for pixels that are not scored.
Images of one dataset may differ in size (ADE20K's do), so items are not batched by stacking; every mask has
its image's size, checked when the item is read.

- ``digits-seg64`` (:func:`digits_seg64`): the embedded set, made deterministically from the embedded digits
  (``data/embedded.py``: scikit-learn's 8x8 scans) with no download. A 64x64 grey canvas is four 32x32 cells; 2
  to 4 of them hold one digit scan, resized to 16-28 px at a random offset. Classes: 0 = background,
  ``d + 1`` = digit ``d`` on the pixels where its scan is at least 0.25 bright (11 classes). Train canvases use
  only the digits' train split, test canvases only the test split; sample ids are canvas indices.
- ``ade20k`` (:func:`ade20k`): the released ``ADEChallengeData2016`` layout, ``images/<split>/*.jpg`` with
  ``annotations/<split>/*.png`` of the same stem. Labels as mmsegmentation's ``reduce_zero_label``: the file's 0
  ("other objects") becomes 255 (ignored), every other value ``v`` becomes ``v - 1``, so the 150 classes are
  0..149 (and a 255 in the file stays 255).
- a folder of one's own (:func:`segmentation_folder`): ``images/`` and ``masks/`` (PNG, same stem) and a class
  list (one name per line); mask values are class indices, 255 ignored (``reduce_zero_label`` as an option).

Bad files cost one line naming them: a missing mask, a mask whose size differs from its image, a mask with
several channels, a label at or above the class count that is not the ignore index.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .folders import IMG_EXTENSIONS
from .images import load_rgb, unreadable_reason
from .embedded import _split_indices

IGNORE_INDEX = 255
DIGITS_SEG_CLASSES = ("background",) + tuple(f"digit {d}" for d in range(10))
_DIGITS_SEG_SIZES = {"train": 600, "test": 200}
_DIGITS_SEG_SEED = {"train": 0, "test": 1}
#: mmsegmentation's ADE20KDataset class order (the file's value v is class v - 1); names as in Segmenter's
#: segm/data/config/ade20k.yml (first synonym)
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van',
    'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel',
    'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name',
    'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce',
    'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board',
    'shower', 'radiator', 'glass', 'clock', 'flag',
)


class SegmentationDataError(ValueError):
    """A segmentation file or folder that cannot be used as given; one line naming it."""


class SegmentationDataset(Dataset):
    """Base of every segmentation set: ``name``, ``classes``, ``num_classes``, ``ignore_index``; items
    ``(image, mask, sample_id)``."""

    name: str = "segmentation"
    classes: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    task = "segmentation"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorSegmentationDataset(SegmentationDataset):
    """Images, masks and sample ids held in memory (the embedded set)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, sample_ids: torch.Tensor, name: str,
                 classes: Sequence[str]):
        if not (len(images) == len(masks) == len(sample_ids)):
            raise ValueError("images, masks and sample_ids must have the same length")
        self.images, self.masks, self.sample_ids = images, masks, sample_ids
        self.name, self.classes = name, tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i], int(self.sample_ids[i])


# ---------------------------------------------------------------------------------- the embedded set

def _canvas(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, pool: np.ndarray):
    """One 64x64 canvas and its mask from 2-4 digits of ``pool`` (indices into ``scans``)."""
    image = np.zeros((64, 64), dtype=np.float32)
    mask = np.zeros((64, 64), dtype=np.int64)
    cells = rng.choice(4, size=int(rng.integers(2, 5)), replace=False)
    for cell in sorted(cells.tolist()):
        idx = int(pool[rng.integers(len(pool))])
        side = int(rng.integers(16, 29))
        scan = torch.tensor(scans[idx], dtype=torch.float32).view(1, 1, 8, 8) / 16.0
        digit = torch.nn.functional.interpolate(scan, size=(side, side), mode="bilinear", align_corners=False)
        digit = digit[0, 0].clamp(0, 1).numpy()
        r = (cell // 2) * 32 + int(rng.integers(0, 32 - side + 1))
        c = (cell % 2) * 32 + int(rng.integers(0, 32 - side + 1))
        image[r:r + side, c:c + side] = digit
        mask[r:r + side, c:c + side] = np.where(digit >= 0.25, int(labels[idx]) + 1, 0)
    return image, mask


@lru_cache(maxsize=2)
def _digits_seg64(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pool = _split_indices()[split]
    rng = np.random.default_rng(_DIGITS_SEG_SEED[split])
    images, masks = zip(*(_canvas(rng, digits.images, digits.target, pool) for _ in range(_DIGITS_SEG_SIZES[split])))
    x = torch.from_numpy(np.stack(images)).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    return x, torch.from_numpy(np.stack(masks))


def digits_seg64(split: str = "test") -> TensorSegmentationDataset:
    """The embedded segmentation set (600 train / 200 test canvases, 64x64 RGB, 11 classes); deterministic."""
    if split not in _DIGITS_SEG_SIZES:
        raise ValueError(f"digits-seg64 split must be 'train' or 'test', got {split!r}")
    x, m = _digits_seg64(split)
    return TensorSegmentationDataset(x, m, torch.arange(len(x)), f"digits-seg64-{split}", DIGITS_SEG_CLASSES)


# ---------------------------------------------------------------------------------- files on disk

def read_mask(path: str | Path) -> np.ndarray:
    """A label PNG's values as int64 (H, W): 8/16-bit grey or palette indices; several channels are refused."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise SegmentationDataError(f"mask {path}: mode {img.mode} has several channels; a mask holds one "
                                            "class index per pixel (8/16-bit grey or palette PNG)")
            return np.asarray(img, dtype=np.int64)
    except SegmentationDataError:
        raise
    except Exception as err:  # PIL raises several types for bad files
        raise SegmentationDataError(f"mask {path} cannot be read ({type(err).__name__}: {err})") from None


def encode_labels(raw: np.ndarray, num_classes: int, *, reduce_zero_label: bool, ignore_index: int,
                  path: str | Path) -> np.ndarray:
    """File values -> class indices (mmsegmentation's ``reduce_zero_label``: 0 -> ignore, v -> v - 1, an
    ignore value stays ignored); a value at or above ``num_classes`` that is not ``ignore_index`` raises."""
    labels = raw.copy()
    if reduce_zero_label:
        labels[raw == 0] = ignore_index
        keep = (raw != 0) & (raw != ignore_index)
        labels[keep] = raw[keep] - 1
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        value = int(raw[bad].max())
        what = f"{num_classes} classes" + (" after reduce_zero_label (file values 1..N)" if reduce_zero_label else "")
        raise SegmentationDataError(f"mask {path}: label {value} is outside the {what} and is not the ignore "
                                    f"index {ignore_index} ({int(bad.sum())} pixels)")
    return labels


class SegmentationFiles(SegmentationDataset):
    """Image/mask file pairs read on access; the mask is checked against its image's size and the classes."""

    def __init__(self, pairs: list[tuple[str, str]], name: str, classes: Sequence[str], *,
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 sample_ids: Sequence[int] | None = None):
        self.pairs, self.name, self.classes = pairs, name, tuple(classes)
        self.reduce_zero_label, self.ignore_index = reduce_zero_label, ignore_index
        self.files = [image for image, _ in pairs]  # what data/images.py's pre-compute scan reads
        # an image's id is its index in the clean set, so a corrupted copy pairs with its clean image
        self.sample_ids = list(range(len(pairs))) if sample_ids is None else [int(i) for i in sample_ids]
        if len(self.sample_ids) != len(pairs):
            raise ValueError(f"{len(self.sample_ids)} sample ids for {len(pairs)} images")
        # (image, mask, sample id): the shape data/images.py's pre-compute scan (check_readable) reads
        self.samples = [(image, mask, sid) for (image, mask), sid in zip(pairs, self.sample_ids)]

    def unreadable(self, positions=None, thorough: bool = False) -> list[tuple[int, str]]:
        """``(position, reason)`` of the pairs at ``positions`` (default: all) that cannot be used: an image or
        mask that would not decode (:func:`unreadable_reason`), or a mask whose size (read from the headers,
        nothing decoded) differs from its image's. ``check_readable`` runs this before any compute."""
        out = []
        for i in range(len(self.pairs)) if positions is None else positions:
            image, mask = self.pairs[i]
            why = unreadable_reason(image, thorough)
            if why is None and (bad := unreadable_reason(mask, thorough)) is not None:
                why = f"its mask {mask}: {bad}"
            if why is None:
                with Image.open(image) as a, Image.open(mask) as b:
                    if a.size != b.size:
                        why = f"its mask {mask} is {b.size[0]}x{b.size[1]}, the image {a.size[0]}x{a.size[1]}"
            if why is not None:
                out.append((i, why))
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_path, mask_path = self.pairs[i]
        image = load_rgb(image_path)
        raw = read_mask(mask_path)
        if raw.shape != (image.height, image.width):
            raise SegmentationDataError(f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} "
                                        f"is {image.width}x{image.height} (width x height)")
        labels = encode_labels(raw, self.num_classes, reduce_zero_label=self.reduce_zero_label,
                               ignore_index=self.ignore_index, path=mask_path)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return x, torch.from_numpy(labels), self.sample_ids[i]

    def check_all(self) -> None:
        """Read every pair once and raise the first bad one's line (before any compute)."""
        for i in range(len(self)):
            self[i]


def _pairs(image_dir: Path, mask_dir: Path, what: str) -> list[tuple[str, str]]:
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise SegmentationDataError(f"{what}: folder {d} not found")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise SegmentationDataError(f"{what}: no images in {image_dir}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise SegmentationDataError(f"{what}: {len(missing)} image(s) without a PNG mask of the same name in "
                                    f"{mask_dir}, e.g. {image_dir / missing[0]}")
    return [(str(p), str(masks[p.stem])) for p in images]


def ade20k(root: str | Path, split: str = "validation") -> SegmentationFiles:
    """ADEChallengeData2016 as released (``root`` is that folder): 150 classes, reduce_zero_label."""
    root = Path(root)
    if split not in ("training", "validation"):
        raise SegmentationDataError(f"ade20k split must be 'training' or 'validation', got {split!r}")
    pairs = _pairs(root / "images" / split, root / "annotations" / split, f"ade20k root {root}")
    return SegmentationFiles(pairs, f"ade20k-{split}", ADE20K_CLASSES, reduce_zero_label=True)


def read_class_list(path: str | Path) -> tuple[str, ...]:
    """One class name per line (blank lines and '#' comments skipped); names must be unique."""
    path = Path(path)
    if not path.is_file():
        raise SegmentationDataError(f"class list {path} not found (one class name per line)")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise SegmentationDataError(f"class list {path} names no classes")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SegmentationDataError(f"class list {path} names {dup[0]!r} more than once")
    return tuple(names)


def segmentation_folder(root: str | Path, *, images: str = "images", masks: str = "masks",
                        classes: str = "classes.txt", reduce_zero_label: bool = False,
                        ignore_index: int = IGNORE_INDEX) -> SegmentationFiles:
    """A folder of one's own: ``root/images/*`` with ``root/masks/<same stem>.png`` and ``root/classes.txt``."""
    root = Path(root)
    names = read_class_list(root / classes)
    if ignore_index < len(names):
        raise SegmentationDataError(f"{root}: ignore index {ignore_index} is one of the {len(names)} classes")
    pairs = _pairs(root / images, root / masks, f"segmentation folder {root}")
    return SegmentationFiles(pairs, f"folder:{root.name}", names, reduce_zero_label=reduce_zero_label,
                             ignore_index=ignore_index)
