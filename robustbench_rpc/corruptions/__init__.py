"""Common corruptions (ImageNet-C / CIFAR-10-C): registry, on-the-fly corruption, on-disk sets.

    from robustbench_rpc.corruptions import corrupt, list_corruptions, CorruptedDataset
    x_c = corrupt(x, "fog", severity=3, seed=0)            # uint8 HWC array or float CHW tensor

Custom corruptions join the registry with a decorator::

    @register_corruption("my_blur")                         # one implementation for every table
    def my_blur(x, severity, rng): ...                      # uint8 (H, W, 3) -> array in [0, 255]
"""
from . import cifar_c, imagenet_c  # noqa: F401  (register the built-in corruptions)
from . import patches  # noqa: F401  (random-patch contamination: patch_noise, patch_shuffle)
from .core import (
    AUTO_TABLE_MIN_SIDE, CORRUPTIONS, SEVERITY_TABLES, CorruptionSpec, corrupt, derive_seed, get_corruption,
    list_corruptions, register_corruption, resolve_severity_table, seeded_numpy_global,
)
from .cifar_c import CIFAR10_C_PARAMS
from .dataset import CorruptedDataset, to_uint8_hwc, write_imagenet_c_layout
from .folders import CIFARCNpy, ImageNetCFolder, find_corruption_folder, imagenet_c_folders

__all__ = [
    "AUTO_TABLE_MIN_SIDE", "CIFAR10_C_PARAMS", "CORRUPTIONS", "SEVERITY_TABLES", "CIFARCNpy",
    "CorruptedDataset", "CorruptionSpec", "ImageNetCFolder", "corrupt", "derive_seed",
    "find_corruption_folder", "get_corruption", "imagenet_c_folders", "list_corruptions",
    "register_corruption", "resolve_severity_table", "seeded_numpy_global", "to_uint8_hwc",
    "write_imagenet_c_layout",
]
