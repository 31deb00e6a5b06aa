"""Decoding image files, and finding the ones that will not decode before a run spends compute on them.

:func:`decode_image` gives an 8-bit RGB PIL image, or for a 16-bit file (grayscale ``I;16`` PNGs, 48/64-bit
colour PNGs) float32 values / 65535: PIL's ``convert("RGB")`` clips the first (a mean of 0.27 read as 0.996)
and keeps only the high byte of the second. A file that does not decode raises :class:`UnreadableImageError`
in one line naming it and the ``--skip-unreadable`` flag, also from a DataLoader worker.

:func:`check_readable` scans the files a run will read before any compute (:func:`unreadable_reason`: header
and end marker; measured on 1,000 500x375 JPEGs, warm cache, 2-core Xeon: 0.07-0.13 s, so ~3-6 s for the
50,000 of ImageNet val; a test-decode of each, what --skip-unreadable does, 2.3-3.6 s per 1,000), so a
damaged file costs a line at the start, not the run.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset, Subset

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently padded


SKIP_HINT = "rerun with --skip-unreadable to leave unreadable files out and count them"


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message (one line) names the path and the CLI flag."""

    def __init__(self, path: str, cause: BaseException | str | None = None):
        if cause is None and path.startswith("Caught ") and "\n" in path:
            # DataLoader re-raises a worker's exception as type(its traceback text): keep the original line
            self.path = ""
            super().__init__(path.rstrip().splitlines()[-1].partition(": ")[2] or path)
            return
        self.path = path
        reason = f": {cause if isinstance(cause, str) else f'{type(cause).__name__}: {cause}'}" if cause else ""
        super().__init__(" ".join(f"unreadable image {path}{reason} ({SKIP_HINT}; finished units are "
                                  "kept)".split()))


class UnreadableFilesError(UnreadableImageError):
    """Files a run would read that do not decode, found before any compute (:func:`check_readable`)."""

    def __init__(self, what: str, bad: list[tuple[str, str]], total: int):
        self.path, self.paths = bad[0][0], [p for p, _ in bad]
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        OSError.__init__(self, " ".join(f"{what}: {len(bad)} of the {total} image files the run reads cannot be "
                                        f"decoded: {shown} ({SKIP_HINT})".split()))


_GRAY16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _high_depth(img: Image.Image) -> bool:
    """16 bits per sample, which ``convert("RGB")`` would clip (``I;16``: mean 0.27 became 0.996) or cut to
    their high byte (48/64-bit RGB(A) PNGs, which PIL opens as 8-bit ``RGB``/``RGBA``)."""
    return img.mode in _GRAY16 or img.mode in ("I", "F") or any(";16" in str(t.args) for t in img.tile or ())


def _sixteen_bit(path: str, img: Image.Image) -> np.ndarray:
    """float32 HxWx3 in [0, 1] = value / 65535 of a 16-bit image (grayscale via PIL, colour via OpenCV,
    since PIL has no 16-bit colour mode); float or out-of-range integer pixels are refused."""
    if img.mode == "F":
        raise ValueError("32-bit float pixels have no known range; convert the file to 8 or 16 bits")
    if img.mode in _GRAY16 or img.mode == "I":
        gray = np.asarray(img).astype(np.float32)
        if gray.size and (gray.min() < 0 or gray.max() > 65535):
            raise ValueError(f"32-bit integer pixels ({gray.min():.0f}..{gray.max():.0f}) outside 16 bits")
        return np.repeat((gray / 65535.0)[..., None], 3, axis=2)
    import cv2

    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"OpenCV cannot decode its {img.mode} 16-bit samples")
    arr = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
    if arr.ndim == 2 or arr.shape[2] <= 2:  # gray (+ alpha): alpha dropped, as convert("RGB") does
        gray = arr if arr.ndim == 2 else arr[..., 0]
        return np.repeat(gray[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., 2::-1])  # BGR(A) -> RGB, alpha dropped


