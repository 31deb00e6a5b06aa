"""On-the-fly corrupted datasets and the one-time writer of a generated set in the ImageNet-C layout.

Each image is corrupted with a seed derived from ``(seed, corruption, severity, sample_id)``
(:func:`.core.derive_seed`), so the result depends only on the sample, never on the DataLoader worker
that computes it, the order or a resume.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .core import CORRUPTIONS, _check_severity, corrupt, derive_seed, resolve_severity_table


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """Float CHW in [0, 1] -> uint8 HWC (rounded), the 8-bit image ImageNet-C corrupts."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise TypeError(f"expected a float (C, H, W) tensor, got {type(image).__name__} "
                        f"{tuple(getattr(image, 'shape', ()))}")
    # numpy's rint (round half to even, like torch.round) is ~50x faster than torch.round on small CPU tensors
    arr = image.detach().cpu().numpy().transpose(1, 2, 0)
    arr = np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


class CorruptedDataset(Dataset):
    """Wraps a dataset of ``(image float CHW [0, 1], label, sample_id)`` and corrupts each image.

    The image is quantized to uint8 first (as ImageNet-C corrupts 8-bit images), corrupted with the
    per-sample seed and returned as float CHW in [0, 1] (a multiple of 1/255), or as the uint8 CHW tensor
    with ``dtype=torch.uint8`` (``x.float() / 255`` on the consumer side gives the same floats).  ``severity_table``:
    ``"auto"`` (by image size), ``"imagenet-c"`` or ``"cifar10-c"``; :attr:`severity_table` gives the
    table actually used (resolved from the first image) and :attr:`info` the parameters to record.
    """

    def __init__(self, base: Dataset, corruption: str, severity: int, seed: int = 0,
                 severity_table: str = "auto", dtype: torch.dtype = torch.float32):
        CORRUPTIONS.get(corruption)  # unknown names fail now, with suggestions
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"CorruptedDataset dtype must be torch.float32 or torch.uint8, got {dtype}")
        self.dtype = dtype  # uint8: 4x less data between DataLoader workers; divide by 255 on the consumer side
        self.base = base
        self.corruption = corruption
        self.severity = _check_severity(severity)
        self.seed = int(seed)
        self.requested_table = severity_table
        if str(severity_table).lower() != "auto":
            resolve_severity_table(1, 1, severity_table)  # validate the name
        self._table: str | None = None

    def __len__(self) -> int:
        return len(self.base)

    def _resolve(self, h: int, w: int) -> str:
        table = resolve_severity_table(h, w, self.requested_table)
        if self._table is None:
            self._table = table
        elif table != self._table:
            raise ValueError(f"severity_table='auto' resolves to '{table}' for a {h}x{w} image but to "
                             f"'{self._table}' for earlier images; pass an explicit severity_table")
        return table

    @property
    def severity_table(self) -> str:
        """The severity table in use (``"imagenet-c"`` or ``"cifar10-c"``)."""
        if self._table is None:
            if len(self.base) == 0:
                return resolve_severity_table(224, 224, self.requested_table)
            img = self.base[0][0]
            self._resolve(int(img.shape[-2]), int(img.shape[-1]))
        return self._table

    @property
    def info(self) -> dict:
        """Evaluation params to record with results (ARCHITECTURE.md: corruption params)."""
        return {"corruption": self.corruption, "severity": self.severity, "source": "on-the-fly",
                "severity_table": self.severity_table, "seed": self.seed}

    def _uint8(self, i: int):
        """The base's 8-bit image: straight from the decoder where the base offers it (``uint8_item``,
        through ``Subset`` wrappers), else its float image quantized (rounded); the same pixels."""
        ds, j = self.base, i
        while isinstance(ds, Subset):
            ds, j = ds.dataset, ds.indices[j]
        direct = getattr(ds, "uint8_item", None)
        item = direct(j) if direct is not None else None
        if item is not None:
            return item
        image, label, sample_id = self.base[i]
        return to_uint8_hwc(image), label, sample_id

    def __getitem__(self, i: int):
        x, label, sample_id = self._uint8(i)
        table = self._resolve(x.shape[0], x.shape[1])
        seed = derive_seed(self.seed, self.corruption, self.severity, int(sample_id))
        out = corrupt(x, self.corruption, self.severity, seed=seed, severity_table=table)
        chw = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))  # contiguous first: faster casts
        return (chw if self.dtype == torch.uint8 else chw.float().div_(255.0)), label, sample_id


_MARKER = ".complete.json"


def write_imagenet_c_layout(base: Dataset, out_root: str, corruptions: Sequence[str],
                            severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0,
                            class_names: Sequence[str] | None = None,
                            severity_table: str = "auto") -> dict:
    """Write corrupted copies of ``base`` once, as ``<out_root>/<corruption>/<severity>/<class>/<id>.png``.

    PNG (lossless) files are named by zero-padded ``sample_id``, so :class:`.folders.ImageNetCFolder`
    reads back the same ids.  ``class_names[label]`` names the class folder (wnids for ImageNet;
    default: the label number).  A folder finished earlier holds a ``.complete.json`` marker and is
    skipped when it was made with the same seed, table and sample count (a different one raises, so
    two settings never mix); an unfinished folder is (re)written.  Returns ``{"written": [...],
    "skipped": [...], "severity_table": table}`` with ``(corruption, severity)`` pairs.
    """
    for c in corruptions:
        CORRUPTIONS.get(c)
    severities = [_check_severity(s) for s in severities]
    n = len(base)
    written, skipped = [], []
    table_used = None
    for corruption in corruptions:
        for severity in severities:
            folder = os.path.join(os.fspath(out_root), corruption, str(severity))
            marker = os.path.join(folder, _MARKER)
            if os.path.isfile(marker):
                with open(marker) as f:
                    meta = json.load(f)
                want = {"seed": int(seed), "n_images": n, "requested_table": severity_table}
                got = {k: meta.get(k) for k in want}
                if got != want:
                    raise ValueError(f"{folder} was generated with {got}, not {want}; delete it or "
                                     f"write elsewhere")
                table_used = table_used or meta.get("severity_table")
                skipped.append((corruption, severity))
                continue
            ds = CorruptedDataset(base, corruption, severity, seed=seed, severity_table=severity_table)
            for i in range(n):
                img, label, sample_id = ds[i]
                cls = str(class_names[int(label)]) if class_names is not None else str(int(label))
                cdir = os.path.join(folder, cls)
                os.makedirs(cdir, exist_ok=True)
                arr = to_uint8_hwc(img)
                path = os.path.join(cdir, f"{int(sample_id):08d}.png")
                tmp = path + ".tmp"
                Image.fromarray(arr).save(tmp, format="PNG")
                os.replace(tmp, path)
            table = ds.severity_table if n else resolve_severity_table(224, 224, severity_table)
            table_used = table_used or table
            os.makedirs(folder, exist_ok=True)
            with open(marker, "w") as f:
                json.dump({"corruption": corruption, "severity": severity, "seed": int(seed),
                           "n_images": n, "requested_table": severity_table,
                           "severity_table": table, "format": "png"}, f, indent=1)
            written.append((corruption, severity))
    return {"written": written, "skipped": skipped, "severity_table": table_used}
