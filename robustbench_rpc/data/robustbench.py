"""RobustBench's protocol as data: its 5,000 ImageNet ids, AlexNet's ImageNet-C rows, its preprocessings.

Checked against RobustBench/robustbench (commit 78fcc9e, = PyPI robustbench 1.1.1):

- ``robustbench/data.py::load_imagenet`` reads ``helper_files/imagenet_test_image_ids.txt`` through
  ``loaders.CustomImageFolder`` (labels = positions of the sorted class folders) and takes the first
  ``n_examples`` (default and maximum 5,000) *in the file's order* (a random draw over classes, not 5 per
  class). ``load_imagenetc`` reads the same relative paths under ``ImageNet-C/<corruption>/<severity>``.
  :func:`imagenet_test_ids` ships that list unchanged (``robustbench_files/``, with RobustBench's MIT notice).
- ``load_cifar10`` / ``load_cifar100``: torchvision's test set, ``ToTensor`` only, the first ``n_examples``
  (default 10,000 = all); ``load_cifar10c``: ``<corruption>.npy`` rows ``(s-1)*10000 .. (s-1)*10000+n``.
- ``PREPROCESSINGS`` (by name, per model in its zoo): ``Res256Crop224``, ``BicubicRes256Crop224``,
  ``Crop288``, ``Res224``, ``None`` (ToTensor). ``eval.py::benchmark`` uses the model's (or the given)
  preprocessing for the clean images and AutoAttack, and always ``Res224`` for the corruption sets.
  :data:`PREPROCESSINGS` here builds each as our :class:`~.folders.EvalTransform`; tests compare them
  with RobustBench's own transforms on images of several sizes.
- ``corruptions_evaluation``: the corruption accuracy is the mean of the 75 (corruption, severity)
  accuracies; ``corruptions_mce`` = mean over corruptions of ``mean_s(1 - acc) / mean_s(1 - acc_AlexNet)``
  with AlexNet's row of ``model_info/imagenet/corruptions/unaggregated_results.csv`` (measured on the
  5,000 ids; :func:`alexnet_imagenet_c` ships it). CIFAR-10/100 have no AlexNet row there, so RobustBench
  reports only the corruption accuracy for them (its mCE line would fail on ``loc['AlexNet']``).
"""
from __future__ import annotations

import csv
import functools
from importlib import resources
from typing import Any, Mapping

from .folders import EvalTransform, transform_from_data_config
from .resolve import NEEDS_ROOT

FILES = "robustbench_files"
IMAGENET_IDS_FILE = "imagenet_test_image_ids.txt"
ALEXNET_FILE = "alexnet_imagenet_c_5000.csv"
#: the built-in subset name of RobustBench's ImageNet list (``NAME:N`` = its first N, RobustBench's n_examples)
IMAGENET_SUBSET = "robustbench-imagenet-5000"

#: RobustBench's 15 corruptions, in ``robustbench/data.py``'s order
CORRUPTIONS: tuple[str, ...] = (
    "shot_noise", "motion_blur", "snow", "pixelate", "gaussian_noise", "defocus_blur", "brightness", "fog",
    "zoom_blur", "frost", "glass_blur", "impulse_noise", "contrast", "jpeg_compression", "elastic_transform")

#: each name of RobustBench's ``PREPROCESSINGS`` as our transform (PIL -> float CHW in [0, 1])
PREPROCESSINGS: dict[str | None, EvalTransform] = {
    "Res256Crop224": EvalTransform(resize=256, crop=224, interpolation="bilinear"),
    "BicubicRes256Crop224": EvalTransform(resize=256, crop=224, interpolation="bicubic"),
    "Crop288": EvalTransform(resize=None, crop=288),
    "Res224": EvalTransform(resize=(224, 224), crop=None),
    None: EvalTransform(resize=None, crop=None),
}

