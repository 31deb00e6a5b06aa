"""(e) Training: ``robustbench-rpc train`` vs a plain PyTorch loop doing the same steps, clean and PGD-AT.

Same model (``symvit_micro_patch4_32`` from its seeded random init), same digits32 images, same order and
augmentation, same AdamW / cosine schedule / clipping, and for PGD-AT the same inner maximisation (uniform
random start, signed steps, eval mode); the plain loop is the few lines anyone would write. Both are timed
whole (set-up included) and interleaved, and the weights they end with are compared: identical weights show
the harness did exactly the plain loop's steps. The harness's own work is measured inside one harness run,
against its epochs' step loops: one validation (clean + PGD-10 on the validation images the shipped recipe
names) and the rest (set-up, last/best checkpoints, the resumable state, the CSV, the curves); the shipped
schedule's share is one validation per ``validation.every`` epochs plus the rest. ``--quick`` trains 2 epochs
validating both; the full size trains 10 epochs validating as the shipped recipe does.

    python benchmarks/bench_training.py --quick
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

MODEL = "symvit_micro_patch4_32"
#: the shipped recipe whose validation each objective uses
SHIPPED = {"standard": "symvit_micro_patch4_32", "pgd-at": "symvit_micro_patch4_32_pgdat"}


def validation_of(objective: str) -> dict:
    from robustbench_rpc.training import build_recipe

    v = build_recipe(SHIPPED[objective]).validation
    return {f"validation.{k}": getattr(v, k) for k in ("eps", "steps", "step_size", "limit", "every")}


def recipe(objective: str, n_images: int, epochs: int, every: int | None = None):
    """The benchmark's training; ``every``: validate every N epochs instead of the shipped recipe's N."""
    from robustbench_rpc.training import build_recipe

    over = {"model.name": MODEL, "data.limit": n_images, "optim.epochs": epochs, "optim.warmup_epochs": 1,
            "objective.name": objective, "objective.steps": 3, "objective.step_size": 16 / 765,
            **validation_of(objective), **({"validation.every": every} if every else {})}
    return build_recipe(None, over)


def harness(objective: str, n_images: int, epochs: int, out: Path, every: int | None = None) -> dict:
    from robustbench_rpc.training import Settings, train

    shutil.rmtree(out, ignore_errors=True)
    train(recipe(objective, n_images, epochs, every), out, Settings(progress=False), log=lambda _: None)
    from robustbench_rpc.models import read_checkpoint_metadata

    return {"meta": read_checkpoint_metadata(out / "last.safetensors"), "weights": out / "last.safetensors"}


def plain(objective: str, n_images: int, epochs: int) -> dict[str, torch.Tensor]:
    """The same training as a plain loop: no validation, checkpoints, logging or resumability."""
    from robustbench_rpc.data import digits32
    from robustbench_rpc.data.subsets import stratified_indices
    from robustbench_rpc.models import load_model
    from robustbench_rpc.training.data import shift

    r = recipe(objective, n_images, epochs)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ds = digits32("train")
    keep = torch.as_tensor(stratified_indices(ds.labels.tolist(), n_images))
    x_all, y_all = ds.images[keep], ds.labels[keep]
    model = load_model(MODEL).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=r.optim.lr)
    steps = math.ceil(len(x_all) / 64)
    total, warm = epochs * steps, steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    eps, alpha = r.objective.eps, r.objective.step_size
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            x, y = shift(x_all[idx], 2, gen), y_all[idx]
            if objective == "pgd-at":
                model.eval()
                adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
                for _ in range(r.objective.steps):
                    adv.requires_grad_(True)
                    g, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
                    adv = torch.min(torch.max(adv.detach() + alpha * g.sign(), (x - eps).clamp(min=0)),
                                    (x + eps).clamp(max=1))
                model.train()
                x = adv
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def bench(objective: str, n_images: int, epochs: int, every: int | None, args, device, tmp: Path) -> tuple[list, dict]:
    """Plain vs harness (interleaved); shares of the harness's own work are taken within one harness run
    (its epochs' step loops, its validations, everything else), so a load change between runs cannot
    move them."""
    import time

    from safetensors.torch import load_file

    box: dict = {}

    def run_harness():
        t0 = time.perf_counter()
        box["h"] = harness(objective, n_images, epochs, tmp / objective, every)
        box["h"]["wall_s"] = time.perf_counter() - t0

    runs = {"harness": run_harness, "plain": lambda: box.__setitem__("p", plain(objective, n_images, epochs))}
    times = C.time_interleaved(runs, device, repeats=args.repeats, warmup=args.warmup)
    th, tp = C.median(times["harness"]), C.median(times["plain"])
    ours = load_file(box["h"]["weights"])
    diff = max(float((ours[k] - box["p"][k]).abs().max()) for k in box["p"])
    metrics = box["h"]["meta"]["metrics"]
    steps_s = sum(m["train_s"] for m in metrics)
    validations = [m["val_s"] for m in metrics if m.get("val_s")]
    val_s = sum(validations)
    other_s = box["h"]["wall_s"] - steps_s - val_s  # set-up, checkpoints, state, CSV, curves
    epoch_s, shipped_every = steps_s / epochs, validation_of(objective)["validation.every"]
    res = {"harness_s": th, "plain_s": tp, "ips_harness": n_images * epochs / th, "ips_plain": n_images * epochs / tp,
           "epoch_s": epoch_s, "one_validation_s": val_s / len(validations), "validated_epochs": len(validations),
           "other_per_epoch_s": other_s / epochs, "shipped_every": shipped_every, "max_weight_diff": diff,
           "measured_share": (val_s + other_s) / steps_s}
    res["shipped_share"] = (res["one_validation_s"] / shipped_every + res["other_per_epoch_s"]) / epoch_s
    pct = lambda v: f"{100 * v / epoch_s:.1f}%"  # noqa: E731
    row = [objective, n_images, epochs, f"{res['ips_plain']:.0f}", f"{res['ips_harness']:.0f}",
           C.spread(times["plain"]), C.spread(times["harness"]), f"{len(validations)}/{epochs}",
           f"{100 * res['measured_share']:.1f}%", pct(res["one_validation_s"]), pct(res["other_per_epoch_s"]),
           f"1/{shipped_every}: {100 * res['shipped_share']:.1f}%", f"{diff:.1e}"]
    return row, res


def main(argv=None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1258, help="training images (default all 1258)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per training (default 2 with --quick, validating each; else 10, validating as the "
                        "shipped recipes do)")
    args = p.parse_args(argv)
    device, info = C.setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_training compares CPU runs (bit-identical weights); use --device cpu")
    args.repeats = args.repeats or (2 if args.quick else 3)
    n_images = args.images
    epochs = args.epochs or (2 if args.quick else 10)
    every = 1 if args.quick else None
    print(f"model {MODEL} (seeded random init), digits32-train: {n_images} images, {epochs} epochs, batch 64; "
          f"PGD-AT 3 steps of 2/3 eps (8/255); validation as the shipped recipes: "
          + "; ".join(f"{o} ({SHIPPED[o]}): {validation_of(o)}" for o in SHIPPED))
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in ("standard", "pgd-at"):
            row, res = bench(objective, n_images, epochs, every, args, device, Path(tmp))
            rows.append(row)
            results[objective] = res
    header = ["objective", "images", "epochs", "plain img/s", "harness img/s", "plain ms median (min-max)",
              "harness ms median (min-max)", "validated", "harness extra / its steps", "one validation / epoch",
              "the rest / epoch", "shipped schedule / epoch", "max |w - w_plain|"]
    details = C.md_table(header, rows)
    print(details)
    summary = []
    for objective, r in results.items():
        share = lambda key: f"{100 * r[key] / r['epoch_s']:.1f}%"  # noqa: E731
        summary += [
            C.summary_row("training", f"{objective}: harness / plain images/s",
                          f"{r['ips_harness'] / r['ips_plain']:.2f}", "(info)",
                          f"{r['ips_harness']:.0f} vs {r['ips_plain']:.0f} img/s, identical weights: "
                          f"{r['max_weight_diff'] == 0}"),
            C.summary_row("training", f"{objective}: harness work besides the steps / epoch, shipped schedule",
                          f"{100 * r['shipped_share']:.1f}%", "<= 10%",
                          f"one validation = {share('one_validation_s')} of an epoch, every {r['shipped_every']} "
                          f"epochs; the rest {share('other_per_epoch_s')} ({r['validated_epochs']} of {epochs} "
                          f"epochs validated here: {100 * r['measured_share']:.1f}% measured)"),
        ]
    C.finish(args, "training", info, summary, details, {"results": results})
    return {"summary": summary, "details": details}


if __name__ == "__main__":
    main()
