"""Subsets that represent the dataset: class-stratified ``--limit`` and explicit ``--subset`` lists.

``--limit N`` used to take the first N files in sorted order, which on ImageNet val is the first N/50
classes (``--limit 5000`` = 100 of 1000 classes). :func:`stratified_indices` instead spreads N images
evenly over the classes (each class gets ``N // C`` or one more, the extra ones going to the classes
that come first in label order; within a class the picks are evenly spaced in file order), so the
subset depends only on the dataset's listing and N: the same ids on any machine, number of ranks or
resume. :func:`subset_from_file` reads an explicit list (one sample id or relative path per line, ``#``
comments), or a built-in name (:func:`builtin_subset`: ``robustbench-imagenet-5000[:N]``, RobustBench's
5,000 ImageNet images in its order; ``first-N``), so a published subset is used as is.

Datasets yield ``(image, label, sample_id)``; labels and ids are read from the dataset's own listing
(``targets`` / ``labels`` / ``samples`` / ``sample_ids``) without decoding images where it has one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset, Subset
from .robustbench import IMAGENET_SUBSET, imagenet_test_ids


class SubsetError(ValueError):
    """A subset that cannot be taken; the message names the file or the option."""


def _listing(ds: Dataset) -> tuple[list[int], list[int], list[str] | None]:
    """(labels, sample_ids, relative paths or None) of every item, in dataset order."""
    samples = getattr(ds, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple) and len(samples[0]) == 3:
        root = getattr(ds, "root", None)
        paths = [os.path.relpath(p, root) if root else p for p, _, _ in samples]
        return [int(s[1]) for s in samples], [int(s[2]) for s in samples], paths
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    ids = getattr(ds, "sample_ids", None)
    if labels is not None and ids is not None:
        return [int(v) for v in labels], [int(v) for v in ids], None
    items = [ds[i] for i in range(len(ds))]  # no listing: read the items once (small in-memory sets)
    return [int(it[1]) for it in items], [int(it[2]) for it in items], None


def stratified_indices(labels: Sequence[int], n: int) -> list[int]:
    """``n`` positions spread evenly over the classes of ``labels`` (ascending positions)."""
    if n < 1:
        raise SubsetError(f"a subset needs at least 1 image, got {n}")
    by_class: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(pos)
    if n >= len(labels):
        return list(range(len(labels)))
    classes = sorted(by_class)
    quota = dict.fromkeys(classes, 0)
    left = n
    while left:  # water-filling: equal shares, classes that run out leave their share to the others
        open_classes = [c for c in classes if quota[c] < len(by_class[c])]
        share, extra = divmod(left, len(open_classes))
        for i, c in enumerate(open_classes):
            take = min(share + (1 if i < extra else 0), len(by_class[c]) - quota[c])
            quota[c] += take
            left -= take
    picked = []
    for c in classes:
        pos, k = by_class[c], quota[c]
        picked += [pos[(j * len(pos)) // k] for j in range(k)]  # evenly spaced within the class
    return sorted(picked)


def builtin_subset(name: str) -> list[str] | None:
    """The entries of a built-in subset name, or None when ``name`` is none (then it is a file path):

    - ``robustbench-imagenet-5000``: RobustBench's 5,000 ImageNet val images (its
      ``helper_files/imagenet_test_image_ids.txt``, shipped); ``robustbench-imagenet-5000:N``: its first N
      in RobustBench's order, what its ``load_imagenet(n_examples=N)`` evaluates;
    - ``first-N``: sample ids 0..N-1, the first N images of a set in its own order (RobustBench's CIFAR
      ``n_examples``; ``--limit`` spreads N over the classes instead).
    """
    text = str(name)
    base, sep, count = text.partition(":")
    if base == IMAGENET_SUBSET:
        if sep and not count.isdigit():
            raise SubsetError(f"--subset {text}: expected {IMAGENET_SUBSET}:N with N a number of images")
        try:
            return imagenet_test_ids(int(count) if sep else None)
        except ValueError as err:
            raise SubsetError(f"--subset {text}: {err}") from None
    if text.startswith("first-") and not sep:
        n = text[len("first-"):]
        if not n.isdigit() or int(n) < 1:
            raise SubsetError(f"--subset {text}: expected first-N with N >= 1")
        return [str(i) for i in range(int(n))]
    return None


BUILTIN_SUBSETS = ("robustbench-imagenet-5000", "robustbench-imagenet-5000:N", "first-N")


class SubsetEntries(list):
    """A subset file's entries (a list of str) with the line each came from (``lines``), so an error about
    an entry can name its line."""

    def __init__(self, entries: Sequence[str], lines: Sequence[int]):
        super().__init__(entries)
        self.lines = list(lines)


def _entry_key(entry: str) -> str:
    """One spelling per entry: ``007`` and ``7`` are the same id, ``./a/b.png`` and ``a/b.png`` the same path."""
    return str(int(entry)) if entry.lstrip("-").isdigit() else Path(entry).as_posix()


def read_subset_file(path: str | Path) -> list[str]:
    """The entries of a built-in subset (:func:`builtin_subset`, resolved before any file) or of a subset
    file: one sample id or relative path per line; blank lines and ``#`` comments ignored. An entry listed
    twice is an error naming both lines (the run would evaluate it once while its settings counted it twice)."""
    builtin = builtin_subset(str(path))
    if builtin is not None:
        return builtin
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"--subset {path}: file not found (built-in subsets: {', '.join(BUILTIN_SUBSETS)})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SubsetError(f"--subset {path}: cannot read it as text ({err})") from None
    entries, lines, first_line, repeated = [], [], {}, []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        key = _entry_key(entry)
        if key in first_line:
            repeated.append((entry, first_line[key], number))
            continue
        first_line[key] = number
        entries.append(entry)
        lines.append(number)
    if repeated:
        entry, a, b = repeated[0]
        more = f" ({len(repeated)} repeated entries in all)" if len(repeated) > 1 else ""
        raise SubsetError(f"--subset {path}: '{entry}' is listed twice (lines {a} and {b}){more}; list each "
                          "image once")
    if not entries:
        raise SubsetError(f"--subset {path}: the file lists no sample ids or paths")
    return SubsetEntries(entries, lines)


def subset_from_entries(ds: Dataset, entries: Sequence[str], where: str) -> list[int]:
    """Positions in ``ds`` of the listed sample ids or relative paths (``class/file`` or a path ending
    in it), in dataset order; entries that match nothing raise naming the first few."""
    _, ids, paths = _listing(ds)
    by_id = {sid: pos for pos, sid in enumerate(ids)}
    by_path: dict[str, int] = {}
    if paths is not None:
        for pos, rel in enumerate(paths):
            parts = Path(rel).parts
            by_path[Path(rel).as_posix()] = pos
            by_path.setdefault("/".join(parts[-2:]), pos)
    picked: dict[int, int] = {}  # position -> index of the entry that picked it
    missing = []
    lines = getattr(entries, "lines", None)
    for i, entry in enumerate(entries):
        if entry.lstrip("-").isdigit() and int(entry) in by_id:
            pos = by_id[int(entry)]
        else:
            key = Path(entry).as_posix()
            pos = by_path.get(key, by_path.get("/".join(Path(entry).parts[-2:])))
        if pos is None:
            missing.append(entry)
        elif pos in picked:  # an id and a path (or two paths) naming one image
            j = picked[pos]
            at = f" (lines {lines[j]} and {lines[i]})" if lines else ""
            raise SubsetError(f"{where}: '{entries[j]}' and '{entry}'{at} are the same image (sample id "
                              f"{ids[pos]}); list each image once")
        else:
            picked[pos] = i
    if missing:
        raise SubsetError(f"{where}: {len(missing)} of {len(entries)} entries match no sample of the dataset "
                          f"(by sample id or relative path), e.g. {', '.join(missing[:5])}")
    return sorted(picked)


def subset_fingerprint(entries: Sequence[str]) -> str:
    """sha256 of the subset file's entries (recorded so a run says exactly which list it used)."""
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def positions_of_ids(ds: Dataset, wanted: Sequence[int], what: str) -> list[int]:
    """Positions in ``ds`` of the given sample ids (e.g. ImageNet-C files of the clean subset's images)."""
    _, ids, _ = _listing(ds)
    by_id = {sid: pos for pos, sid in enumerate(ids)}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise SubsetError(f"{what}: {len(missing)} sample ids of the clean subset have no file here, "
                          f"e.g. {missing[:5]}")
    return sorted(by_id[i] for i in wanted)


