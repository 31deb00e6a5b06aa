"""(g) What the adaptive preset costs: ``robustbench-rpc run --suite adaptive`` on the shipped micro models.

What the adaptive preset costs on the demo models (2-core CPU): this runs the suite
exactly as a user does (the CLI, a fresh output folder, no report), reads each evaluation's seconds and
accuracy from the lines the run prints, and reports them per attack and model, with the run's wall time.
Nothing is compared against another library here: there is no peer with BPDA/transfer/APGD x5/Square-5000
in one resumable run; the figure is the cost a researcher pays for the adaptive evidence.

    python benchmarks/bench_adaptive.py                 # the suite's 64 images per model (~8 min, 2 cores)
    python benchmarks/bench_adaptive.py --quick         # 16 images per model
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

#: "  attack apgd n_iter=100 ... eps=1/255 top-1  73.44%  n=64  (22.2s)" (harness.Runner.run_eval)
_LINE = re.compile(r"^\s{2}(?P<label>\S.*?)\s+top-1\s+(?P<acc>[\d.]+)%\s+n=(?P<n>\d+)\s+\((?P<s>[\d.]+)s\)$")
_MODEL = re.compile(r"^\[(?P<model>[^\]]+)\]")


def short_label(label: str) -> str:
    """'attack bpda approximation=symmetric base=...' -> 'bpda symmetric'; 'attack apgd ... loss=dlr' -> 'apgd-dlr'."""
    words = label.split()
    if words[0] != "attack":
        return words[0]
    name = words[1]
    params = dict(w.split("=", 1) for w in words[2:] if "=" in w)
    if name == "apgd":
        return f"apgd-{params.get('loss', 'ce')} x{params.get('n_restarts', 1)}"
    if name == "bpda":
        return f"bpda {params.get('approximation')}"
    if name == "square":
        return f"square {params.get('n_queries')}"
    if name == "transfer":
        return f"transfer {params.get('surrogate')}"
    return name


def parse_run_log(text: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{model: {evaluation: (seconds, top-1 %, n)}} from a run's printed lines."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    model = None
    for line in text.splitlines():
        m = _MODEL.match(line)
        if m:
            model = m.group("model")
            out[model] = {}
            continue
        m = _LINE.match(line)
        if m and model is not None:
            out[model][short_label(m.group("label"))] = (float(m.group("s")), float(m.group("acc")), int(m.group("n")))
    return out


def main(argv=None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="images per model (default: the suite's 64; --quick: 16)")
    args = p.parse_args(argv)
    device, info = C.setup(args)
    limit = args.limit or (16 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "robustbench_rpc", "run", "--suite", "adaptive", "--out", str(Path(tmp) / "run"),
               "--no-progress", "--no-report", "--device", str(device)]
        if limit:
            cmd += ["--limit", str(limit)]
        t0 = time.perf_counter()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}  # torch's threads
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the adaptive suite failed (exit {proc.returncode}): "
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    runs = parse_run_log(proc.stdout)
    if not runs or not all(runs.values()):
        raise SystemExit("no evaluation lines in the run's output (has harness.Runner.run_eval's line format "
                         "changed?): " + proc.stdout[-2000:])
    evals = list(dict.fromkeys(e for per in runs.values() for e in per))
    rows = [[e] + [f"{runs[m][e][0]:.1f} s ({runs[m][e][1]:.1f} %)" if e in runs[m] else "-" for m in runs]
            for e in evals]
    rows.append(["**all evaluations**"] + [f"**{sum(v[0] for v in runs[m].values()):.0f} s**" for m in runs])
    n = next(iter(next(iter(runs.values())).values()))[2]
    command = "robustbench-rpc run --suite adaptive" + (f" --limit {limit}" if limit else "")
    details = (f"    {command}: {n} digits32 images per model, Linf 1/255; wall time of the whole command "
               f"{wall:.0f} s (model loading, trust checks and exports included)\n\n" + C.md_table(["evaluation: seconds (top-1 robust accuracy)", *runs], rows))
    print(details)
    summary = [C.summary_row("adaptive", f"adaptive suite, seconds per model [{m}, {n} images]",
                             f"{sum(v[0] for v in runs[m].values()):.0f}", "(info)",
                             f"Square-5000 {runs[m].get('square 5000', (0,))[0]:.0f} s of it") for m in runs]
    summary.append(C.summary_row("adaptive", f"adaptive suite wall time, 3 models x {n} images", f"{wall:.0f} s",
                                 "(info)", "the CLI from start to exit, no report"))
    C.finish(args, "adaptive", info, summary, details, {"results": {m: {e: list(v) for e, v in per.items()}
                                                                    for m, per in runs.items()}})
    return runs


if __name__ == "__main__":
    main()
