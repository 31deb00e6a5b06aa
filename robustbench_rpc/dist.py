"""Distributed evaluation on torchrun: process group set-up, and collectives that never hang on a failure.

Ranks exchange a status with every round, so a Python error on one rank ends the job on all ranks with an
error naming that rank; collectives carry a timeout (``--rank-timeout``, default ``DEFAULT_TIMEOUT_S``), so
a rank that hangs or dies hard (killed, segfault) ends the others within it, with an error naming the rank
that did not answer: before each collective every rank records, in the process group's key-value store,
how far it got, and a timed-out collective reads who is behind. Errors are one line; the failing rank's
traceback is kept on the exception (``remote_traceback``). Gloo on CPU, NCCL on GPU (NCCL's watchdog may
abort the process on a timeout before Python sees it; the naming is tested on gloo).
"""
from __future__ import annotations

import datetime as dt
import os
import traceback
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
#: seconds a collective waits for the other ranks (``--rank-timeout``); it must exceed the longest unit
DEFAULT_TIMEOUT_S = 600.0
_state: dict[str, Any] = {"seq": 0, "timeout": DEFAULT_TIMEOUT_S}


class RankFailure(RuntimeError):
    """Another rank (named in the message) failed or did not answer; raised on every rank that can."""


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Join the torchrun process group if launched by torchrun; returns (rank, world_size).
    ``timeout_s``: how long any collective waits for a rank before the job ends naming it."""
    if not timeout_s > 0:
        raise ValueError(f"--rank-timeout must be > 0 seconds, got {timeout_s!r}")
    if env_world_size() <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s))
    _state.update(seq=0, timeout=float(timeout_s))
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def _kv_store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - naming is best effort; the timeout itself still ends the job
        return None


def _collective(op: Callable[[], T], what: str) -> T:
    """Run a collective; on a timeout (or a vanished peer) raise ``RankFailure`` naming the ranks that had
    not reached it."""
    _state["seq"] += 1
    seq, me, store = _state["seq"], dist.get_rank(), _kv_store()
    if store is not None:
        try:
            store.set(f"rbr/arrived/{me}", str(seq))
        except Exception:  # noqa: BLE001
            store = None
    try:
        return op()
    except Exception as e:  # noqa: BLE001 - a timeout or a broken connection: find out who is missing
        behind = []
        for r in range(dist.get_world_size()) if store is not None else ():
            try:
                key = f"rbr/arrived/{r}"
                if not store.check([key]) or int(store.get(key)) < seq:
                    behind.append(r)
            except Exception:  # noqa: BLE001 - the store itself is gone (the rank hosting it died)
                behind = []
                break
        who = ", ".join(f"rank {r}" for r in behind if r != me) or "another rank"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RankFailure(f"{who} of {dist.get_world_size()} did not answer within {_state['timeout']:g}s during "
                          f"{what} (hung or died; --rank-timeout sets the limit): {type(e).__name__}: {first}"
                          ) from None


def broadcast(obj: T, what: str = "a broadcast from rank 0") -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    _collective(lambda: dist.broadcast_object_list(box, src=0), what)
    return box[0]


def run_everywhere(fn: Callable[[], T], what: str, gather: bool = False) -> Any:
    """Run ``fn`` on every rank; any rank's exception ends all ranks with an error naming that rank.

    Returns this rank's result, or with ``gather=True`` the list of every rank's result (all-gathered, so
    results must pickle). On failure the other ranks' gathered results are on the exception's ``results``
    attribute, so finished work can still be written.
    """
    if not active():  # one process: the original exception, unwrapped
        result = fn()
        return [result] if gather else result
    result = None
    try:
        result = fn()
        payload: tuple[str, Any] = ("ok", result if gather else None)
    except Exception as e:  # noqa: BLE001 - reported to every rank below
        payload = ("error", (f"{type(e).__name__}: {' '.join(str(e).split())}", traceback.format_exc(limit=4)))
    gathered: list[Any] = [None] * dist.get_world_size()
    _collective(lambda: dist.all_gather_object(gathered, payload), what)
    errors = [(r, p[1]) for r, p in enumerate(gathered) if p[0] == "error"]
    if errors:
        r, (msg, tb) = errors[0]
        err = RankFailure(f"rank {r} of {len(gathered)} failed during {what}: {msg}")
        err.results = [p[1] if p[0] == "ok" else None for p in gathered]  # type: ignore[attr-defined]
        err.remote_traceback = tb  # type: ignore[attr-defined]
        raise err
    return [p[1] for p in gathered] if gather else result


def collective(op: Callable[[], T], what: str) -> T:
    """Run ``op``, which runs collectives of its own (e.g. a DistributedDataParallel backward), so that a
    timeout or a vanished peer raises ``RankFailure`` naming the ranks that had not reached it."""
    return _collective(op, what) if active() else op()


def all_ok(error: BaseException | None, what: str, device: str | torch.device = "cpu") -> None:
    """One cheap round (an integer all-reduce): every rank says whether its step went well. If any rank
    passes an ``error``, every rank raises ``RankFailure`` naming it (training steps, where the other ranks
    would otherwise wait in the gradient all-reduce for a rank that will never arrive). One process: the
    error itself is raised."""
    if not active():
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else 1], device=device)
    _collective(lambda: dist.all_reduce(flag), what)
    if int(flag.item()):
        def report() -> None:
            if error is not None:
                raise error

        run_everywhere(report, what)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