def labels_of(ds: Dataset) -> list[int]:
    """Labels of every item of ``ds``, in order, from its listing (no image decoding where it has one)."""
    return _listing(ds)[0]


def sample_ids(ds: Dataset) -> list[int]:
    """Sample ids of every item of ``ds`` (a Subset keeps its positions' ids), in order."""
    if isinstance(ds, Subset):
        base_ids = sample_ids(ds.dataset)
        return [base_ids[i] for i in ds.indices]
    return _listing(ds)[1]


def take(ds: Dataset, positions: Sequence[int]) -> Dataset:
    """``ds`` restricted to ``positions`` (the whole dataset when they are all of it, in order)."""
    positions = list(positions)
    return ds if positions == list(range(len(ds))) else Subset(ds, positions)


def listing_fingerprint(ds: Dataset) -> str:
    """sha256 of what a dataset reads: for on-disk sets every file's relative path and size (the files
    left out as unreadable included, so ``--skip-unreadable`` does not change it), else every item's sample
    id and label. Other images under the same dataset name (another root, or files replaced in place by
    ones of another size) give another fingerprint. One stat per file, no decoding."""
    labels, ids, paths = _listing(ds)
    digest = hashlib.sha256()
    if paths is None:
        for sid, label in zip(ids, labels):
            digest.update(f"{sid}\t{label}\n".encode())
        return digest.hexdigest()
    root = getattr(ds, "root", None)
    skipped = [os.path.relpath(p, root) if root else str(p) for p in (getattr(ds, "skipped_paths", None) or [])]
    for rel in sorted(set(paths) | set(skipped)):
        try:
            size = os.path.getsize(os.path.join(root, rel) if root else rel)
        except OSError:
            size = "?"
        digest.update(f"{Path(rel).as_posix()}\t{size}\n".encode())
    return digest.hexdigest()


