"""What the transfer matrix costs: ``robustbench-rpc run --suite transfer-matrix`` on the shipped micro models.

The suite as a user runs it (the CLI, a fresh output folder, the report included): PGD 8/255 white-box on each
of the six shipped micro models with its images saved, then every model scored on every model's images, float32
and rounded to 8 bits. Reports the wall time of the command, the seconds of the white-box attacks against those
of the 72 transfer evaluations (which attack nothing: two classification passes each), and how far the 8-bit
rounding moves the off-diagonal cells.

    python benchmarks/bench_transfer_matrix.py            # the suite's 256 images per model (a few minutes, 2 cores)
    python benchmarks/bench_transfer_matrix.py --quick    # 64 images per model
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

#: "  transfer from symvit_micro_patch4_32: pgd eps=8/255 (8-bit) top-1  94.53%  n=256  (1.1s)"
_LINE = re.compile(r"^\s{2}(?P<label>\S.*?)\s+top-1\s+(?P<acc>[\d.]+)%\s+n=(?P<n>\d+)\s+\((?P<s>[\d.]+)s\)$")
_MODEL = re.compile(r"^\[(?P<model>[^\]]+)\]")


def parse(text: str) -> list[tuple[str, str, float, float]]:
    """(target model, evaluation label, seconds, top-1 %) per printed evaluation line, in order."""
    rows, model = [], None
    for line in text.splitlines():
        m = _MODEL.match(line)
        if m:
            model = m.group("model")
            continue
        m = _LINE.match(line)
        if m and model is not None:
            rows.append((model, m.group("label"), float(m.group("s")), float(m.group("acc"))))
    return rows


def main(argv=None) -> list:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="images per model (default: the suite's 256; --quick: 64)")
    args = p.parse_args(argv)
    device, info = C.setup(args)
    limit = args.limit or (64 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "robustbench_rpc", "run", "--suite", "transfer-matrix", "--out",
               str(Path(tmp) / "run"), "--no-progress", "--device", str(device)]
        if limit:
            cmd += ["--limit", str(limit)]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the transfer-matrix suite failed (exit {proc.returncode}): "
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = parse(proc.stdout)
    attack = [r for r in rows if r[1].startswith("attack ")]
    transfer = [r for r in rows if r[1].startswith("transfer from ")]
    if not attack or not transfer:
        raise SystemExit("no evaluation lines in the run's output (has the harness's line format changed?): "
                         + proc.stdout[-2000:])
    cells = {(r[0], r[1].removesuffix(" (8-bit)")): {} for r in transfer}
    for r in transfer:
        cells[(r[0], r[1].removesuffix(" (8-bit)"))]["8bit" if r[1].endswith("(8-bit)") else "float"] = r[3]
    moved = {white: [abs(v["8bit"] - v["float"]) for (target, label), v in cells.items()
                     if {"8bit", "float"} <= set(v) and (f"from {target}:" in label) == white]
             for white in (False, True)}
    command = "robustbench-rpc run --suite transfer-matrix" + (f" --limit {limit}" if limit else "")
    details = (f"    {command}: wall time of the whole command {wall:.0f} s (model loading, trust checks, exports "
               f"and the report included)\n\n" + C.md_table(
                   ["part", "evaluations", "seconds (sum of the printed per-evaluation times)"],
                   [["white-box PGD 8/255, images saved", len(attack), f"{sum(r[2] for r in attack):.0f}"],
                    ["transfer (float32 and 8-bit), no attack", len(transfer), f"{sum(r[2] for r in transfer):.0f}"]])
               + "".join(f"\n\n8-bit rounding moves {'a white-box (diagonal)' if white else 'an off-diagonal'} cell by "
                         f"{max(m):.2f} points at most, {sum(m) / len(m):.2f} on average ({len(m)} cells)"
                         for white, m in moved.items() if m) + "\n")
    print(details)
    summary = [C.summary_row("transfer_matrix", "transfer-matrix suite wall time", f"{wall:.0f} s", "a few minutes",
                             f"{len(attack)} white-box attacks, {len(transfer)} transfer evaluations")]
    C.finish(args, "transfer_matrix", info, summary, details, {"wall_s": wall, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
