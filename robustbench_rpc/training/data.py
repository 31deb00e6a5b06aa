"""Training data: the train split of each dataset, its augmentation, and the validation split.

Datasets and layouts (``[data] dataset``, ``root``):

- ``digits32``: the embedded digits, train split (1,258 images) / validation on the test split (539).
- ``cifar10`` / ``cifar100``: ``root/cifar-10-batches-py`` / ``root/cifar-100-python`` as torchvision
  (and so RobustBench's ``load_cifar10``) store them, read by torchvision with its md5 integrity check;
  validation on the test batch.
- ``imagenet``: ``root/train/<wnid>/*.JPEG`` (all 1000 wnids, the ImageNet-1k index order), validation on
  ``root/val/<wnid>/*.JPEG`` (the layout ``run`` reads) when present.
- ``folder``: your labelled images, ``root/<class>/<image>`` (classes = sorted folder names, as ``run
  --dataset folder``); validation on ``val_root`` (same classes) or on a held-out part of the images.

``validation.holdout`` (a fraction) holds that part of the training images out for validation instead,
spread evenly over the classes (``data.subsets.stratified_indices``); it defaults to 0.1 for ``folder``
without ``val_root`` and to 0 elsewhere. ``data.limit`` trains on that many images, also spread evenly.

Augmentation (``[data] augment``; ``default`` picks the dataset's):

- ``shift`` (digits32): a random translation of up to ``max_shift`` pixels per image, zero fill.
- ``crop-flip`` (CIFAR; ``folder`` after the model's evaluation resize): zero-pad ``pad`` pixels, random
  crop back to size, horizontal flip with probability 1/2 (the CIFAR recipe of Madry et al. and TRADES).
- ``rrc-flip`` (ImageNet): ``RandomResizedCrop`` to the model's input size (scale 0.08-1, aspect 3/4-4/3,
  the model's interpolation) and a horizontal flip. ARES' full pipeline (RandAugment, mixup, cutmix, random
  erasing) is not reproduced.
- ``none``: the model's evaluation preprocessing only.

Deterministic given the seed: in-memory sets draw the epoch's order and every augmentation of a global
batch from one generator (its state is part of the training state), on-disk sets seed each image's
augmentation from (seed, epoch, position), so the images do not depend on workers or ranks either.
Each rank trains on its contiguous part of every global batch.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import digits32
from ..data.subsets import stratified_indices
from .recipe import RecipeError

DEFAULT_AUGMENT = {"digits32": "shift", "cifar10": "crop-flip", "cifar100": "crop-flip", "imagenet": "rrc-flip",
                   "folder": "crop-flip"}
IN_MEMORY_AUGMENTS = ("shift", "crop-flip", "none")
ON_DISK_AUGMENTS = ("crop-flip", "rrc-flip", "none")
_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python")}


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of one on-disk image in one epoch."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero fill), one shift per image (the shipped
    micro checkpoints' augmentation: dx then dy drawn from ``gen``)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


def crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad ``pad`` pixels, random crop back to size, horizontal flip with probability 1/2."""
    B, _, H, W = x.shape
    out = shift(x, pad, gen)
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip.view(B, 1, 1, 1), out.flip(3), out)


