"""ImageNet-style image folders: ImageNet val, ImageNet-A, ImageNet-R, ImageNet-O (+ its in-distribution set).

Every dataset yields ``(image float CHW in [0, 1], label, sample_id)``: images are *not* normalized
(models normalize in their first layer).  ``sample_id`` is the index of the file in the full sorted
listing (class folders sorted, then file names sorted) - the ``ImageFolder`` order - so it does not
change with ``--limit``, sharding or skipped files, and ImageNet-C (same file names and classes as
ImageNet val) gets the same ids as the clean images it was made from.

Problems surface at construction, before any compute: a missing root names the path; class folders
that do not match the expected classes (the 1000 ImageNet wnids, the 200 of ImageNet-A/R/O, or a
given list) raise :class:`ClassMismatchError` listing the differences and naming the root.  An unreadable image raises
:class:`UnreadableImageError` naming its path and ``--skip-unreadable``; with ``skip_unreadable=True`` every
file is test-decoded at construction, unreadable ones are left out and counted (``n_skipped``,
``skipped_paths``). A run scans the files it will read before compute instead (:mod:`.images`).

Checked against the released layouts and the RPC-Attention paper's code (``Robust/eval_OOD.py`` of
rachtsy/KPCA_code): ImageNet-A, -R and -O are each ``root/<wnid>/*.jpg`` with 200 wnid folders (files
at the root, such as the release's ``README.txt``, are ignored); the paper evaluates them with logits
restricted to the 200 classes (``net(data)[:, mask]``), which :func:`mask_logits` reproduces while
labels keep their ImageNet-1k indices.  Missing classes: the loaders require all 200 folders by default
(a missing one signals a partial download); ``allow_missing_classes=True`` accepts a subset.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from .images import UnreadableImageError, decode_image, is_readable, load_rgb, to_uint8, unreadable_reason  # noqa: F401
from .imagenet_classes import (
    IMAGENET_A_INDICES, IMAGENET_A_WNIDS, IMAGENET_O_INDICES, IMAGENET_O_WNIDS, IMAGENET_R_INDICES, IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

class ClassMismatchError(ValueError):
    """Class folders differ from the expected classes; raised at construction, before compute."""


# ------------------------------------------------------------------------------------- preprocessing

_INTERPOLATIONS = {
    "bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC,
    "nearest": TF.InterpolationMode.NEAREST, "lanczos": TF.InterpolationMode.LANCZOS,
    "box": TF.InterpolationMode.BOX, "hamming": TF.InterpolationMode.HAMMING,
}


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> float CHW tensor in [0, 1]: optional shorter-side resize, optional centre crop,
    no normalization.  Picklable, so it works in DataLoader workers."""

    resize: int | None = 256
    crop: int | tuple[int, int] | None = 224
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"unknown interpolation '{self.interpolation}'; use one of "
                             f"{', '.join(_INTERPOLATIONS)}")

    def pil(self, img: Image.Image | np.ndarray) -> Image.Image:
        """Resize and crop only: the 8-bit image (what ImageNet-C corruptions take)."""
        if isinstance(img, np.ndarray):  # a 16-bit source (decode_image): its 8-bit rounding
            img = Image.fromarray(to_uint8(img))
        return self._geometry(img)

    def _geometry(self, img: Image.Image) -> Image.Image:
        if self.resize is not None:
            img = TF.resize(img, self.resize, interpolation=_INTERPOLATIONS[self.interpolation])
        if self.crop is not None:
            img = TF.center_crop(img, self.crop)
        return img

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(img, np.ndarray):  # 16 bits per channel: resized per channel in PIL's float mode
            planes = [self._geometry(Image.fromarray(np.ascontiguousarray(img[..., c]))) for c in range(3)]
            return torch.cat([TF.to_tensor(p) for p in planes]).clamp_(0.0, 1.0)
        return TF.to_tensor(self.pil(img))


def eval_transform(resize: int | None = 256, crop: int | None = 224,
                   interpolation: str = "bilinear") -> EvalTransform:
    """The standard ImageNet evaluation preprocessing (resize 256, centre crop 224), no normalization."""
    return EvalTransform(resize=resize, crop=crop, interpolation=interpolation)


