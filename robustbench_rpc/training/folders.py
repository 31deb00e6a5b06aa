"""On-disk training sets (``folder``, ``imagenet``): listings, per-image seeded augmentation, workers.

Images are decoded in the run's persistent worker pool (``data.pool.RunLoader``); each image's augmentation
is drawn under its own seed (``data.sample_seed(seed, epoch, position)``, torchvision's transforms on a
forked torch RNG), so the images are the same for any number of workers or ranks and after a resume. An
item's address is ``epoch * n + position``, so persistent workers need no per-epoch state.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

from ..data.folders import (ClassFolder, ClassMismatchError, ImageNetVal, ImageSampleFolder, UnreadableImageError,
                            load_rgb, scan_class_folders, transform_from_data_config)
from ..data.images import check_readable
from ..data.imagenet_classes import IMAGENET_WNIDS
from ..data.pool import RunLoader
from .data import DEFAULT_AUGMENT, ON_DISK_AUGMENTS, TrainData, listing_sha256, sample_seed, split_positions
from .recipe import RecipeError


def train_transform(augment: str, data_config: dict[str, Any], pad: int) -> Callable:
    """PIL image -> float CHW tensor in [0, 1] for ``augment``, sized by the model's contract."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    size = tuple(int(s) for s in data_config["input_size"][-2:])
    evaluation = transform_from_data_config(data_config)
    interp = InterpolationMode(str(data_config.get("interpolation", "bilinear")))
    if augment == "rrc-flip":
        return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interp),
                          T.RandomHorizontalFlip(), T.ToTensor()])
    if augment == "crop-flip":
        return T.Compose([evaluation.pil, T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), T.ToTensor()])
    return evaluation


