"""Training on torchrun: two gloo ranks train what one process trains (same global batches), the result is
evaluated with ``run``, and a failing or hung rank ends the job with an error naming it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustbench_rpc.cli.commands import main
from robustbench_rpc.models import read_checkpoint_metadata

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists() or not torch.distributed.is_available(),
                                reason="torchrun not installed")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--model", "symvit_micro_patch4_32", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
         "--model-arg", "num_heads=2", "--epochs", "1", "--set", "data.limit=256", "--set", "validation.limit=32",
         "--set", "validation.steps=2", "--no-progress"]
FAULTY = '''
import os
import time

from robustbench_rpc.attention import register_attention
from robustbench_rpc.attention.symmetric import SymmetricAttention


@register_attention("test_faulty_rank")
class FaultyOnRank1(SymmetricAttention):
    """Symmetric attention that, on rank 1, fails (or hangs) at its third training forward."""

    def __init__(self, dim, num_heads=8, fault="raise", **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.fault, self.calls = fault, 0

    def mix(self, k, v):
        if self.training and os.environ.get("RANK") == "1":
            self.calls += 1
            if self.calls == 3 and self.fault == "raise":
                raise RuntimeError("CUDA out of memory (simulated on this rank)")
            if self.calls == 3:
                time.sleep(60)
        return super().mix(k, v)
'''


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "robustbench_rpc", *args],
                          env=ENV, capture_output=True, text=True, timeout=300)


def test_two_ranks_train_what_one_process_trains_and_run_evaluates_it(tmp_path):
    proc = _torchrun(*TRAIN, "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1") == 1  # rank 0 speaks for the job
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process, here, with the ranks' one thread each
    try:
        assert main([*TRAIN, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(tmp_path / "one" / "last.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4  # the same global batches, summed in another order
    meta = read_checkpoint_metadata(tmp_path / "ddp" / "last.safetensors")
    assert meta["settings"]["world_size"] == 2
    # validation units are shared out between the ranks and summed: the same numbers as one process
    one = read_checkpoint_metadata(tmp_path / "one" / "last.safetensors")["metrics"][-1]
    assert meta["metrics"][-1]["n_val"] == one["n_val"] == 32
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\ndataset = "digits32"\nlimit = 16\nbatch_size = 16\n'
                     '[[evaluation]]\nkind = "clean"\n')
    spec = f"symvit_micro_patch4_32:{tmp_path / 'ddp' / 'last.safetensors'}"
    assert main(["run", "--suite", str(suite), "--model", spec, "--out", str(tmp_path / "run"), "--no-progress",
                 "--no-report", "--device", "cpu"]) == 0


@pytest.mark.parametrize("fault, expected", [
    ("raise", "rank 1 of 2 failed during training step 3 of epoch 1: RuntimeError: CUDA out of memory (simulated"),
    ("hang", "rank 1 of 2 did not answer within 3s during training step 3 of epoch 1"),
])
def test_a_failing_or_hung_rank_ends_the_job_naming_it(tmp_path, fault, expected):
    plugin = tmp_path / "faulty_rank.py"
    plugin.write_text(FAULTY)
    proc = _torchrun("--plugin", str(plugin), *TRAIN, "--attention", "test_faulty_rank", "--attention-arg",
                     f'fault="{fault}"', "--rank-timeout", "3", "--out", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "o" / "state.pt").exists()  # no epoch finished; nothing half-written
