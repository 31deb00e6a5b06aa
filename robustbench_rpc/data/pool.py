"""One set of data workers for a whole run: ``RunLoader`` feeds every evaluation through the same
DataLoader worker processes.

Why: the harness used a fresh ``DataLoader`` per evaluation, so each of a sweep's 75 corruption x
severity evaluations forked its workers anew and each worker inherited the parent's intra-op thread
count. On a 2-core machine that made two workers *slower* than one process (benchmarks/RESULTS.md: 0.35x
of a plain ``imagecorruptions`` loop): the fork and import cost landed on every evaluation, and 2 workers
x 2 torch/BLAS threads fought over 2 cores. Here the workers start once (``persistent_workers``), die with
their parent (:func:`die_with_parent`), each runs single-threaded (``torch.set_num_threads(1)`` and a
threadpoolctl limit for numpy's BLAS), keeps
large buffers on its heap instead of a fresh zero-filled mmap per array (:func:`keep_large_buffers_on_heap`;
this, not threads, was what made a worker ~2x slower per image than the parent on defocus_blur), and an
evaluation only hands them its batches. Items are addressed as ``(dataset key, position)``; every
dataset the run will read is registered before the workers start, so the forked workers hold them all.

Images are identical for any number of workers: every on-the-fly corruption is seeded per sample
(``corruptions.core.derive_seed``), never per worker.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Hashable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset


class _Router(Dataset):
    """``router[(key, i)] == datasets[key][i]``."""

    def __init__(self, datasets: Mapping[Hashable, Dataset]):
        self.datasets = dict(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, item: tuple[Hashable, int]):
        key, i = item
        return self.datasets[key][i]


class _Feed:
    """A batch sampler whose batches are set per evaluation (the DataLoader re-iterates it each time)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Hashable, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[Hashable, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_UP_TO = 32 * 2**20  # glibc's documented maximum for M_MMAP_THRESHOLD on 64-bit systems


def keep_large_buffers_on_heap() -> bool:
    """Serve allocations up to 32 MiB from the heap and keep up to 64 MiB of free heap (glibc only; False
    elsewhere or when glibc refuses).

    Why: glibc hands each allocation above its mmap threshold (128 KiB at start) a fresh mmap, whose pages
    the kernel zero-fills on first touch, and unmaps it on free. A corruption at 224 px allocates a dozen
    0.6-1.2 MB float arrays per image, so a fresh worker spent most of defocus_blur in page faults. The
    parent process rarely pays this: glibc raises the threshold after the first large free, and torch frees
    large blocks early. Measured on 2 EPYC cores (32 images, 224 px): defocus_blur 4.5 -> 2.1 ms/image,
    brightness 23 -> 18.5 ms/image in a fresh process. Cost: a worker may hold up to 64 MiB of freed heap.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator alone
        return False
    on_heap = bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_UP_TO))
    kept = bool(mallopt(_M_TRIM_THRESHOLD, 2 * _HEAP_UP_TO))
    return on_heap and kept


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> bool:
    """Linux: have the kernel SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so data
    workers never outlive a killed run (they lingered ~5 s, or as long as their batch took, and held its
    files). Then the documented race: a parent that died before the call has already handed this process
    to init or a subreaper, so ``getppid()`` no longer names it, and the process exits at once. "Parent" is
    the thread that forked the worker: the one that first iterates the RunLoader (the main thread in run
    and train). False where prctl is not available (the worker's watchdog still ends it)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return armed


def _single_threaded_worker(parent_pid: int, _: int) -> None:
    die_with_parent(parent_pid)
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # numpy's BLAS
    except ImportError:  # pragma: no cover - scikit-learn brings it
        pass
    keep_large_buffers_on_heap()
    # The worker's numpy state is its own: no save/restore around each image. Only where the parent loaded
    # the corruptions (any run that corrupts on the fly has), so a worker never imports them itself.
    corruptions = sys.modules.get(__name__.rsplit(".", 2)[0] + ".corruptions.core")
    if corruptions is not None:
        corruptions.own_numpy_global_state()
    # OpenCV's thread pool is left alone: cv2.setNumThreads() in a forked child can wait forever on the
    # parent's pool threads (seen in the test suite), and its effect here was within the noise.


class BatchCache:
    """Collated batches kept in memory, up to ``max_bytes`` of tensor data, first come first kept.

    Why: a run evaluates every model on the same images, and ``make demo``'s six models each re-corrupted
    the same 256 images 45 times (a third of a micro model's evaluation time, on-the-fly corruption being
    numpy/OpenCV work per image). The images are identical for every model (seeded per sample), so the
    first model's batches serve the others. Nothing is evicted: once full, later batches are read as
    before (a model-major run re-reads the same tail for every model, so keeping the head is as good as any
    policy). ``get`` returns copies, so a consumer that writes into its batch cannot change the next one's.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.used = 0
        self._kept: dict[Hashable, Any] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept

    def get(self, key: Hashable) -> Any:
        return _cloned(self._kept[key])

    def offer(self, key: Hashable, batch: Any) -> bool:
        size = _tensor_bytes(batch)
        if size is None or self.used + size > self.max_bytes:
            return False
        self._kept[key] = _cloned(batch)
        self.used += size
        return True


def _cloned(batch: Any) -> Any:
    """The batch with every tensor in it copied (lists and tuples rebuilt, other values as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, (list, tuple)):
        return type(batch)(_cloned(b) for b in batch)
    return batch


def _tensor_bytes(batch: Any) -> int | None:
    """Bytes of the batch's tensors; None for a batch holding anything else mutable (not cached)."""
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, (list, tuple)):
        sizes = [_tensor_bytes(b) for b in batch]
        return None if None in sizes else sum(sizes)
    return 0 if isinstance(batch, (int, float, str, bytes, type(None))) else None


class RunLoader:
    """Batches of several datasets through one pool of ``num_workers`` persistent worker processes.

    ``loader.batches(key, [[0, 1, 2], [3, 4]])`` yields the collated batches of ``datasets[key]`` in order;
    with ``num_workers=0`` everything runs in-process.
    """

    def __init__(self, datasets: Mapping[Hashable, Dataset], num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, cache_bytes: int = 0):
        self._router = _Router(datasets)
        self.cache = BatchCache(cache_bytes)
        self._feed = _Feed()
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            init = functools.partial(_single_threaded_worker, os.getpid())
            kwargs.update(persistent_workers=True, worker_init_fn=init)
            if prefetch_factor is not None:
                kwargs["prefetch_factor"] = prefetch_factor
        self.num_workers = num_workers
        self._loader = DataLoader(self._router, batch_sampler=self._feed, num_workers=num_workers,
                                  pin_memory=pin_memory, **kwargs)

    def batches(self, key: Hashable, positions: Sequence[Sequence[int]]) -> Iterator[Any]:
        """The collated batches of ``datasets[key]`` at ``positions``, in order. Batches the run's
        :class:`BatchCache` holds are served from it (as copies); the others are read and offered to it."""
        if key not in self._router.datasets:
            raise KeyError(f"dataset {key!r} was not registered with the run's loader")
        source = id(self._router.datasets[key])  # evaluations that share a dataset object share its batches
        wanted = [(source, tuple(int(i) for i in b)) for b in positions]
        held = [w in self.cache for w in wanted]  # decided once: the workers read exactly the others, in order
        self._feed.batches = [[(key, i) for i in w[1]] for w, h in zip(wanted, held) if not h]
        return self._merge(wanted, held, iter(self._loader) if not all(held) else iter(()))

    def _merge(self, wanted: list, held: list[bool], read: Iterator[Any]) -> Iterator[Any]:
        for w, h in zip(wanted, held):
            if h:
                yield self.cache.get(w)
                continue
            batch = next(read)
            self.cache.offer(w, batch)
            yield batch
