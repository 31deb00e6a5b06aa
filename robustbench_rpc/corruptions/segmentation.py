"""Corrupted segmentation sets: ADE20K-C and the like, on the fly or as released pre-generated folders.

On the fly (:class:`CorruptedSegmentation`): each image is corrupted exactly as the classification corruptions
are (``CorruptedDataset``: the 8-bit image, a seed derived from ``(seed, corruption, severity, sample_id)``, the
``imagecorruptions`` implementations at the ImageNet-C severities for images of 64 px and more); the mask is left
as it is. Images are corrupted in RGB. FAN's ``segmentation/tools/gen_city_c.py`` (NVlabs/FAN, which generated
the ADE20K-C the RPC paper's segmentation table follows) reads images with ``mmcv.imread``, i.e. in BGR order,
and corrupts those arrays, which changes the colour-dependent corruptions (saturate, frost, fog, snow, spatter ...);
``channel_order="bgr"`` reproduces that order, only when asked. It also draws from one global seed (8) in file
order, so its images are not reproducible one by one; ours are.

Released folders (:func:`corrupted_folder`): ``gen_city_c.py`` writes ``<root>/<corruption>/<severity>/<the clean
image's relative path>``; the annotations are the clean set's. Each corrupted image is paired with the clean
image of the same name and keeps its sample id, so clean and corrupted results compare image by image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.folders import IMG_EXTENSIONS
from ..data.segmentation import SegmentationDataError, SegmentationFiles
from .core import corrupt, derive_seed
from .dataset import CorruptedDataset

CHANNEL_ORDERS = ("rgb", "bgr")


class CorruptedSegmentation(CorruptedDataset):
    """A segmentation set ``(image, mask, sample_id)`` with each image corrupted on the fly, masks unchanged."""

    def __init__(self, base, corruption: str, severity: int, seed: int = 0, severity_table: str = "auto",
                 channel_order: str = "rgb"):
        super().__init__(base, corruption, severity, seed=seed, severity_table=severity_table)
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (FAN's gen_city_c.py order), got {channel_order!r}")
        self.channel_order = channel_order
        self.classes = getattr(base, "classes", ())
        self.ignore_index = getattr(base, "ignore_index", 255)
        self.name = f"{getattr(base, 'name', 'segmentation')}-c"
        self.task = "segmentation"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def info(self) -> dict:
        return {**super().info, "channel_order": self.channel_order}

    def __getitem__(self, i: int):
        x, mask, sample_id = self._uint8(i)
        table = self._resolve(x.shape[0], x.shape[1])
        seed = derive_seed(self.seed, self.corruption, self.severity, int(sample_id))
        if self.channel_order == "bgr":
            x = np.ascontiguousarray(x[..., ::-1])
        out = corrupt(x, self.corruption, self.severity, seed=seed, severity_table=table)
        if self.channel_order == "bgr":
            out = out[..., ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return chw.float().div_(255.0), mask, sample_id


def corrupted_folder(root: str | Path, corruption: str, severity: int, clean: SegmentationFiles) -> SegmentationFiles:
    """The released/pre-generated images ``root/<corruption>/<severity>/...`` paired, by file name, with the
    ``clean`` set's annotations and sample ids (e.g. ``clean = ade20k(ADE_ROOT)``)."""
    root = Path(root)
    folder = root / corruption / str(int(severity))
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise SegmentationDataError(f"corrupted set: folder {folder} not found (corruptions in {root}: "
                                    f"{', '.join(have) or 'none'}; expected <root>/<corruption>/<severity>/)")
    images = {p.stem: p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS}
    if not images:
        raise SegmentationDataError(f"corrupted set: no images in {folder}")
    by_stem = {Path(image).stem: (i, mask) for i, (image, mask) in enumerate(clean.pairs)}
    unknown = sorted(s for s in images if s not in by_stem)
    if unknown:
        raise SegmentationDataError(f"corrupted set: {len(unknown)} image(s) in {folder} have no clean image of the "
                                    f"same name in {clean.name}, e.g. {images[unknown[0]]}")
    stems = sorted(images, key=lambda s: by_stem[s][0])
    pairs = [(str(images[s]), by_stem[s][1]) for s in stems]
    ids = [clean.sample_ids[by_stem[s][0]] for s in stems]
    return SegmentationFiles(pairs, f"{clean.name}-{corruption}-{int(severity)}", clean.classes,
                             reduce_zero_label=clean.reduce_zero_label, ignore_index=clean.ignore_index,
                             sample_ids=ids)
