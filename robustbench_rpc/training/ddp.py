"""torchrun for training: the process group (gloo on CPU, NCCL on CUDA, via ``dist.init``), the
DistributedDataParallel wrapper, mixed precision on CUDA, and steps that end the job naming a failing or
hung rank.

Each step every rank reports whether its forward went well (``dist.all_ok``) before the gradient
all-reduce, so a Python error on one rank ends every rank with ``RankFailure`` naming it instead of leaving
the others in the all-reduce; the backward runs under ``dist.collective``, so a rank that hangs or dies
there is named after ``--rank-timeout`` seconds. One process: none of this runs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from .. import dist
from .recipe import RecipeError

T = TypeVar("T")
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Ranks:
    """This process's place in the job and the collectives training needs."""

    def __init__(self, device: str | None, timeout_s: float = dist.DEFAULT_TIMEOUT_S, amp: str = "fp32"):
        if amp not in AMP_DTYPES:
            raise RecipeError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise RecipeError(f"--device {device!r} is not a device (cpu, cuda, cuda:1)") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise RecipeError(f"--device {device}: CUDA is not available on this machine")
        if amp != "fp32" and kind != "cuda":
            raise RecipeError(f"--amp {amp} is mixed precision on CUDA; on {kind} train in fp32")
        try:
            self.rank, self.world = dist.init(device, timeout_s)
        except ValueError as e:
            raise RecipeError(str(e)) from None
        if kind == "cuda" and self.world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.device = device
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AMP_DTYPES[self.amp]
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel on several ranks (it broadcasts rank 0's weights), else ``model``."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def agree(self, error: BaseException | None, what: str) -> None:
        dist.all_ok(error, what, self.device if self.device.startswith("cuda") else "cpu")

    def guarded(self, op: Callable[[], T], what: str) -> T:
        return dist.collective(op, what)

    def gather(self, fn: Callable[[], Any], what: str) -> list[Any]:
        """Every rank's ``fn()`` (all ranks get the list); an error on any rank ends all, naming it."""
        return dist.run_everywhere(fn, what, gather=True)

    def run(self, fn: Callable[[], T], what: str) -> T:
        return dist.run_everywhere(fn, what)

    def broadcast(self, value: T, what: str) -> T:
        return dist.broadcast(value, what)

    def close(self) -> None:
        dist.shutdown()