def decode_image(path: str) -> Image.Image | np.ndarray:
    """Open and fully decode an image: an 8-bit RGB PIL image, or for a 16-bit file a float32 HxWx3 array
    in [0, 1] (value / 65535, see :func:`_high_depth`); failures raise :class:`UnreadableImageError`."""
    try:
        with Image.open(path) as img:
            return _sixteen_bit(path, img) if _high_depth(img) else img.convert("RGB")
    except Exception as exc:  # PIL raises several types for bad files
        raise UnreadableImageError(path, exc) from exc


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded."""
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (a 16-bit file rounded from value / 65535, not clipped);
    failures raise :class:`UnreadableImageError`."""
    img = decode_image(path)
    return Image.fromarray(to_uint8(img)) if isinstance(img, np.ndarray) else img


def is_readable(path: str) -> bool:
    """Test-decode a file cheaply (JPEG draft mode decodes the whole stream at reduced scale)."""
    return unreadable_reason(path, thorough=True) is None


# the end marker of a complete file, looked for in its last bytes (a JPEG may carry trailing bytes after it)
_END_MARKERS = {"JPEG": (b"\xff\xd9", 1024), "PNG": (b"IEND", 64)}


def unreadable_reason(path: str, thorough: bool = False) -> str | None:
    """Why ``path`` would not decode, or None.

    Quick (the pre-compute scan): the header must parse and a JPEG or PNG must end with its end marker
    (EOI, IEND), which catches empty, foreign and truncated files from one open and two small reads
    (~0.1 ms per file on a warm cache); a file without the marker (trailing bytes, say) and any other
    format is test-decoded to be sure, so a readable file is never flagged. ``thorough``: every file is
    test-decoded (JPEG draft mode, ~2-4 ms per ImageNet-size file).
    """
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            if img.mode == "F":
                return "32-bit float pixels have no known range"
            marker = _END_MARKERS.get(img.format)
            if not thorough and marker is not None:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - marker[1]))
                if marker[0] in f.read():
                    return None
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return " ".join(f"{type(exc).__name__}: {exc}".split())


class ReadableSubset(Subset):
    """The images a run reads minus those left out as unreadable (--skip-unreadable): ``skipped_paths`` and
    their ``skipped_ids`` (sample ids)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], skipped_paths: list[str], skipped_ids: list[int]):
        super().__init__(dataset, list(indices))
        self.skipped_paths, self.skipped_ids = skipped_paths, skipped_ids


def check_readable(ds: Dataset, *, skip: bool, what: str) -> Dataset:
    """Scan the files of ``ds`` (an image folder or a Subset of one) before any compute is spent.

    Unreadable ones raise :class:`UnreadableFilesError` naming them and the flag, or with ``skip`` (every
    file then test-decoded, as ``skip_unreadable=True`` does) are left out of ``ds``. The selection is made
    before the scan, so leaving files out changes no other image's place: units a run finished before
    its unreadable file stay what they were when a resume adds --skip-unreadable. Other datasets: as is."""
    base, positions = (ds.dataset, list(ds.indices)) if isinstance(ds, Subset) else (ds, None)
    if not callable(getattr(base, "unreadable", None)):  # not an image folder (in-memory sets)
        return ds
    positions = list(range(len(base))) if positions is None else positions
    bad = base.unreadable(positions, thorough=skip)
    if not bad:
        return ds
    if not skip:
        raise UnreadableFilesError(what, [(base.samples[i][0], why) for i, why in bad], len(positions))
    left_out = {i for i, _ in bad}
    return ReadableSubset(base, [i for i in positions if i not in left_out], [base.samples[i][0] for i, _ in bad],
                          [int(base.samples[i][2]) for i, _ in bad])


def skipped_files(ds: Dataset) -> list[tuple[str, int | None]]:
    """``(path, sample id or None)`` of the files left out as unreadable anywhere under ``ds`` (Subsets,
    corruption wrappers, a folder built with ``skip_unreadable=True``)."""
    out: list[tuple[str, int | None]] = []
    while ds is not None:
        paths = list(getattr(ds, "skipped_paths", None) or [])
        ids = list(getattr(ds, "skipped_ids", None) or [None] * len(paths))
        out += list(zip(paths, ids))
        ds = ds.dataset if isinstance(ds, Subset) else getattr(ds, "base", None)
        ds = ds if isinstance(ds, Dataset) else None
    return out