def transform_from_data_config(config: Mapping) -> EvalTransform:
    """Preprocessing from a model's data config (timm's ``resolve_data_config`` keys):
    ``input_size`` (C, H, W), ``crop_pct`` and ``interpolation``; resize = floor(size / crop_pct).
    Mean/std are ignored: images stay in [0, 1] and the model normalizes."""
    size = config.get("input_size", (3, 224, 224))
    h, w = int(size[-2]), int(size[-1])
    crop_pct = float(config.get("crop_pct", 0.875) or 1.0)
    crop_mode = config.get("crop_mode", "center")
    if crop_mode not in (None, "center"):
        raise ValueError(f"unsupported crop_mode '{crop_mode}' (only 'center')")
    resize = math.floor(min(h, w) / crop_pct)
    return EvalTransform(resize=resize, crop=(h, w) if h != w else h,
                         interpolation=str(config.get("interpolation", "bilinear")))


# ------------------------------------------------------------------------------------------ scanning

def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _preview(items: Sequence[str], n: int = 10) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def scan_class_folders(root: str, expected_classes: Iterable[str] | None = None, *,
                       allow_missing_classes: bool = False, what: str = "dataset"
                       ) -> tuple[list[str], list[tuple[str, str]]]:
    """List ``root/<class>/<image>`` files: ``(class folder names sorted, [(path, class), ...])``.

    With ``expected_classes``, folders outside that set always raise :class:`ClassMismatchError`;
    expected classes without a folder raise too unless ``allow_missing_classes``.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} folder not found: {os.path.abspath(root)}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ClassMismatchError(f"{what}: no class folders in {os.path.abspath(root)} "
                                 f"(expected {root}/<class>/<image files>)")
    if expected_classes is not None:
        expected = list(expected_classes)
        exp_set, found = set(expected), set(classes)
        unknown = sorted(found - exp_set)
        missing = sorted(exp_set - found)
        if unknown or (missing and not allow_missing_classes):
            lines = [f"{what}: class folders in {os.path.abspath(root)} do not match the "
                     f"{len(exp_set)} expected classes"]
            if unknown:
                lines.append(f"  unexpected folders ({len(unknown)}): {_preview(unknown)}")
            if missing and not allow_missing_classes:
                lines.append(f"  missing classes ({len(missing)}): {_preview(missing)}")
            lines.append("  (check the root, or pass the right class list / class_to_idx)")
            raise ClassMismatchError("\n".join(lines))
    samples = []
    for cls in classes:
        cdir = os.path.join(root, cls)
        names = sorted(n for n in os.listdir(cdir) if _is_image(n))
        samples.extend((os.path.join(cdir, n), cls) for n in names)
    if not samples:
        raise FileNotFoundError(f"{what}: no image files under {os.path.abspath(root)}")
    return classes, samples


class ImageSampleFolder(Dataset):
    """Shared machinery: a fixed list of ``(path, label, sample_id)`` read on demand."""

    name = "image-folder"

    def __init__(self, samples: list[tuple[str, int, int]], transform: Callable | None,
                 skip_unreadable: bool = False, classes: Sequence[str] = ()):
        self.transform = transform if transform is not None else eval_transform()
        self.skip_unreadable = skip_unreadable
        self.classes = tuple(classes)
        self.skipped_paths: list[str] = []
        if skip_unreadable:
            kept = []
            for s in samples:
                if is_readable(s[0]):
                    kept.append(s)
                else:
                    self.skipped_paths.append(s[0])
            samples = kept
        self.samples = samples

    def unreadable(self, positions: Iterable[int] | None = None, thorough: bool = False) -> list[tuple[int, str]]:
        """``(position, reason)`` of the files at ``positions`` (default: all) that would not decode, by
        :func:`unreadable_reason`; nothing is decoded in full unless a file looks damaged or ``thorough``."""
        todo = range(len(self.samples)) if positions is None else positions
        found = ((i, unreadable_reason(self.samples[i][0], thorough)) for i in todo)
        return [(i, why) for i, why in found if why is not None]

    @property
    def n_skipped(self) -> int:
        """Number of unreadable files left out (only with ``skip_unreadable=True``)."""
        return len(self.skipped_paths)

    @property
    def targets(self) -> list[int]:
        return [s[1] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label, sample_id = self.samples[i]  # our transform keeps a 16-bit file's precision
        img = self.transform(decode_image(path) if isinstance(self.transform, EvalTransform) else load_rgb(path))
        return img, label, sample_id

    def uint8_item(self, i: int):
        """``(uint8 HWC array, label, sample_id)``: the decoded, resized, cropped 8-bit image without the
        float round trip (on-the-fly corruptions start from it; equal to quantizing ``self[i]``), or
        None when the transform is not an :class:`EvalTransform`."""
        if not isinstance(self.transform, EvalTransform):
            return None
        path, label, sample_id = self.samples[i]
        return np.asarray(self.transform.pil(load_rgb(path))), label, sample_id


def _indexed(pairs: list[tuple[str, str]], label_of: Callable[[str], int]) -> list[tuple[str, int, int]]:
    return [(p, label_of(c), i) for i, (p, c) in enumerate(pairs)]


# ------------------------------------------------------------------------------------------ datasets

class ImageNetVal(ImageSampleFolder):
    """ImageNet-1k validation set as ``root/<wnid>/<image>`` (torchvision ``ImageFolder`` layout).

    Labels are positions in ``classes`` (default: the 1000 sorted ImageNet wnids, the standard class
    index).  Preprocessing: shorter side resized to ``resize``, centre crop ``crop`` (defaults 256 /
    224; derive them from a model with :func:`transform_from_data_config`), or any ``transform``.
    ``keep_classes``: only the images of these classes (sample ids stay those of the full listing, so
    they pair with a full clean evaluation).
    """

    name = "imagenet-val"

    def __init__(self, root: str, transform: Callable | None = None, *, resize: int | None = 256,
                 crop: int | None = 224, interpolation: str = "bilinear",
                 classes: Sequence[str] = IMAGENET_WNIDS, allow_missing_classes: bool = False,
                 skip_unreadable: bool = False, keep_classes: Iterable[str] | None = None):
        self.root = os.fspath(root)
        index = {c: i for i, c in enumerate(classes)}
        _, pairs = scan_class_folders(self.root, classes, allow_missing_classes=allow_missing_classes,
                                      what="ImageNet val")
        samples = _indexed(pairs, index.__getitem__)
        if keep_classes is not None:
            keep = set(keep_classes)
            unknown = sorted(keep - set(index))
            if unknown:
                raise ClassMismatchError(f"ImageNet val: keep_classes not among the classes of "
                                         f"{os.path.abspath(self.root)}: {_preview(unknown)}")
            keep_labels = {index[c] for c in keep}
            samples = [s for s in samples if s[1] in keep_labels]
            if not samples:
                raise FileNotFoundError(f"ImageNet val: no image files of the {len(keep)} requested "
                                        f"classes under {os.path.abspath(self.root)}")
        super().__init__(samples,
                         transform if transform is not None else eval_transform(resize, crop, interpolation),
                         skip_unreadable, classes)


class _SubsetImageNet(ImageSampleFolder):
    wnids: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    display = ""
    out_of_distribution = False  # True: every label is -1 (no class is correct)
    hint = ""  # appended to a ClassMismatchError

    def __init__(self, root: str, transform: Callable | None = None, *, resize: int | None = 256,
                 crop: int | None = 224, interpolation: str = "bilinear",
                 allow_missing_classes: bool = False, skip_unreadable: bool = False):
        self.root = os.fspath(root)
        to_1k = dict(zip(self.wnids, self.indices))
        try:
            _, pairs = scan_class_folders(self.root, self.wnids, allow_missing_classes=allow_missing_classes,
                                          what=self.display)
        except ClassMismatchError as exc:
            if not self.hint:
                raise
            raise ClassMismatchError(f"{exc}\n  {self.hint}") from None
        label_of = (lambda c: -1) if self.out_of_distribution else to_1k.__getitem__
        super().__init__(_indexed(pairs, label_of),
                         transform if transform is not None else eval_transform(resize, crop, interpolation),
                         skip_unreadable, IMAGENET_WNIDS)

    @property
    def class_indices(self) -> torch.Tensor:
        """The dataset's classes as ImageNet-1k indices (ascending): restrict logits to these."""
        return torch.tensor(self.indices, dtype=torch.long)