class AugmentedImages(Dataset):
    """``ds[epoch * n + position]`` -> (augmented image, label, position), seeded per image and epoch."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, seed: int):
        self.samples, self.transform, self.seed = list(samples), transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int):
        epoch, pos = divmod(int(item), len(self.samples))
        path, label = self.samples[pos]
        img = load_rgb(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, pos))
            return self.transform(img), label, pos


def _one_line(err: Exception) -> RecipeError:
    return RecipeError("; ".join(line.strip() for line in str(err).splitlines() if line.strip()))


def _listing(name: str, root: Path, recipe) -> tuple[tuple[str, ...], list[tuple[str, int]], Path | None]:
    """(classes, [(path, label)], default validation folder) of the training images."""
    allow_missing = recipe.data.allow_missing_classes
    if name == "imagenet":
        train_dir = root / "train"
        if not train_dir.is_dir():
            raise RecipeError(f"imagenet: expected {root}/train/<wnid>/*.JPEG (the ImageNet train layout); "
                              f"no folder {train_dir}")
        _, pairs = scan_class_folders(str(train_dir), IMAGENET_WNIDS, allow_missing_classes=allow_missing,
                                      what="ImageNet train")
        index = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
        val = root / "val"
        return IMAGENET_WNIDS, [(p, index[c]) for p, c in pairs], val if val.is_dir() else None
    classes, pairs = scan_class_folders(str(root), None, what="image folder")
    index = {c: i for i, c in enumerate(classes)}
    return tuple(classes), [(p, index[c]) for p, c in pairs], None


def _validation(name, classes, samples, held, val_dir, recipe, evaluation) -> tuple[Dataset, str]:
    if held:
        ds = ImageSampleFolder([(samples[i][0], samples[i][1], i) for i in held], evaluation, classes=classes)
        return ds, f"{name} (held out {recipe.validation.holdout or 0.1:g} of the training images)"
    if name == "imagenet":
        if val_dir is None:
            raise RecipeError(f"imagenet: no validation images: add {recipe.data.root}/val/<wnid>/*.JPEG, set "
                              "data.val_root, or hold images out with validation.holdout")
        return ImageNetVal(str(val_dir), evaluation, allow_missing_classes=recipe.data.allow_missing_classes), \
            f"imagenet val ({val_dir})"
    got, _ = scan_class_folders(str(val_dir), None, what="validation folder")
    if tuple(got) != tuple(classes):
        diff = sorted(set(got) ^ set(classes))
        raise RecipeError(f"data.val_root {val_dir}: its class folders differ from the training classes "
                          f"({', '.join(diff[:5]) or 'order'}{' ...' if len(diff) > 5 else ''})")

    return ClassFolder(str(val_dir), evaluation), f"folder {val_dir}"


def _readable(name: str, root: Path, classes, samples, train: list[int], held: list[int], val, skip: bool
              ) -> tuple[list[int], list[int], Any, list[str]]:
    """Scan every image file the training will read before its first step, as ``run`` does
    (``data.images.check_readable``): a damaged file is refused in one line naming it and ``--skip-unreadable``,
    or with ``skip`` left out (training and held-out positions, validation folder). Returns (train, held,
    val, the paths left out)."""
    listing = ImageSampleFolder([(p, c, i) for i, (p, c) in enumerate(samples)], None, classes=classes)
    used = Subset(listing, list(train) + list(held))
    kept = check_readable(used, skip=skip, what=f"train {name} {root}")
    left_out = list(getattr(kept, "skipped_paths", []))
    if left_out:
        keep = set(kept.indices)
        train, held = [i for i in train if i in keep], [i for i in held if i in keep]
    if not held:  # a validation folder of its own
        val = check_readable(val, skip=skip, what=f"train {name} validation")
        left_out += list(getattr(val, "skipped_paths", []))
    return train, held, val, left_out


def folder_data(name: str, root: Path, recipe, data_config: dict[str, Any], workers: int = 0,
                skip_unreadable: bool = False) -> TrainData:
    """The training data of an on-disk set (see :mod:`robustbench_rpc.training.data`)."""
    d, v = recipe.data, recipe.validation
    augment = DEFAULT_AUGMENT[name] if d.augment == "default" else d.augment
    if augment not in ON_DISK_AUGMENTS:
        raise RecipeError(f"data.augment '{augment}' works on in-memory sets; {name} takes "
                          f"{', '.join(ON_DISK_AUGMENTS)}")
    try:
        classes, samples, val_dir = _listing(name, root, recipe)
        if d.val_root:
            val_dir = Path(d.val_root).expanduser()
            if not val_dir.is_dir():
                raise RecipeError(f"data.val_root is not a folder: {val_dir}")
        holdout = v.holdout if v.holdout is not None else (0.1 if name == "folder" and val_dir is None else 0.0)
        train, held = split_positions([s[1] for s in samples], holdout, d.limit)
        evaluation = transform_from_data_config(data_config)
        val, val_name = _validation(name, classes, samples, held, val_dir, recipe, evaluation)
        train, held, val, left_out = _readable(name, root, classes, samples, train, held, val, skip_unreadable)
        if held and left_out:  # the held-out images without the files left out
            val, _ = _validation(name, classes, samples, held, val_dir, recipe, evaluation)
    except (ClassMismatchError, FileNotFoundError, UnreadableImageError) as e:
        raise _one_line(e) from None
    train_samples = [samples[i] for i in train]
    images = AugmentedImages(train_samples, train_transform(augment, data_config, d.pad), recipe.seed)
    loader: dict[str, RunLoader] = {}
    n = len(train_samples)

    def pool() -> RunLoader:
        if not loader:
            loader["l"] = RunLoader({"train": images, "val": val}, num_workers=workers)
        return loader["l"]

    def train_batches(epoch, gen, batch_size, rank, world, steps):
        perm = torch.randperm(n, generator=gen)
        chunks = []
        for s in range(steps):
            pick = perm[s * batch_size:(s + 1) * batch_size]
            mine = torch.tensor_split(pick, world)[rank] if world > 1 else pick
            chunks.append([epoch * n + int(i) for i in mine])
        for x, y, _ in pool().batches("train", chunks):
            yield x, y

    def val_batches(units):
        for x, y, _ in pool().batches("val", [list(u) for u in units]):
            yield x, y

    size = tuple(int(s) for s in data_config["input_size"])
    doc = {"augment": augment + (f" (pad {d.pad})" if augment == "crop-flip" else ""), "holdout": holdout,
           "root": os.path.abspath(root)}
    if skip_unreadable:
        doc["unreadable_left_out"] = left_out
    return TrainData(name, tuple(classes), size, n, listing_sha256(root, train_samples), augment, val_name,
                     _targets(val), doc, train_batches, val_batches)


def _targets(val: Dataset) -> list[int]:
    """The validation labels, also of a folder with unreadable files left out (a Subset of it)."""
    if isinstance(val, Subset):
        return [int(val.dataset.samples[i][1]) for i in val.indices]
    return [int(t) for t in getattr(val, "targets")]