@dataclass
class TrainData:
    """What ``loop`` needs: global batches of this rank's images, validation units, and what they are."""

    name: str
    classes: tuple[str, ...]
    image_size: tuple[int, int, int]
    n_train: int
    sha256: str
    augment: str
    val_name: str
    val_labels: list[int]
    describe: dict[str, Any] = field(default_factory=dict)
    _train_batches: Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None
    _val_batches: Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def steps_per_epoch(self, batch_size: int, world: int) -> int:
        """Global batches per epoch; on several ranks a last batch smaller than the rank count is dropped
        (a rank with no image cannot take part in the gradient all-reduce)."""
        full, rest = divmod(self.n_train, batch_size)
        return full + (1 if rest and rest >= world else 0)

    def batches(self, epoch: int, gen: torch.Generator, batch_size: int, rank: int = 0, world: int = 1):
        """This rank's part of each global batch of ``epoch``, as CPU tensors ``(x in [0, 1], y)``."""
        return self._train_batches(epoch, gen, batch_size, rank, world, self.steps_per_epoch(batch_size, world))

    def val_batches(self, units: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation images of each unit (a list of positions), as CPU tensors ``(x, y)``."""
        return self._val_batches(units)


def split_positions(labels: Sequence[int], holdout: float, limit: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions): the held-out part and the limit spread over the classes."""
    held = stratified_indices(labels, round(holdout * len(labels))) if holdout > 0 else []
    held_set = set(held)
    train = [i for i in range(len(labels)) if i not in held_set]
    if limit and limit < len(train):
        train = [train[i] for i in stratified_indices([labels[j] for j in train], limit)]
    if not train:
        raise RecipeError("data: no training images left after validation.holdout")
    return train, held


def _sha_tensors(*arrays: torch.Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(tuple(a.shape)).encode() + str(a.dtype).encode())
        h.update(np.ascontiguousarray(a.numpy()).tobytes())
    return h.hexdigest()


def _in_memory(name: str, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
               val_labels: torch.Tensor, classes: tuple[str, ...], recipe, val_name: str) -> TrainData:
    """A set held in memory (uint8 or float images): batched augmentation drawn from the epoch generator."""
    d, v = recipe.data, recipe.validation
    augment = DEFAULT_AUGMENT[name] if d.augment == "default" else d.augment
    if augment not in IN_MEMORY_AUGMENTS:
        raise RecipeError(f"data.augment '{augment}' needs on-disk images; {name} takes "
                          f"{', '.join(IN_MEMORY_AUGMENTS)}")
    holdout = v.holdout or 0.0
    train, held = split_positions(labels.tolist(), holdout, d.limit)
    if held:
        val_images, val_labels, val_name = images[held], labels[held], f"{name}-train (held out {holdout:g})"
    idx = torch.as_tensor(train)
    x_all, y_all = images[idx], labels[idx]

    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255) if x.dtype == torch.uint8 else x

    def train_batches(epoch, gen, batch_size, rank, world, steps):
        perm = torch.randperm(len(x_all), generator=gen)
        for s in range(steps):
            pick = perm[s * batch_size:(s + 1) * batch_size]
            x = as_float(x_all[pick])
            if augment == "shift":
                x = shift(x, d.max_shift, gen)
            elif augment == "crop-flip":
                x = crop_flip(x, d.pad, gen)
            y = y_all[pick]
            if world > 1:
                x, y = torch.tensor_split(x, world)[rank], torch.tensor_split(y, world)[rank]
            yield x, y

    def val_batches(units):
        for u in units:
            p = torch.as_tensor(list(u))
            yield as_float(val_images[p]), val_labels[p]

    aug_doc = {"shift": f"shift <= {d.max_shift} px", "crop-flip": f"pad {d.pad} + crop + flip", "none": "none"}
    return TrainData(name, classes, tuple(x_all.shape[1:]), len(x_all), _sha_tensors(x_all, y_all), augment,
                     val_name, val_labels.tolist(), {"augment": aug_doc[augment], "holdout": holdout},
                     train_batches, val_batches)


def _digits(recipe) -> TrainData:
    tr, te = digits32("train"), digits32("test")
    return _in_memory("digits32", tr.images, tr.labels, te.images, te.labels, tr.classes, recipe, "digits32-test")


def _cifar(name: str, recipe) -> TrainData:
    import torchvision

    cls_name, folder = _CIFAR[name]
    root = _root(recipe, name)
    if root.name == folder:
        root = root.parent
    cls = getattr(torchvision.datasets, cls_name)
    try:
        tr, te = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except RuntimeError as e:
        raise RecipeError(f"{name}: no readable {folder} under {root} (torchvision/RobustBench layout "
                          f"{root}/{folder}/...; torchvision says: {' '.join(str(e).split())})") from None

    def tensors(ds):
        return (torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(),
                torch.as_tensor(ds.targets, dtype=torch.long))

    (x, y), (vx, vy) = tensors(tr), tensors(te)
    return _in_memory(name, x, y, vx, vy, tuple(tr.classes), recipe, f"{name}-test")


def _root(recipe, name: str) -> Path:
    if not recipe.data.root:
        raise RecipeError(f"dataset '{name}' lives on disk: pass --data-root PATH (or [data] root = ...)")
    root = Path(recipe.data.root).expanduser()
    if not root.is_dir():
        raise RecipeError(f"data root for '{name}' is not a folder: {root}")
    return root


def listing_sha256(root: str | os.PathLike, samples: Sequence[tuple[str, int]]) -> str:
    """Hash of an on-disk training set: every file's relative path, size in bytes and label (the files
    are not read: ImageNet's 1.28 M images would take longer to hash than an epoch)."""
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}\t{os.path.getsize(path)}\t{label}\n".encode())
    return h.hexdigest()
