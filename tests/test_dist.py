"""Collectives never hang on a failure: a Python error on one rank ends every rank with an error naming it."""
import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from robustbench_rpc import dist as rdist

    rdist.init("cpu", timeout_s=60)
    try:
        ok = rdist.run_everywhere(lambda: rank * 10, "a healthy step", gather=True)
        results[f"gather{rank}"] = ok
        assert rdist.broadcast("from-0" if rank == 0 else "ignored") == "from-0"

        def flaky():
            if rank == 1:
                raise ValueError("disk full on this rank")
            return "fine"

        try:
            rdist.run_everywhere(flaky, "unit 7 of pgd")
            results[f"error{rank}"] = "no error raised"
        except rdist.RankFailure as e:
            results[f"error{rank}"] = str(e)
    finally:
        rdist.shutdown()


def _run_two_ranks(worker) -> dict:
    """Spawn ``worker(rank, 2, port, results)`` on two ranks; returns what they wrote into ``results``."""
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.start_processes(worker, args=(2, _free_port(), results), nprocs=2, start_method="spawn", join=True)
        return dict(results)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_failure_on_one_rank_is_reported_on_every_rank():
    results = _run_two_ranks(_worker)
    assert results["gather0"] == results["gather1"] == [0, 10]
    for rank in (0, 1):
        msg = results[f"error{rank}"]
        assert "rank 1 of 2 failed during unit 7 of pgd" in msg and "disk full" in msg


def _hang_worker(rank: int, world: int, port: int, results):
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from robustbench_rpc import dist as rdist

    rdist.init("cpu", timeout_s=3)
    t0 = time.time()
    try:
        rdist.run_everywhere(lambda: time.sleep(8) if rank == 1 else None, "unit 3 of fgsm")
        results[f"error{rank}"] = "no error raised"
    except rdist.RankFailure as e:
        results[f"error{rank}"] = str(e)
    except Exception as e:  # noqa: BLE001 - the sleeper finds its peer gone; anything but a hang is fine
        results[f"error{rank}"] = f"{type(e).__name__}: {e}"
    results[f"seconds{rank}"] = time.time() - t0
    if rank == 0:
        os._exit(0)  # like torchrun tearing the job down: no waiting for the hung rank in shutdown
    rdist.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_a_hung_rank_ends_the_job_within_the_timeout_naming_it():
    results = _run_two_ranks(_hang_worker)
    msg = results["error0"]
    assert "\n" not in msg
    assert "rank 1 of 2 did not answer within 3s during unit 3 of fgsm" in msg and "--rank-timeout" in msg
    assert results["seconds0"] < 7  # the 3 s limit, not the 8 s sleep


def test_rank_timeout_is_a_run_option(tmp_path, capsys):
    from robustbench_rpc.cli.commands import build_parser, main
    from robustbench_rpc.dist import DEFAULT_TIMEOUT_S

    assert build_parser().parse_args(["run"]).rank_timeout == DEFAULT_TIMEOUT_S
    assert build_parser().parse_args(["run", "--rank-timeout", "30"]).rank_timeout == 30.0
    assert main(["run", "--rank-timeout", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--rank-timeout must be > 0 seconds, got 0" in capsys.readouterr().err
