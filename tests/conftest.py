import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

def digits_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits32 test images (as the dataset yields them, [0,1] floats) and their labels."""
    from robustbench_rpc.data.embedded import digits32

    ds = digits32("test")
    return torch.stack([ds[i][0] for i in range(n)]), torch.tensor([int(ds[i][1]) for i in range(n)])


TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)


@pytest.fixture(scope="module")
def one_thread():
    """Attack tests on a small shared CI box: one intra-op thread beats contended threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Normalize(torch.nn.Module):
    """[0,1] images -> normalized, the first layer of every test model given to an attack."""

    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std