#: RobustBench's leaderboards: (dataset, threat model) -> what benchmark() does for it
THREAT_MODELS: dict[tuple[str, str], dict[str, Any]] = {
    ("imagenet", "Linf"): {"eps": 4 / 255, "n_examples": 5000, "attack": "AutoAttack standard"},
    ("imagenet", "corruptions"): {"n_examples": 5000, "corruptions": CORRUPTIONS, "preprocessing": "Res224",
                                  "mce_baseline": "AlexNet"},
    ("cifar10", "Linf"): {"eps": 8 / 255, "n_examples": 10000, "attack": "AutoAttack standard"},
    ("cifar10", "L2"): {"eps": 0.5, "n_examples": 10000, "attack": "AutoAttack standard"},
    ("cifar10", "corruptions"): {"n_examples": 10000, "corruptions": CORRUPTIONS},
    ("cifar100", "Linf"): {"eps": 8 / 255, "n_examples": 10000, "attack": "AutoAttack standard"},
    ("cifar100", "corruptions"): {"n_examples": 10000, "corruptions": CORRUPTIONS},
}


def _read(name: str) -> str:
    return (resources.files(__package__) / FILES / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _imagenet_ids() -> tuple[str, ...]:
    return tuple(line.strip() for line in _read(IMAGENET_IDS_FILE).splitlines() if line.strip())


def imagenet_test_ids(n: int | None = None) -> list[str]:
    """RobustBench's ImageNet evaluation images as ``<wnid>/<file>`` paths, in its order; ``n``: the first n
    (RobustBench's ``n_examples``, at most 5,000)."""
    ids = _imagenet_ids()
    if n is not None and not 1 <= n <= len(ids):
        raise ValueError(f"RobustBench evaluates at most {len(ids)} ImageNet images; got n={n}")
    return list(ids if n is None else ids[:n])


@functools.lru_cache(maxsize=None)
def _alexnet() -> dict[tuple[str, int], float]:
    rows = list(csv.reader(_read(ALEXNET_FILE).splitlines()))
    names, severities = rows[0], rows[1]
    alex = next(r for r in rows[2:] if r and r[0] == "AlexNet")
    return {(names[i], int(severities[i])): float(alex[i]) for i in range(1, len(names))}


def alexnet_imagenet_c() -> dict[tuple[str, int], float]:
    """AlexNet's top-1 accuracy per (corruption, severity) on RobustBench's 5,000 ImageNet-C ids (fractions)."""
    return dict(_alexnet())


def robustbench_preprocessing(data_config: Mapping[str, Any]) -> str | None:
    """The name of RobustBench's preprocessing that a model contract produces (``Res256Crop224`` for 224 px,
    crop_pct 0.875, bilinear), or None when it is none of them (``Crop288`` and ``Res224`` have no
    contract equivalent: a contract always resizes the shorter side to size / crop_pct)."""
    ours = transform_from_data_config(data_config)
    for name, theirs in PREPROCESSINGS.items():
        if name is not None and ours == theirs:
            return name
    return None


def describe_preprocessing(data_config: Mapping[str, Any] | None, dataset: str) -> dict[str, Any]:
    """What a run feeds its models, for the protocol fingerprint (``Plan.eval_info`` records it): the
    contract's resize/crop/interpolation for on-disk ImageNet-style sets and the RobustBench preprocessing it
    equals, the released ImageNet-C files as they are at 224 px (= RobustBench's ``Res224`` on them),
    ``ToTensor`` for CIFAR and CIFAR-C, no transform for the in-memory sets."""
    if dataset in ("cifar10", "cifar100", "cifar10-c", "cifar100-c") or dataset not in NEEDS_ROOT or not data_config:
        return {"transform": "ToTensor" if dataset.startswith("cifar") else "in-memory tensors, no resize",
                "robustbench": "None" if dataset.startswith("cifar") else None}
    if dataset == "imagenet-c":  # the harness keeps the released 224 px files as they are at 224, else resizes
        size = int(data_config.get("input_size", (3, 224, 224))[-1])
        if size == 224:
            return {"transform": "as released (centre crop 224)", "robustbench": "Res224"}
        return {"resize": size, "crop": size, "interpolation": data_config.get("interpolation", "bilinear"),
                "robustbench": None}
    t = transform_from_data_config(data_config)
    return {"resize": t.resize, "crop": t.crop, "interpolation": t.interpolation,
            "robustbench": robustbench_preprocessing(data_config)}
