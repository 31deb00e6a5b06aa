"""benchmarks/bench_adaptive.py reads the run's printed lines; this pins that reading to the harness's format."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_adaptive  # noqa: E402

RUN_LINES = """\
[rpc_symvit_micro_patch4_32] 0.13M params, attention rpc@[0]; symmetric@[1, 2, 3]
  clean                                                        top-1  93.75%  n=64  (0.0s)
  attack pgd steps=20 alpha_rel=0.15 random_start=True eps=1/255 top-1  75.00%  n=64  (1.0s)
  attack apgd n_iter=100 n_restarts=5 loss=dlr adaptive=True eps=1/255 top-1  75.00%  n=64  (23.0s)
  attack bpda approximation=no-threshold base=apgd-ce base_args={'n_iter': 100} undeclared=exact \
adaptive=True eps=1/255 top-1  85.94%  n=64  (5.0s)
  attack square n_queries=5000 p_init=0.8 resc_schedule=False adaptive=True eps=1/255 top-1  90.62%  n=64  (87.4s)
evaluation finished in 451s; store: runs/adaptive/results.sqlite
"""


def test_parse_run_log_reads_seconds_and_accuracy_per_attack():
    runs = bench_adaptive.parse_run_log(RUN_LINES)
    assert runs == {"rpc_symvit_micro_patch4_32": {
        "clean": (0.0, 93.75, 64), "pgd": (1.0, 75.0, 64), "apgd-dlr x5": (23.0, 75.0, 64),
        "bpda no-threshold": (5.0, 85.94, 64), "square 5000": (87.4, 90.62, 64)}}