def match_by_relative_path(ds: Dataset, reference: Dataset) -> list[int] | None:
    """Positions in ``ds`` (an on-disk set with ``samples``) of the images of ``reference`` (the clean
    subset), matched by class folder and file name (ImageNet-C keeps val's ``wnid/name.JPEG``), with
    each matched item given the reference's sample id, so a tree holding only the subset's files (as
    RobustBench's loaders accept) lines up with the clean images. None when either has no paths or some
    image has no file of its name here (the caller then matches by sample id, and says what is missing)."""
    positions_in_ref = None
    if isinstance(reference, Subset):  # the clean subset: its base's listing at the chosen positions
        reference, positions_in_ref = reference.dataset, list(reference.indices)
    _, ref_ids, ref_paths = _listing(reference)
    if ref_paths is not None and positions_in_ref is not None:
        ref_ids, ref_paths = [ref_ids[i] for i in positions_in_ref], [ref_paths[i] for i in positions_in_ref]
    samples = getattr(ds, "samples", None)
    if ref_paths is None or not isinstance(samples, list) or not samples or len(samples[0]) != 3:
        return None
    tail = lambda p: "/".join(Path(p).parts[-2:])  # noqa: E731
    by_tail = {tail(p): pos for pos, (p, _, _) in enumerate(samples)}
    if any(tail(rel) not in by_tail for rel in ref_paths):
        return None  # other file names (e.g. a generated layout's 00000042.png): match by the listing's ids
    positions = [by_tail[tail(rel)] for rel in ref_paths]
    for pos, sid in zip(positions, ref_ids):
        path, label, _ = samples[pos]
        samples[pos] = (path, label, int(sid))
    return sorted(positions)
