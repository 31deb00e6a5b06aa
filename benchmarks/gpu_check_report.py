"""The results file of ``benchmarks/gpu_check.sh``: every figure its steps produced, the GPU's name, and the
speed goals checked against them.

Reads ``<out>/status.tsv`` (one line per step: name, state, seconds, note), the benchmarks' JSON files in
``<out>/json`` (``_common.finish``: machine, summary rows, detail tables) and the quick-suite runs'
``results/aggregates.csv`` in ``<out>/runs``. Goals:

* PGD-10 on ViT-tiny at 224 px: the robust-accuracy path >= 2x torchattacks' images/s
  (``bench_robust_accuracy``, row ``[symvit_tiny_patch16_224]``);
* fp16 autocast: every robust accuracy of the quick suite within 1 pp of the fp32 run on the same images;
* torchrun (2 ranks, NCCL): the same numbers as one process (when it ran).

    python benchmarks/gpu_check_report.py --out benchmarks/gpu_check_out --results benchmarks/gpu_check_results.md
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

JSON_STEPS = ("pgd", "robust_accuracy", "rpc_fp32", "rpc_bf16", "rpc_fp16", "autoattack")


def read_status(out: Path) -> list[list[str]]:
    path = out / "status.tsv"
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def read_aggregates(run: Path) -> dict[tuple[str, str], dict[str, str]] | None:
    path = run / "results" / "aggregates.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return {(r["model_key"], r["eval_key"]): r for r in csv.DictReader(f)}


def compare_runs(a, b, kinds=("attack",)) -> tuple[float, int, list[list[str]]]:
    """Max |top1(a) - top1(b)| in pp over the evaluations of ``kinds`` both runs hold; their count; rows."""
    rows, worst, n = [], 0.0, 0
    for key in sorted(set(a) & set(b)):
        if a[key]["kind"] not in kinds:
            continue
        try:
            x, y = float(a[key]["top1"]), float(b[key]["top1"])
        except ValueError:
            continue
        d = 100 * (y - x)
        worst, n = max(worst, abs(d)), n + 1
        rows.append([key[0], a[key]["name"], f"{100 * x:.2f}", f"{100 * y:.2f}", f"{d:+.2f}"])
    return worst, n, rows


def goal_lines(out: Path, benches: dict) -> list[list[str]]:
    goals = []
    ra = benches.get("robust_accuracy")
    row = next((r for r in (ra or {}).get("summary", []) if "[symvit_tiny_patch16_224]" in r["metric"]), None)
    if row:
        ok = float(row["value"]) >= 2.0
        goals.append(["PGD-10 ViT-tiny 224 px, robust-accuracy path / torchattacks images/s", row["value"], ">= 2",
                      "met" if ok else "NOT met", row["note"]])
    else:
        goals.append(["PGD-10 ViT-tiny 224 px / torchattacks", "not measured", ">= 2", "NOT measured",
                      "bench_robust_accuracy did not finish (see its log)"])
    runs = out / "runs"
    fp32, fp16 = read_aggregates(runs / "quick_fp32"), read_aggregates(runs / "quick_fp16")
    if fp32 and fp16:
        worst, n, _ = compare_runs(fp32, fp16)
        goals.append(["quick suite robust accuracy, fp16 autocast vs fp32 (max |diff| over attacks)",
                      f"{worst:.2f} pp over {n} evaluations", "<= 1 pp", "met" if n and worst <= 1.0 else "NOT met",
                      "same images, same seeds"])
    else:
        goals.append(["fp16 vs fp32 robust accuracy", "not measured", "<= 1 pp", "NOT measured",
                      "a quick-suite run did not finish (see its log)"])
    ddp = read_aggregates(runs / "quick_ddp2")
    if ddp and fp32:
        worst, n, _ = compare_runs(fp32, ddp, kinds=("clean", "attack", "corruption", "ood", "shift"))
        goals.append(["torchrun 2 ranks (NCCL) vs one process, every evaluation", f"max |diff| {worst:.2f} pp over {n}",
                      "0", "met" if n and worst == 0 else "NOT met", ""])
    return goals


def build(out: Path, seconds: int | None) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    benches = {}
    for name in JSON_STEPS:
        path = out / "json" / f"{name}.json"
        if path.is_file():
            benches[name] = json.loads(path.read_text())
    machine = next((b["machine"] for b in benches.values()), None)
    lines = ["# GPU check (`benchmarks/gpu_check.sh`)", "",
             f"GPU: **{gpu}** ({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible), "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}."]
    if machine:
        lines.append(C.machine_line(machine))
    if seconds is not None:
        lines.append(f"Wall time of the whole check: {seconds} s.")
    lines += ["", "## Goals", "", C.md_table(["goal", "measured", "target", "verdict", "note"], goal_lines(out, benches)),
              "", "## Steps", "", C.md_table(["step", "state", "seconds", "note"], read_status(out) or [["-", "-", "-", "-"]])]
    for name, b in benches.items():
        lines += ["", f"## {name}", "", C.md_table(["metric", "value", "goal", "note"],
                                                   [[r["metric"], r["value"], r["goal"], r["note"]] for r in b["summary"]]),
                  "", b.get("details", "")]
    fp32, fp16 = read_aggregates(out / "runs" / "quick_fp32"), read_aggregates(out / "runs" / "quick_fp16")
    if fp32 and fp16:
        _, _, rows = compare_runs(fp32, fp16)
        lines += ["", "## quick suite: robust accuracy fp32 vs fp16 autocast", "",
                  C.md_table(["model", "evaluation", "fp32 %", "fp16 %", "diff pp"], rows)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="gpu_check.sh's output folder")
    p.add_argument("--results", required=True, help="the markdown file to write")
    p.add_argument("--seconds", type=int, default=None, help="wall time of the check, for the record")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        print(f"gpu_check_report: no output folder {out}", file=sys.stderr)
        return 2
    text = build(out, args.seconds)
    Path(args.results).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
