"""(f) Square Attack: where its time goes, and what a faster loop around the same queries could gain.

The goal was 2x pyautoattack's Square queries/s at equal robust accuracy (same loss, schedule, budget and
seeds). A loop that makes exactly the reference's queries (which a bit-identical result requires: every
accepted square depends on the margins of every earlier query) runs the same model forwards on the same
images; it can only save the time the reference spends *outside* them. This benchmark measures that split on
the quick suite's Square (Linf 8/255, 200 queries, p_init 0.8, margin loss, one restart) through our
``get_attack("square")`` (which runs ``pyautoattack.square.SquareAttack``): total time, time inside the
model's forward, images forwarded (queries), and the resulting bound total / forward time on any
same-queries implementation's speed-up. Two repeats, interleaved over the models, median reported.

    python benchmarks/bench_square.py --quick
"""
from __future__ import annotations

import time

import torch

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C


class CountingForward(torch.nn.Module):
    """The model, unchanged, with the time spent in its forward and the images it saw added up."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seconds, self.images, self.calls = 0.0, 0, 0

    def forward(self, x):
        t0 = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - t0
        self.images += x.shape[0]
        self.calls += 1
        return out


def one_run(model, x, y, n_queries: int, eps: float) -> dict:
    from robustbench_rpc.attacks import get_attack

    counted = CountingForward(model).eval()
    atk = get_attack("square", eps=eps, n_queries=n_queries, seed=0, progress=False)
    t0 = time.perf_counter()
    adv = atk(counted, x, y)
    total = time.perf_counter() - t0
    with torch.no_grad():
        robust = float(((model(x).argmax(1) == y) & (model(adv).argmax(1) == y)).float().mean())
    return {"s": total, "forward_s": counted.seconds, "queries": counted.images, "calls": counted.calls,
            "robust_acc": robust}


def main(argv=None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="images (default 128 with --quick, else 256)")
    p.add_argument("--n-queries", type=int, default=200)
    p.add_argument("--eps", type=float, default=8 / 255)
    args = p.parse_args(argv)
    device, info = C.setup(args)
    args.repeats = args.repeats or 2
    n = args.n or (128 if args.quick else 256)
    models = {name: C.micro_model(name, device) for name in ("symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32")}
    x, y = C.digits_batch(n, device)
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.repeats):  # interleaved over the models
        for name, (model, _prov) in models.items():
            runs[name].append(one_run(model, x, y, args.n_queries, args.eps))
    rows, summary, res = [], [], {}
    for name, rs in runs.items():
        total = C.median([r["s"] for r in rs])
        fwd = C.median([r["forward_s"] for r in rs])
        share = fwd / total
        q = rs[0]["queries"]
        assert all(r["queries"] == q and r["robust_acc"] == rs[0]["robust_acc"] for r in rs), "Square is seeded"
        res[name] = {"s": total, "forward_s": fwd, "share": share, "queries": q, "robust_acc": rs[0]["robust_acc"],
                     "provenance": models[name][1]}
        rows.append([name, n, q, rs[0]["calls"], C.spread([r["s"] for r in rs]), f"{q / total:.0f}",
                     f"{100 * share:.1f}%", f"{1 / share:.2f}", f"{rs[0]['robust_acc']:.4f}"])
        summary.append(C.summary_row("square", f"Square-{args.n_queries}: share of time in model forwards [{name}]",
                                     f"{100 * share:.1f}%", "(bound)",
                                     f"{q / total:.0f} queries/s; a loop making the same queries can be at most "
                                     f"{1 / share:.2f}x faster (2x needs cheaper forwards); robust acc "
                                     f"{rs[0]['robust_acc']:.4f}; CPU {info['cpu']}"))
    details = C.md_table(["model", "images", "queries (images forwarded)", "forward calls", "ms median (min-max)",
                          "queries/s", "time in forwards", "bound on a same-queries speed-up", "robust acc"], rows)
    details += (f"\n\npyautoattack SquareAttack via get_attack('square'), Linf eps {args.eps:.5f}, "
                f"{args.n_queries} queries, seed 0; models: " + "; ".join(f"{k}: {v[1]}" for k, v in models.items()))
    print(details)
    C.finish(args, "square", info, summary, details, {"results": res})
    return {"summary": summary, "details": details}


if __name__ == "__main__":
    main()
