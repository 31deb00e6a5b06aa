"""One pool of data workers for a run: identical images for 0, 1 and 2 workers, workers reused
across evaluations."""
from __future__ import annotations

import os

import pytest
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


# ----------------------------------------------------------------------------- workers die with their run

def test_a_forked_child_closes_its_copy_of_the_run_lock_and_releases_nothing(tmp_path):
    import fcntl
    import multiprocessing as mp

    from robustbench_rpc.store.lock import lock_folder

    lock = lock_folder(tmp_path)

    def child(q):
        try:
            fd = os.open(tmp_path / ".lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            q.put("taken")
        except BlockingIOError:
            q.put(("held by the parent", lock._fd))

    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q,))
    p.start()
    p.join(30)
    assert q.get(timeout=5) == ("held by the parent", None)  # the child's copy is closed; the lock stands
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # and still after the child exited
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.release()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_die_with_parent_exits_when_the_parent_is_already_gone():
    import multiprocessing as mp

    from robustbench_rpc.data.pool import die_with_parent

    ctx = mp.get_context("fork")
    ok = ctx.Process(target=lambda: os._exit(0 if die_with_parent(os.getppid()) else 3))
    late = ctx.Process(target=lambda: (die_with_parent(os.getppid() + 999_999), os._exit(0)))
    for p in (ok, late):
        p.start()
        p.join(30)
    assert ok.exitcode == 0  # armed (Linux)
    assert late.exitcode == 1  # "the parent" is not ours any more: exit at once


def test_kill_9_of_a_run_with_workers_then_an_immediate_resume(tmp_path):
    """The real scenario: `run --workers 2` killed with SIGKILL mid-run, the same command at once."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from robustbench_rpc.cli.commands import main
    from robustbench_rpc.store.lock import lock_folder

    suite = tmp_path / "s.toml"
    suite.write_text('name = "k"\n[defaults]\nbatch_size = 8\nlimit = 32\n[[evaluation]]\nkind = "clean"\n'
                     '[[evaluation]]\nkind = "corruption"\ncorruptions = ["gaussian_noise"]\nseverities = [1, 2]\n')
    out = tmp_path / "o"
    args = ["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged", "--out", str(out),
            "--workers", "2", "--no-progress", "--no-report", "--device", "cpu"]
    # a fresh interpreter, as a user's command (a fork of this process would inherit its OpenMP pool and hang)
    p = subprocess.Popen([sys.executable, "-m", "robustbench_rpc", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)

    def units() -> int:
        try:
            with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=1) as con:
                return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        except sqlite3.Error:
            return 0

    t0 = time.time()
    while units() < 2 and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    assert p.poll() is None, p.stderr.read().decode()[-1000:]
    workers = [int(c) for t in os.listdir(f"/proc/{p.pid}/task")
               for c in open(f"/proc/{p.pid}/task/{t}/children").read().split()]
    assert len(workers) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed = time.time()
    lock_folder(out).release()  # what the rerun does first: at once, not after the orphans' ~5 s

    def running(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while any(running(w) for w in workers) and time.time() - killed < 10:
        time.sleep(0.01)
    assert time.time() - killed < 2, "the workers outlived their run"  # measured: ~0.1 s (was ~5 s)
    done = units()
    assert 2 <= done < 12
    assert main(args) == 0  # resumes
    assert units() == 12


class _Counting(torch.utils.data.Dataset):
    """Counts how often each item is read (in-process loader only)."""

    def __init__(self, base):
        self.base, self.reads = base, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        return self.base[i]


def test_batch_cache_serves_identical_copies_within_its_budget():
    base = digits32("test")
    fog = _Counting(CorruptedDataset(base, "fog", 3, seed=1, dtype=torch.uint8))
    batches = [[0, 1, 2, 3], [4, 5, 6], [40, 41]]
    ref = _collect(RunLoader({"fog": fog}, 0), "fog", batches)
    one_batch = 4 * 3 * 32 * 32 + 4 * 8 + 4 * 8  # the first batch: uint8 images, int64 labels and ids
    loader = RunLoader({"fog": fog, "again": fog}, 0, cache_bytes=one_batch + 3 * 3 * 32 * 32 + 3 * 16)
    fog.reads = 0
    first = list(loader.batches("fog", batches))
    assert fog.reads == 9 and loader.cache.used <= loader.cache.max_bytes
    first[0][0].zero_()  # a consumer writing into its batch does not change what the cache serves next
    fog.reads = 0
    x, ids = _collect(loader, "again", batches)  # another evaluation on the same dataset object
    assert torch.equal(x, ref[0]) and torch.equal(ids, ref[1])
    assert fog.reads == 2  # the first two batches came from the cache; the third did not fit
    assert RunLoader({"fog": fog}, 0).cache.max_bytes == 0  # off unless the run asks for it


def test_batch_cache_keeps_batches_in_order_when_one_call_asks_for_a_batch_twice():
    """Which batches the workers read is decided once per call: a batch first stored during the call must not
    shift the ones read after it."""
    base = digits32("test")
    sets = {"clean": base}
    batches = [[0, 1], [0, 1], [2, 3]]
    ref = [x for x, _, _ in RunLoader(sets, 0).batches("clean", batches)]
    got = [x for x, _, _ in RunLoader(sets, 0, cache_bytes=1 << 20).batches("clean", batches)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref)) and len(got) == 3
