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
