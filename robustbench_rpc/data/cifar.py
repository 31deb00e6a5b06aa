"""CIFAR-10 / CIFAR-100 test sets as RobustBench loads them: torchvision's files, ``ToTensor`` only.

RobustBench's ``load_cifar10`` / ``load_cifar100`` (``robustbench/data.py``) build
``torchvision.datasets.CIFAR10(root=data_dir, train=False, transform=ToTensor())`` and keep the first
``n_examples``; so do we: ``root`` is the folder holding ``cifar-10-batches-py/`` (or ``cifar-100-python/``),
torchvision reads and md5-checks the files (never downloads here), and each image is its uint8 array / 255
as a float CHW tensor, no resize, whatever the model's contract says (RobustBench feeds 32 x 32 to every
CIFAR model). ``sample_id`` = the index in the test set, so ``--subset first-N`` is RobustBench's
``n_examples=N`` and CIFAR-10-C rows (``corruptions.CIFARCNpy``: index within a severity block) pair with it.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

_LAYOUT = {"cifar10": ("CIFAR10", "cifar-10-batches-py/test_batch"),
           "cifar100": ("CIFAR100", "cifar-100-python/test")}


class CIFARTest(Dataset):
    """The test split of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) under ``root``.

    Yields ``(image float CHW in [0, 1], label, sample_id)``. A missing or corrupted file raises
    ``FileNotFoundError`` naming the expected path.
    """

    def __init__(self, root: str, name: str = "cifar10"):
        import torchvision.datasets as tvd

        if name not in _LAYOUT:
            raise ValueError(f"unknown CIFAR set '{name}'; use one of {', '.join(_LAYOUT)}")
        cls_name, rel = _LAYOUT[name]
        self.root = os.fspath(root)
        self.name = name
        try:
            ds = getattr(tvd, cls_name)(root=self.root, train=False, download=False)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"{name} test set not found or corrupted under {os.path.abspath(self.root)}: expected "
                f"{os.path.join(os.path.abspath(self.root), rel)} with torchvision's md5 ({err})") from None
        self.data = ds.data  # (N, 32, 32, 3) uint8
        self.targets = [int(t) for t in ds.targets]
        self.sample_ids = list(range(len(self.targets)))
        self.classes = tuple(ds.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        # = torchvision's ToTensor on the PIL image: HWC uint8 -> CHW, to float, / 255 (bit-identical)
        x = torch.from_numpy(self.data[i]).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x, self.targets[i], i
