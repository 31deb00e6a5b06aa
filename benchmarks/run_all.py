"""Run every benchmark (each in its own process), print one summary table of ratios and write
benchmarks/RESULTS.md (machine, date, command, summary, and each benchmark's detail tables).

    python benchmarks/run_all.py                     # --quick sizes (default), about 4-8 min on 2 CPU cores
    python benchmarks/run_all.py --threads 1         # on a shared/loaded CPU box (see README)
    python benchmarks/run_all.py --full --device cuda
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

BENCHES = ["bench_pgd", "bench_robust_accuracy", "bench_rpc_attention", "bench_corruptions", "bench_decode",
           "bench_autoattack", "bench_training", "bench_square", "bench_adaptive", "bench_model_step",
           "bench_transfer_matrix"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the benchmarks' full sizes instead of --quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads passed to every benchmark")
    p.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(BENCHES))
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the markdown report")
    p.add_argument("--timeout", type=int, default=1800, help="per-benchmark timeout in seconds")
    args = p.parse_args(argv)

    import torch

    device = C.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info(device)
    print(C.machine_line(info), flush=True)
    benches = args.only.split(",") if args.only else BENCHES
    common = (["--quick"] if not args.full else []) + ["--device", args.device]
    if args.threads:
        common += ["--threads", str(args.threads)]

    started = dt.datetime.now().astimezone()
    t_all = time.perf_counter()
    summary, sections, failures = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in benches:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), *common, "--json", str(out)]
            print(f"\n=== {name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, text=True, capture_output=True, timeout=args.timeout)
            secs = time.perf_counter() - t0
            log = "\n".join(line for line in proc.stdout.splitlines())
            print(log, flush=True)
            if proc.returncode != 0 or not out.is_file():
                tail = "\n".join(proc.stderr.splitlines()[-15:])
                print(tail, file=sys.stderr)
                failures.append(name)
                sections.append(f"## {name}\n\nFAILED (exit {proc.returncode}):\n\n```\n{tail}\n```\n")
                continue
            data = json.loads(out.read_text())
            summary += data["summary"]
            head = [line for line in proc.stdout.splitlines()[1:4]
                    if not line.startswith("|") and not re.match(r"(N=\d|\d+px )", line)]
            sections.append(f"## {name} ({secs:.0f} s)\n\n" + ("\n".join(f"    {h}" for h in head) + "\n\n" if head else "")
                            + data["details"] + "\n")
            print(f"=== {name} done in {secs:.0f} s", flush=True)
    total = time.perf_counter() - t_all

    table = C.md_table(["benchmark", "ratio / measure", "value", "goal", "details"],
                       [[r["bench"], r["metric"], r["value"], r["goal"], r["note"]] for r in summary])
    print("\n" + table)
    print(f"\ntotal {total:.0f} s" + (f"; FAILED: {', '.join(failures)}" if failures else ""))

    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix())] + (argv or sys.argv[1:]))
    md = [
        "# Benchmark results",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}` (total {total:.0f} s)",
        f"- machine: {C.machine_line(info)}",
        f"- peak memory method: {C.CUDA_MEMORY_METHOD if device.type == 'cuda' else C.CPU_MEMORY_METHOD}",
        "- timings: median of repeats after a warm-up; candidates of one comparison are timed interleaved "
        "(A B A B ...) so a busy phase of the shared machine hits all alike",
        "",
        "## Summary",
        "",
        table,
        "",
        *sections,
    ]
    Path(args.results).write_text("\n".join(md) + "\n")
    print(f"wrote {args.results}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
