"""One pool of data workers for a run (issue 11): identical images for 0, 1 and 2 workers, workers reused
across evaluations."""
from __future__ import annotations

import os

import torch

from robustbench_rpc.corruptions import CorruptedDataset
from robustbench_rpc.data.embedded import digits32
from robustbench_rpc.data.pool import RunLoader


def _collect(loader, key, batches):
    xs, ids = [], []
    for x, _, i in loader.batches(key, batches):
        xs.append(x)
        ids.append(i)
    return torch.cat(xs), torch.cat(ids)


def test_corrupted_images_are_identical_for_any_number_of_workers():
    base = digits32("test")
    sets = {("fog", 3): CorruptedDataset(base, "fog", 3, seed=1, dtype=torch.uint8),
            ("gaussian_noise", 5): CorruptedDataset(base, "gaussian_noise", 5, seed=1, dtype=torch.uint8)}
    batches = [[0, 1, 2, 3], [4, 5, 6], [40, 41]]
    ref = {k: _collect(RunLoader(sets, 0), k, batches) for k in sets}
    for workers in (1, 2):
        loader = RunLoader(sets, workers)
        for _ in range(2):  # the same workers serve evaluation after evaluation
            for k in sets:
                x, ids = _collect(loader, k, batches)
                assert torch.equal(x, ref[k][0]) and torch.equal(ids, ref[k][1])
        pids = {w.pid for w in loader._loader._iterator._workers}
        loader.batches(("fog", 3), batches)
        assert {w.pid for w in loader._loader._iterator._workers} == pids  # not re-forked
        assert all(pid != os.getpid() for pid in pids)


def test_imagenet_c_corruptions_seeding_numpy_global_are_identical_in_workers():
    """ImageNet-C corruptions draw from numpy's global state; workers seed it without the save/restore the
    parent does (``own_numpy_global_state``), and must still give the parent's pixels."""
    from robustbench_rpc.data.embedded import TensorSampleDataset

    g = torch.Generator().manual_seed(0)
    base = TensorSampleDataset(torch.rand(6, 3, 64, 64, generator=g), torch.zeros(6, dtype=torch.long),
                               torch.arange(100, 106), "rand64")
    sets = {c: CorruptedDataset(base, c, 3, seed=2, severity_table="imagenet-c", dtype=torch.uint8)
            for c in ("gaussian_noise", "shot_noise", "impulse_noise")}
    batches = [[0, 1, 2], [3, 4, 5]]
    ref = {k: _collect(RunLoader(sets, 0), k, batches)[0] for k in sets}
    loader = RunLoader(sets, 2)
    for k in sets:
        assert torch.equal(_collect(loader, k, batches)[0], ref[k])


class _WorkerEnvironment(torch.utils.data.Dataset):
    """Reports from inside a worker: whether corruptions restore numpy's global state there, and how many
    bytes glibc had in mmapped blocks while an 8 MB array was alive (-1 where mallinfo2 is missing)."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        import ctypes
        import ctypes.util

        import numpy as np

        from robustbench_rpc.corruptions import core

        class MallInfo2(ctypes.Structure):
            _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

        mmapped = -1
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallinfo2.restype = MallInfo2
            before = libc.mallinfo2().hblkhd
            big = np.ones(2**20)  # 8 MB: above glibc's default mmap threshold, below ours
            mmapped = libc.mallinfo2().hblkhd - before
            del big
        except (OSError, AttributeError):
            pass
        return torch.tensor([int(core._restore_numpy_global), mmapped])


def test_workers_own_their_numpy_state_and_keep_large_buffers_on_the_heap():
    import platform

    from robustbench_rpc.corruptions import core

    (env,) = list(RunLoader({"env": _WorkerEnvironment()}, 1).batches("env", [[0, 1]]))
    assert env[:, 0].tolist() == [0, 0]
    assert core._restore_numpy_global  # the parent still saves and restores numpy's global state
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and int(env[0, 1]) >= 0:
        assert int(env[0, 1]) == 0  # the 8 MB array came from the heap, not from a fresh mmap


def test_parent_keeps_its_numpy_global_state():
    import numpy as np

    from robustbench_rpc.corruptions import corrupt

    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    corrupt(np.zeros((64, 64, 3), np.uint8), "gaussian_noise", 2, seed=3, severity_table="imagenet-c")
    assert np.random.rand() == expected


def test_large_buffers_stay_on_the_heap_in_a_fresh_process():
    """glibc only: both mallopt calls succeed (in a fresh process, so this one is untouched)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        import pytest

        pytest.skip("mallopt is glibc's")
    code = "from robustbench_rpc.data.pool import keep_large_buffers_on_heap as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_unknown_key_is_named():
    import pytest

    loader = RunLoader({"a": digits32("test")}, 0)
    with pytest.raises(KeyError, match="'b'"):
        loader.batches("b", [[0]])


def test_decoder_uint8_path_gives_the_same_corrupted_pixels(tmp_path):
    import numpy as np
    from PIL import Image
    from torch.utils.data import Dataset, Subset

    from robustbench_rpc.data.folders import ImageNetVal

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / c).mkdir()
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / c / f"{j}.JPEG")
    val = ImageNetVal(str(tmp_path), classes=["n01", "n02"], resize=36, crop=32)

    class FloatOnly(Dataset):  # hides uint8_item: the float image is quantized instead
        def __len__(self):
            return len(val)

        def __getitem__(self, i):
            return val[i]

    direct = CorruptedDataset(Subset(val, [1, 4, 5]), "jpeg_compression", 4, seed=3, dtype=torch.uint8)
    via_float = CorruptedDataset(Subset(FloatOnly(), [1, 4, 5]), "jpeg_compression", 4, seed=3, dtype=torch.uint8)
    assert val.uint8_item(1) is not None
    for i in range(3):
        assert torch.equal(direct[i][0], via_float[i][0]) and direct[i][2] == via_float[i][2]
