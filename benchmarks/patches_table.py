"""The patch table of docs/patches.md, from a run of the packaged ``patches`` suite.

Usage: ``robustbench-rpc run --suite patches --out reports/patches`` then
``.venv/bin/python benchmarks/patches_table.py reports/patches``. Prints one markdown row per evaluation:
accuracy (top-1, correct clean and under the threat) of SymViT and RPC-SymViT micro with Wilson 95 % intervals,
and the paired difference RPC - SymViT on the same samples (Newcombe's interval, McNemar's p).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from robustbench_rpc.metrics import mcnemar, paired_delta_ci, wilson_interval
from robustbench_rpc.store.results import ResultsStore

MODELS = ("symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32")


def label(row) -> str:
    p = row["params"]
    if row["kind"] == "clean":
        return "clean"
    if row["kind"] == "corruption":
        return f"{p['corruption']}, k = {p['severity']}"
    if row["name"] == "patch_fool":
        return f"patch_fool ({p.get('loss', 'attention')}), k = {p['n_patches']}"
    if row["name"] == "adversarial_patch":
        return f"adversarial_patch {p['size']}x{p['size']} px at {p['positions']}"
    return f"{row['name']} {p}"


def main(out: str) -> None:
    with ResultsStore(Path(out) / "results.sqlite", readonly=True) as store:
        models = dict(zip(store.models()["arch"], store.models()["model_key"]))
        print("| evaluation | SymViT | RPC-SymViT | RPC - SymViT (95 % CI) | McNemar p | n |")
        print("|---|---|---|---|---|---|")
        for _, row in store.evaluations().iterrows():
            correct = {}
            for arch in MODELS:
                rows = store.samples(model_key=models[arch], eval_key=row["eval_key"]).sort_values("sample_id")
                correct[arch] = rows["correct1"].to_numpy().astype(bool)
            a, b = correct[MODELS[1]], correct[MODELS[0]]
            if len(a) != len(b) or not len(a):
                continue
            cells = []
            for c in (b, a):
                lo, hi = wilson_interval(int(c.sum()), len(c))
                cells.append(f"{100 * c.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
            delta, lo, hi = paired_delta_ci(a, b)
            p = mcnemar(a, b)["p_value"]
            print(f"| {label(row)} | {cells[0]} | {cells[1]} | {100 * delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                  f"| {p:.2g} | {len(a)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/patches")
