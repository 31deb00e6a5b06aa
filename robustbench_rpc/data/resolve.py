"""Dataset names used in suites -> dataset objects, with roots for on-disk data checked before compute."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..registry import Registry
from .embedded import digits32, digits32_ood
from .cifar import CIFARTest

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
#: datasets whose files live on disk under a root the user supplies (--data-root NAME=PATH)
NEEDS_ROOT = {"imagenet", "imagenet-a", "imagenet-r", "imagenet-o", "imagenet-o-in", "imagenet-c", "cifar10-c",
              "cifar100-c", "ood-folder", "folder", "cifar10", "cifar100"}
#: datasets read from another dataset's root: the ImageNet-O in-distribution set is ImageNet val's images
ROOT_OF = {"imagenet-o-in": "imagenet"}


class DataRootError(ValueError):
    """A dataset that needs files on disk and has no (or a wrong) root."""


def root_for(name: str, roots: dict[str, str]) -> Path:
    if name not in roots:
        raise DataRootError(f"dataset '{name}' lives on disk: pass --data-root {name}=PATH "
                            f"(or set it under [defaults] data_roots in the suite)")
    path = Path(roots[name]).expanduser()
    if not path.is_dir():
        raise DataRootError(f"data root for '{name}' is not a folder: {path}")
    return path


DATASETS.add("digits32", lambda roots, cfg: digits32("test"))
DATASETS.add("digits32-train", lambda roots, cfg: digits32("train"))
DATASETS.add("digits32-ood", lambda roots, cfg: digits32_ood(500))


def _folders():
    from . import folders  # on-disk ImageNet-style loaders

    return folders


def _on_disk(cls_name: str, key: str):
    """Loader for an ImageFolder-style set; preprocessing derives from the model's data config."""

    def make(roots: dict[str, str], cfg: dict[str, Any], skip_unreadable: bool = False) -> Dataset:
        folders = _folders()
        transform = folders.transform_from_data_config(cfg) if cfg else None
        root = root_for(ROOT_OF.get(key, key), roots)
        return getattr(folders, cls_name)(str(root), transform, skip_unreadable=skip_unreadable)

    return make


for _cls, _key in (("ImageNetVal", "imagenet"), ("ImageNetA", "imagenet-a"), ("ImageNetR", "imagenet-r"),
                   ("ImageNetO", "imagenet-o"), ("ImageNetOInDistribution", "imagenet-o-in"),
                   ("OODImageFolder", "ood-folder"), ("ClassFolder", "folder")):
    DATASETS.add(_key, _on_disk(_cls, _key))


def _cifar(name: str):
    """CIFAR-10/100 test set as RobustBench loads it (``data/cifar.py``): root = the folder holding
    torchvision's ``cifar-10-batches-py`` / ``cifar-100-python``; no resize, whatever the contract."""

    def make(roots: dict[str, str], cfg: dict[str, Any], skip_unreadable: bool = False) -> Dataset:
        return CIFARTest(str(root_for(name, roots)), name)

    return make


DATASETS.add("cifar10", _cifar("cifar10"))
DATASETS.add("cifar100", _cifar("cifar100"))


def get_dataset(name: str, roots: dict[str, str] | None = None, data_config: dict[str, Any] | None = None,
                skip_unreadable: bool = False) -> Dataset:
    """Build dataset ``name``; ``data_config`` is the model's contract (input size, crop) for on-disk data.
    ``skip_unreadable`` leaves unreadable image files of on-disk sets out and counts them (else: error)."""
    factory = DATASETS.get(name)
    if name in NEEDS_ROOT:
        return factory(dict(roots or {}), dict(data_config or {}), skip_unreadable)
    return factory(dict(roots or {}), dict(data_config or {}))