class ImageNetA(_SubsetImageNet):
    """ImageNet-A (``root/<wnid>/*.jpg``, 200 classes).  Labels are ImageNet-1k indices; evaluate with
    logits restricted to :data:`IMAGENET_A_INDICES` (:func:`class_mask_for`, :class:`MaskedLogits`)."""

    name = "imagenet-a"
    display = "ImageNet-A"
    wnids = IMAGENET_A_WNIDS
    indices = IMAGENET_A_INDICES


class ImageNetR(_SubsetImageNet):
    """ImageNet-R (``root/<wnid>/*.jpg``, 200 classes).  Labels are ImageNet-1k indices; evaluate with
    logits restricted to :data:`IMAGENET_R_INDICES` (:func:`class_mask_for`, :class:`MaskedLogits`)."""

    name = "imagenet-r"
    display = "ImageNet-R"
    wnids = IMAGENET_R_WNIDS
    indices = IMAGENET_R_INDICES


class ImageNetO(_SubsetImageNet):
    """ImageNet-O as released: ``root/<wnid>/*.jpg`` with 200 class folders that ARE ImageNet-1k wnids
    (:data:`IMAGENET_O_WNIDS`, the classes the out-of-distribution images were selected against).

    Every label is -1 (out-of-distribution: no class is correct).  A folder that is not one of the 200
    raises :class:`ClassMismatchError` naming the folder(s) and the root; all 200 folders are required
    unless ``allow_missing_classes``.  The paper's protocol (RPC-Attention code ``Robust/eval_OOD.py``,
    ``get_imagenet_o_results``): logits of the OOD images and of the in-distribution images -
    :class:`ImageNetOInDistribution`, the ImageNet val images of the same 200 classes - restricted to
    :data:`IMAGENET_O_INDICES`, score = -max softmax, OOD positive, AUPR = average precision
    (:func:`robustbench_rpc.metrics.ood_metrics`).  Suites select it with
    ``kind = "ood"``, ``dataset = "imagenet-o"``, ``protocol = "imagenet-o-200"`` (see
    :mod:`robustbench_rpc.evaluation.ood`).  An OOD set of your own with other folder names: :class:`OODImageFolder`.
    """

    name = "imagenet-o"
    display = "ImageNet-O"
    wnids = IMAGENET_O_WNIDS
    indices = IMAGENET_O_INDICES
    out_of_distribution = True
    hint = ("ImageNet-O as released has 200 folders named by the ImageNet-1k wnids of "
            "IMAGENET_O_WNIDS; for an OOD set of your own use the dataset 'ood-folder'")


