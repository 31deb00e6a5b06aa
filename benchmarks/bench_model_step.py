"""(h) The cost of one model step, the floor under every attack: per-image forward and forward+backward of the
micro models over batch sizes, and eager vs ``torch.compile`` (inductor).

The goal was PGD/APGD steps 1.5x cheaper than torchattacks' (which runs the same eager kernels as we do)
by larger effective batches or compiled steps. This measures both candidates on the models the demo runs:
per-image microseconds at batch 32..512 (does a bigger batch make an image cheaper?) and, at batch 128, the
eager step against the compiled one (time, the compile itself, and the largest input-gradient difference).
Timings: median of interleaved repeats after a warm-up.

    python benchmarks/bench_model_step.py --quick     # SymViT micro only, compile included
    python benchmarks/bench_model_step.py --no-compile
"""
from __future__ import annotations

import time

import torch

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C


def grad_step(model, x, y) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xx), y)
    (g,) = torch.autograd.grad(loss, xx)
    return g


def forward(model, x) -> None:
    with torch.no_grad():
        model(x)


def main(argv=None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    args = p.parse_args(argv)
    device, info = C.setup(args)
    repeats = args.repeats or 7
    names = ["symvit_micro_patch4_32"] + ([] if args.quick else ["rpc_symvit_micro_patch4_32"])
    rows, summary, res = [], [], {}
    for name in names:
        model, _ = C.micro_model(name, device)
        per = {}
        for bs in (32, 64, 128, 256, 512):
            x, y = C.digits_batch(bs, device)
            t = C.time_interleaved({"forward": lambda: forward(model, x), "fwd+bwd": lambda: grad_step(model, x, y)},
                                   device, repeats=repeats, warmup=args.warmup)
            per[bs] = {k: C.median(v) / bs * 1e6 for k, v in t.items()}
            rows.append([name, bs, f"{per[bs]['forward']:.0f}", f"{per[bs]['fwd+bwd']:.0f}"])
        res[name] = {"per_image_us": per}
        costs = [v["fwd+bwd"] for v in per.values()]
        summary.append(C.summary_row("model_step", f"fwd+bwd us/image, batch 32..512 [{name}]",
                                     f"{min(costs):.0f}-{max(costs):.0f}", "(info)",
                                     f"batch 128: {per[128]['fwd+bwd']:.0f}; a bigger batch gains "
                                     f"{per[32]['fwd+bwd'] / min(costs):.2f}x at most"))
        if args.no_compile:
            continue
        x, y = C.digits_batch(128, device)
        t0 = time.perf_counter()
        compiled = torch.compile(model)
        g_compiled = grad_step(compiled, x, y)
        compile_s = time.perf_counter() - t0
        diff = float((g_compiled - grad_step(model, x, y)).abs().max())
        t = C.time_interleaved({"eager": lambda: grad_step(model, x, y), "compiled": lambda: grad_step(compiled, x, y)},
                               device, repeats=repeats, warmup=args.warmup)
        eager, comp = C.median(t["eager"]), C.median(t["compiled"])
        res[name]["compile"] = {"eager_ms": eager * 1e3, "compiled_ms": comp * 1e3, "compile_s": compile_s,
                                "max_grad_diff": diff}
        summary.append(C.summary_row("model_step", f"torch.compile fwd+bwd speed-up, batch 128 [{name}]",
                                     f"{eager / comp:.2f}", ">= 1.5",
                                     f"{comp * 1e3:.1f} vs {eager * 1e3:.1f} ms eager; compile {compile_s:.0f} s "
                                     f"(less when inductor's on-disk cache is warm); max |grad diff| {diff:.1e}"))
    details = C.md_table(["model", "batch", "forward us/image", "fwd+bwd us/image"], rows)
    print(details)
    C.finish(args, "model_step", info, summary, details, {"results": res})
    return res


if __name__ == "__main__":
    main()
