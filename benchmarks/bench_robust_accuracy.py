"""(e) Robust accuracy without wasted work: the harness's robust-accuracy path vs a plain torchattacks loop.

Ours is what a robust-accuracy evaluation runs (``units.attack_rows``): ``attack_outcomes`` with PGD
``early_stop=True`` (clean-misclassified samples are not attacked; a sample stops at its first
misclassified iterate, which is kept), plus the clean and adversarial classification passes. The
baseline is what a user would write: ``torchattacks.PGD`` on every sample for every step, then the same
two classification passes. Same model, images, eps, alpha, steps, no random start. Reported: images/s
of each (median of interleaved repeats after a warm-up) and both robust accuracies (ours must never be
higher: it keeps misclassified iterates the plain loop may walk back out of).

Models: the packaged micro SymViT / RPC-SymViT on digits32 (their true labels), and a ViT-tiny-sized
model (``symvit_tiny_patch16_224``: 3 heads, head dim 64, 197 tokens, random weights) on random images
labelled with its own clean predictions, so every sample starts correct and only the early stop saves.

Also counted (not timed): images x gradient steps of each pipeline. Their ratio bounds what early exit can
save at equal cost per image and step: a model on which many samples survive every step cannot reach 2x
however the loop is written (the packaged micro SymViT: ~28% survive all 10 steps).

    python benchmarks/bench_robust_accuracy.py --quick
    python benchmarks/bench_robust_accuracy.py --device cuda
"""
from __future__ import annotations

import warnings

import torch

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C


def plain_loop(model, x, y, eps, alpha, steps):
    import torchattacks

    adv = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        return clean & (model(adv).argmax(1) == y)


def ours(model, x, y, eps, alpha, steps):
    from robustbench_rpc.attacks import attack_outcomes, get_attack

    atk = get_attack("pgd", eps=eps, alpha=alpha, steps=steps, random_start=False, early_stop=True, progress=False)
    return attack_outcomes(model, atk, x, y).adv_correct1


def counting_sample_steps(model, fn):
    """``(fn(), images that went through a gradient-enabled forward while it ran)``: attack steps (the
    classification passes run under no_grad), the work early exit can save, counted, not timed."""
    seen = [0]

    def hook(_module, args, _out):
        if torch.is_grad_enabled():
            seen[0] += args[0].shape[0]

    handle = model.register_forward_hook(hook)
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen[0]


def main(argv=None) -> dict:
    from robustbench_rpc.models import load_model

    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    device, info = C.setup(args)
    args.repeats = args.repeats or 3
    eps, steps = 4 / 255, args.steps
    alpha = 2.5 * eps / steps
    cases = []
    n_micro = 256 if args.quick else 512
    for name in ("symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32"):
        model, how = C.micro_model(name, device)
        x, y = C.digits_batch(n_micro, device)
        cases.append((f"{name} ({how})", model, x, y))
    torch.manual_seed(0)
    tiny = load_model("symvit_tiny_patch16_224").to(device).eval()
    n_tiny = 16 if args.quick and device.type == "cpu" else 64
    x = torch.rand(n_tiny, 3, 224, 224, device=device)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    cases.append(("symvit_tiny_patch16_224 (random weights, labels = its clean predictions)", tiny, x, y))

    rows, summary, res = [], [], {}
    for label, model, x, y in cases:
        runs = {"ours (robust-accuracy path, early stop)": lambda m=model, x=x, y=y: ours(m, x, y, eps, alpha, steps),
                "torchattacks PGD loop": lambda m=model, x=x, y=y: plain_loop(m, x, y, eps, alpha, steps)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = {k: counting_sample_steps(model, fn) for k, fn in runs.items()}  # also the warm-up
            acc = {k: float(correct.float().mean()) for k, (correct, _) in first.items()}
            work = {k: steps for k, (_, steps) in first.items()}
            times = C.time_interleaved(runs, device, repeats=args.repeats, warmup=max(args.warmup - 1, 0))
        ips = {k: len(x) / C.median(ts) for k, ts in times.items()}
        keys = list(runs)
        ratio = ips[keys[0]] / ips[keys[1]]
        ceiling = work[keys[1]] / max(work[keys[0]], 1)
        res[label] = {"images_per_s": ips, "robust_acc": acc, "ratio": ratio, "sample_steps": work,
                      "sample_step_ratio": ceiling}
        for k in keys:
            rows.append([label, k, len(x), f"{ips[k]:.1f}", C.spread(times[k]), f"{acc[k]:.4f}", work[k]])
        short = label.split(" ")[0]
        summary.append(C.summary_row("robust_accuracy", f"PGD-{steps} robust-acc images/s ours/torchattacks "
                                     f"[{short}]", f"{ratio:.2f}", ">= 2",
                                     f"{ips[keys[0]]:.1f} vs {ips[keys[1]]:.1f} img/s; robust acc "
                                     f"{acc[keys[0]]:.4f} vs {acc[keys[1]]:.4f} (ours must be <=); gradient "
                                     f"steps x images {work[keys[0]]} vs {work[keys[1]]}: early exit can "
                                     f"save at most {ceiling:.2f}x"))
        print(summary[-1], flush=True)
    details = C.md_table(["model", "pipeline", "images", "images/s", "pass ms median (min-max)", "robust acc",
                          "images x gradient steps"], rows)
    print(details)
    C.finish(args, "robust_accuracy", info, summary, details, {"results": res})
    return {"summary": summary, "details": details}


if __name__ == "__main__":
    main()