class ImageNetOInDistribution(ImageNetVal):
    """The in-distribution half of the ImageNet-O protocol: the ImageNet val images (``root`` is the
    val folder, all 1000 class folders as for :class:`ImageNetVal`) of the 200 ImageNet-O classes only,
    as the paper's ``Robust/eval_OOD.py`` builds it (it links each ImageNet-O folder name to the val
    folder of the same name).  Labels are ImageNet-1k indices, sample ids those of the full val listing;
    evaluate with logits restricted to :data:`IMAGENET_O_INDICES`."""

    name = "imagenet-o-in"

    def __init__(self, root: str, transform: Callable | None = None, *, resize: int | None = 256,
                 crop: int | None = 224, interpolation: str = "bilinear",
                 allow_missing_classes: bool = False, skip_unreadable: bool = False):
        super().__init__(root, transform, resize=resize, crop=crop, interpolation=interpolation,
                         allow_missing_classes=allow_missing_classes, skip_unreadable=skip_unreadable,
                         keep_classes=IMAGENET_O_WNIDS)

    @property
    def class_indices(self) -> torch.Tensor:
        return torch.tensor(IMAGENET_O_INDICES, dtype=torch.long)


class OODImageFolder(ImageSampleFolder):
    """An out-of-distribution set of your own: ``root/<any folder>/<image>``, every label -1, no class
    check (not ImageNet-O: use :class:`ImageNetO` for the release).  Scored against the full clean
    evaluation with unmasked logits (OOD protocol ``all-classes``)."""

    name = "ood-folder"

    def __init__(self, root: str, transform: Callable | None = None, *, resize: int | None = 256,
                 crop: int | None = 224, interpolation: str = "bilinear",
                 skip_unreadable: bool = False):
        self.root = os.fspath(root)
        _, pairs = scan_class_folders(self.root, None, what="OOD folder")
        super().__init__(_indexed(pairs, lambda c: -1),
                         transform if transform is not None else eval_transform(resize, crop, interpolation),
                         skip_unreadable, ())


class ClassFolder(ImageSampleFolder):
    """Your own labelled images (dataset ``folder``): ``root/<class>/<image>``, the ``ImageFolder`` layout.
    Classes are the sorted folder names (label = position), so class ``i`` must be the model's output ``i``;
    preprocessing is the model's contract (:func:`transform_from_data_config`)."""

    name = "folder"

    def __init__(self, root: str, transform: Callable | None = None, *, resize: int | None = 256,
                 crop: int | None = 224, interpolation: str = "bilinear", skip_unreadable: bool = False):
        self.root = os.fspath(root)
        classes, pairs = scan_class_folders(self.root, None, what="image folder")
        index = {c: i for i, c in enumerate(classes)}
        super().__init__(_indexed(pairs, index.__getitem__),
                         transform if transform is not None else eval_transform(resize, crop, interpolation),
                         skip_unreadable, classes)


# ------------------------------------------------------------------------------------ class masking

_SUBSET_INDICES = {"imagenet-a": IMAGENET_A_INDICES, "imagenet-r": IMAGENET_R_INDICES,
                   "imagenet-o": IMAGENET_O_INDICES, "imagenet-o-in": IMAGENET_O_INDICES}
_FULL_1K = ("imagenet", "imagenet-val", "imagenet-1k", "imagenet-c")


def class_mask_for(dataset) -> torch.Tensor:
    """ImageNet-1k class indices a dataset is evaluated on (``LongTensor``, ascending).

    ``dataset`` is a name (``"imagenet-a"``, ``"imagenet-r"``, ``"imagenet-o"`` and its in-distribution
    set ``"imagenet-o-in"`` give their 200; ``"imagenet"``, ``"imagenet-val"``, ``"imagenet-c"`` give all
    1000) or a dataset with a ``class_indices`` attribute or a ``name`` attribute.
    """
    if isinstance(dataset, str):
        key = dataset.lower().replace("_", "-")
        if key in _SUBSET_INDICES:
            return torch.tensor(_SUBSET_INDICES[key], dtype=torch.long)
        if key in _FULL_1K:
            return torch.arange(1000, dtype=torch.long)
        raise KeyError(f"no class mask known for dataset '{dataset}'; known: "
                       f"{', '.join(list(_SUBSET_INDICES) + list(_FULL_1K))}")
    indices = getattr(dataset, "class_indices", None)
    if indices is not None:
        return torch.as_tensor(indices, dtype=torch.long)
    name = getattr(dataset, "name", None)
    if isinstance(name, str):
        return class_mask_for(name)
    raise TypeError(f"cannot tell the classes of {type(dataset).__name__}; pass a dataset name")


def mask_logits(logits: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
    """Logits with every class outside ``class_indices`` set to a very negative finite value, so
    argmax/top-k/softmax range over those classes only while labels keep their 1000-class indices
    (finite, not -inf, so ``p * log p`` style computations stay NaN-free)."""
    idx = torch.as_tensor(class_indices, device=logits.device, dtype=torch.long)
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[idx] = True
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min / 2)


class MaskedLogits(nn.Module):
    """Wraps a classifier so its logits are restricted to a class subset (ImageNet-A/R protocol)."""

    def __init__(self, model: nn.Module, class_indices):
        super().__init__()
        self.model = model
        self.register_buffer("class_indices", torch.as_tensor(class_indices, dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_logits(self.model(x), self.class_indices)


def restrict_logits(logits: torch.Tensor, class_indices) -> torch.Tensor:
    """The columns of ``class_indices`` only (``(B, len(class_indices))``), the other convention:
    labels must then be positions within ``class_indices``."""
    return logits.index_select(-1, torch.as_tensor(class_indices, device=logits.device,
                                                   dtype=torch.long))
