"""The command line's words: one function per subcommand declares its arguments; ``cli`` holds what
each command does. ``build_parser(commands)`` takes the command functions by name, so this module
imports none of them."""
from __future__ import annotations

import argparse
from typing import Callable, Mapping

EXAMPLES = {
    "run": """examples:
  robustbench-rpc run                                   # the embedded default (quick suite, shipped models)
  robustbench-rpc run --suite quick --limit 64 --out runs/q
  robustbench-rpc run --suite paper --model symvit_tiny_patch16_224:symvit.pth \\
      --model rpc_symvit_tiny_6iter_layer1:rpc.pth --data-root imagenet=/data/val \\
      --data-root imagenet-c=/data/imagenet-c --device cuda --amp bf16
  torchrun --standalone --nproc_per_node 2 -m robustbench_rpc run --suite quick --limit 64 --out runs/q2
A run killed at any moment resumes when rerun with the same --out: finished units are not recomputed.""",
    "report": """examples:
  robustbench-rpc report reports/quick                  # tables (csv/md/tex), plots (png/svg), index.html""",
    "compare": """examples:
  robustbench-rpc compare reports/quick symvit_micro_patch4_32 rpc_symvit_micro_patch4_32""",
    "verify": """examples:
  robustbench-rpc verify reports/quick /mnt/other-machine/reports/quick   # exit 1 if not reproduced""",
    "train": """examples:
  robustbench-rpc train --recipe symvit_micro_patch4_32_pgdat --out runs/train/sym_pgdat   # a shipped recipe
  robustbench-rpc train --model symvit_micro_patch4_32 --objective pgd-at --eps 8/255 --epochs 10 --out runs/t
  robustbench-rpc --plugin my_attn.py train --model symvit_micro_patch4_32 --attention my_attn \\
      --attention-arg tau=2 --objective trades --set objective.beta=6 --out runs/mine
  robustbench-rpc train --model symvit_micro_patch4_32 --dataset folder --data-root my_images --out runs/f
  torchrun --standalone --nproc_per_node 2 -m robustbench_rpc train --recipe my.toml --out runs/ddp
  robustbench-rpc run --model symvit_micro_patch4_32:runs/t/last.safetensors        # evaluate it
The same command into the same --out resumes after the last finished epoch (kill -9 at any moment is safe).""",
    "diagnose": """examples:
  robustbench-rpc diagnose --model rpc_symvit_micro_patch4_32:packaged --limit 64 --out runs/diag
  robustbench-rpc diagnose --model rpc_symvit_micro_patch4_32:packaged --model symvit_micro_patch4_32:packaged \
      --attack pgd --attack-arg eps=4/255 --attack-arg steps=10 --corruption gaussian_noise --severity 3
  robustbench-rpc diagnose --model symvit_micro_patch4_32:packaged --attention rpc --attention-layers all \
      --attention-arg lam=1 --attention-arg n_iter=2             # PAP patched into SymViT weights
Writes diagnostics.csv (one row per model, input, layer, head, iteration), diagnostics_axes.csv, plots/.""",
    "train-head": """examples:
  robustbench-rpc train-head --backbone symvit_micro_patch4_32:packaged --head attention --beta 1e-3 --compare
  robustbench-rpc train-head --backbone symvit_micro_patch4_32:packaged --head mixer --out heads/m.safetensors
  robustbench-rpc train-head --backbone symvit_micro_patch4_32:packaged --head attention --solver adam \\
      --head-arg heads=16 --out heads/a_adam.safetensors
  robustbench-rpc run --suite convex-heads --model symvit_micro_patch4_32+attention:heads/a.safetensors --limit 64
heads: linear, mlp, attention, gated_attention, mixer (robustbench_rpc.heads; --plugin adds @register_head ones)""",
    "heads-report": """examples:
  robustbench-rpc heads-report reports/convex-heads     # per-head table (CIs, ranks, certificates) + plots""",
    "leaderboard": """examples:
  robustbench-rpc leaderboard runs/a runs/b --out board            # board/index.html, leaderboard.md/.csv/.tex
  robustbench-rpc leaderboard runs/c --out board                   # adds runs/c; runs/a, b are not read again
  robustbench-rpc leaderboard runs/rb --out board --published robustbench/model_info/imagenet/Linf \\
      --export-model-info                                          # RobustBench's rows beside yours, and back""",
    "evaluate-external": """examples:
  robustbench-rpc run --suite quick --save-adversarial --out runs/q
  robustbench-rpc export-adversarial runs/q --model symvit_micro_patch4_32 --evaluation 'attack pgd steps=10 \\
      alpha_rel=0.25 random_start=True eps=8/255' --out pgd.pt        # the label the run log prints
  robustbench-rpc evaluate-external --model symvit_micro_patch4_32:packaged --adversarial pgd.pt \\
      --dataset digits32 --limit 256 --norm Linf --eps 8/255 --out runs/ext""",
    "models": """examples:
  robustbench-rpc models
  robustbench-rpc models 'rpc_*'""",
}


def build_parser(commands: Mapping[str, Callable]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustbench-rpc", description="Robustness benchmarks for vision transformers "
                                "(RPC-Attention, SymViT, any timm model): attacks, corruptions, OOD, reports.")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a module that registers attention variants, models or attacks (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES.get(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=commands[name])
        return sp

    _models_args(add)
    _run_args(add)
    _report_args(add)
    _compare_args(add)
    _verify_args(add)
    _train_args(add)
    _diagnose_args(add)
    _train_head_args(add)
    _heads_report_args(add)
    _leaderboard_args(add)
    _adversarial_args(add)
    return p


def _adversarial_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    """evaluate-external and export-adversarial: adversarial sets in and out (docs/adversarial-examples.md)."""
    x = add("evaluate-external", "robust accuracy of a model on a given adversarial set (RobustBench .pt, "
            "our .safetensors, or a folder of <sample_id>.png), every image checked against its clean image first")
    x.add_argument("--model", required=True, metavar="NAME[:CKPT]", help="the model to score")
    x.add_argument("--adversarial", required=True, metavar="FILE|DIR", help="the adversarial set")
    x.add_argument("--dataset", required=True, metavar="NAME", help="the dataset the set was made from")
    x.add_argument("--data-root", action="append", metavar="NAME=PATH", help="on-disk dataset root")
    x.add_argument("--limit", type=int, help="the set covers N images spread evenly over the classes (as run --limit)")
    x.add_argument("--subset", metavar="FILE", help="the set covers the images listed in FILE, in its order")
    x.add_argument("--norm", default="Linf", help="the set's threat model: Linf (default), L2 or L1")
    x.add_argument("--eps", required=True, help="the budget, e.g. 8/255")
    x.add_argument("--out", required=True, help="run folder to store the evaluation in (report, verify, leaderboard)")
    x.add_argument("--batch-size", type=int, default=128, help="images per unit (default 128)")
    x.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    x.add_argument("--seed", type=int, default=0, help="run seed (stochastic models' draws)")
    x.add_argument("--no-report", action="store_true", help="skip writing the report")
    x.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = add("export-adversarial", "write a run's saved adversarial images of one model and evaluation (or the "
            "per-sample worst case over a budget's attacks) as RobustBench .pt, .safetensors or PNGs")
    e.add_argument("run_dir", help="run folder with saved adversarial images")
    e.add_argument("--model", required=True, help="model (display name, name or key)")
    e.add_argument("--evaluation", metavar="LABEL|KEY",
                   help="attack evaluation, as the manifest labels it ('attack pgd eps=8/255 ...') or its key")
    e.add_argument("--worst-case", metavar="EPS",
                   help="instead: per sample, the first saved attack at this budget that fools the model")
    e.add_argument("--norm", default="Linf", help="norm of --worst-case's budget (default Linf)")
    e.add_argument("--out", required=True, metavar="FILE.pt|FILE.safetensors|DIR",
                   help=".pt: RobustBench's layout (one tensor, order of the evaluated ids); .safetensors: with the "
                        "ids; a name without suffix: a folder of 8-bit <sample_id>.png")


def _models_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    m = add("models", "list registered models")
    m.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 'rpc_*'")


def _run_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    r = add("run", "evaluate models over a suite, store results, write the report")
    r.add_argument("--suite", default="quick", help="packaged suite (quick, paper, robustbench) or a .toml file")
    r.add_argument("--model", action="append", metavar="NAME[:CKPT]",
                   help="model to evaluate (repeatable); CKPT: a file, 'packaged' (the shipped checkpoint) or, for "
                        "timm:<name>, 'pretrained' (timm's published weights: timm's download and cache)")
    r.add_argument("--model-arg", action="append", metavar="KEY=JSON",
                   help="model kwarg, e.g. rpc_iters=6 (a paper checkpoint's args set these; a contradicting "
                        "value is an error unless --override-checkpoint-args)")
    r.add_argument("--override-checkpoint-args", action="store_true",
                   help="let --model-arg values and preset defaults win over a paper checkpoint's args "
                        "(robust/num_iter/lambd/layer/nb_classes); the manifest records which won")
    r.add_argument("--attention", metavar="VARIANT",
                   help="swap the models' attention for a registered variant (softmax, symmetric, rpc, scaled, "
                        "or one from --plugin), keeping weights where shapes match")
    r.add_argument("--attention-layers", default="all", metavar="LAYERS",
                   help="blocks to patch: all, first, last or indices like 0,3 (default all)")
    r.add_argument("--attention-arg", action="append", metavar="KEY=JSON", help="variant parameter, e.g. n_iter=6")
    r.add_argument("--attention-reinit", action="store_true",
                   help="let --attention re-initialise weights whose shapes do not fit the variant (e.g. softmax -> "
                        "symmetric qkv); without it that is an error naming them. Shown in the model name, info and "
                        "manifest; the chance_level trust check will usually fail")
    r.add_argument("--trust-global", action="append", metavar="MODULE.NAME",
                   help="a pickle global a checkpoint you trust may construct, e.g. numpy.core.multiarray.scalar "
                        "(repeatable; the refusal names the global)")
    g = r.add_argument_group("evaluation contract (for a model that declares none, or to replace what it declares)")
    g.add_argument("--input-size", metavar="C,H,W", help="model input size, e.g. 3,32,32 (or 32)")
    g.add_argument("--mean", metavar="R,G,B", help="normalization mean the model expects, e.g. 0.5,0.5,0.5")
    g.add_argument("--std", metavar="R,G,B", help="normalization std, e.g. 0.25,0.25,0.25")
    g.add_argument("--interpolation", help="resize interpolation: bilinear (default), bicubic, nearest, ...")
    g.add_argument("--crop-pct", type=float, metavar="F", help="centre crop fraction, 1.0 = no crop (default 1.0)")
    r.add_argument("--reference", metavar="NAME", help="reference model for CE normalization and comparisons")
    r.add_argument("--out", help="output folder (default reports/<suite>); rerun the same folder to resume")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--batch-size", type=int, help="images per unit (default from the suite)")
    r.add_argument("--limit", type=int, help="evaluate N images of each dataset, spread evenly over its classes "
                   "(deterministic: the same ids on any machine, rank count or resume)")
    r.add_argument("--subset", metavar="FILE", help="evaluate exactly the images listed in FILE (one sample id or "
                   "relative path such as n01440764/ILSVRC2012_val_00000293.JPEG per line)")
    r.add_argument("--seed", type=int, help="run seed (default from the suite)")
    r.add_argument("--data-root", action="append", metavar="NAME=PATH",
                   help="on-disk dataset root, e.g. imagenet=/data/val, imagenet-c=/data/imagenet-c, folder=my_images")
    r.add_argument("--dataset", metavar="NAME",
                   help="the run's dataset instead of the suite's, e.g. 'folder' (your images: --data-root "
                        "folder=PATH with PATH/<class>/<images>, classes = sorted folder names)")
    r.add_argument("--skip-unreadable", action="store_true",
                   help="on-disk datasets: leave unreadable image files out and count them (default: error naming the file)")
    r.add_argument("--workers", type=int, help="DataLoader workers (on-the-fly corruptions use them)")
    r.add_argument("--amp", choices=("fp32", "bf16", "fp16"), help="autocast precision for eval and PGD/FGSM")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--eot-samples", type=int, default=8, help="EOT samples for stochastic models")
    r.add_argument("--no-report", action="store_true", help="skip writing the report")
    r.add_argument("--save-adversarial", action="store_true",
                   help="keep every attack evaluation's adversarial images (float32 safetensors per unit under "
                        "OUT/adversarial/, sha256 in the manifest); the disk they take is printed before compute")
    r.add_argument("--strict", action="store_true",
                   help="exit with code 3 when any trust check FAILs (for CI jobs that evaluate checkpoints; "
                        "without it a run exits 0 and reports the failure)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    from ..dist import DEFAULT_TIMEOUT_S  # lazy: dist imports torch, which --help must not wait for

    r.add_argument("--rank-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="torchrun: a rank silent this long ends the job with an error naming it "
                        f"(default {DEFAULT_TIMEOUT_S:g}; must exceed the longest unit)")


def _report_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    rp = add("report", "build tables, plots and index.html from a run's stored results")
    rp.add_argument("run_dir", help="folder holding results.sqlite")
    rp.add_argument("--out", help="where to write the report (default: the run folder)")


def _compare_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    c = add("compare", "two models on the same images: deltas with CIs and McNemar tests")
    c.add_argument("run_dir")
    c.add_argument("model_a")
    c.add_argument("model_b")


def _verify_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    v = add("verify", "check a rerun against a reference run: manifests and per-sample outcomes")
    v.add_argument("run_a", help="reference run folder (or its manifest.json)")
    v.add_argument("run_b", help="the rerun to check (folder or manifest.json)")
    v.add_argument("--tolerance", type=float, default=0.0, metavar="ABS",
                   help="accept float differences (confidence, norms, numbers in checks) up to ABS; default 0: "
                        "exact, as a rerun on the same machine is; integers and statuses always compare exactly")


def _train_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    t = add("train", "train any registered model (standard, PGD-AT or TRADES) from a recipe; "
            "resumable, torchrun")
    t.add_argument("--recipe", metavar="NAME|FILE.toml",
                   help="a shipped recipe (robustbench_rpc/training/recipes/NAME.toml) or a TOML file; flags override it")
    t.add_argument("--model", metavar="NAME", help="model to train: a registered name, timm:<name>, or a --plugin's")
    t.add_argument("--model-arg", action="append", metavar="KEY=JSON", help="model kwarg, e.g. num_classes=4")
    t.add_argument("--attention", metavar="VARIANT", help="patch this attention variant in before training (as in run)")
    t.add_argument("--attention-layers", metavar="LAYERS", help="blocks to patch: all, first, last or indices like 0,3")
    t.add_argument("--attention-arg", action="append", metavar="KEY=JSON", help="variant parameter, e.g. n_iter=2")
    t.add_argument("--attention-reinit", action="store_true", default=None,
                   help="let --attention re-initialise weights whose shapes do not fit the variant")
    t.add_argument("--init", metavar="CKPT", help="fine-tune: start from this checkpoint (a file, a shipped file name, "
                   "or 'packaged'); its sha256 is recorded")
    t.add_argument("--dataset", metavar="NAME", help="digits32 (default), folder, imagenet, cifar10, cifar100")
    t.add_argument("--data-root", action="append", metavar="[NAME=]PATH",
                   help="the dataset's folder (folder: PATH/<class>/<images>; imagenet: PATH/train/<wnid>/*.JPEG; "
                        "cifar: the folder holding cifar-10-batches-py); val=PATH: a validation folder")
    t.add_argument("--skip-unreadable", action="store_true",
                   help="folder/imagenet: leave image files that do not decode out of training and validation "
                        "(listed in the checkpoint's metadata; default: refuse before training, naming them)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-epochs", type=int, help="learning-rate warm-up epochs")
    t.add_argument("--objective", metavar="NAME", help="standard, pgd-at or trades")
    t.add_argument("--eps", metavar="EPS", help="L-inf budget of pgd-at / trades, e.g. 8/255 (the validation PGD's too, "
                   "unless the recipe sets validation.eps)")
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="any recipe key, e.g. objective.steps=10, optim.ema_decay=0.999 (repeatable)")
    t.add_argument("--out", help="output folder (default runs/train/<recipe name>); the same command into the same "
                   "folder resumes")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--amp", default="fp32", help="CUDA mixed precision: fp32 (default), bf16, fp16")
    t.add_argument("--workers", type=int, default=2, help="image decoding workers for on-disk datasets (default 2)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    from ..dist import DEFAULT_TIMEOUT_S as _TIMEOUT  # lazy: dist imports torch, which --help must not wait for

    t.add_argument("--rank-timeout", type=float, default=_TIMEOUT, metavar="SECONDS",
                   help="torchrun: a rank silent this long ends the job with an error naming it")


def _diagnose_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    dg = add("diagnose", "PAP iterates (S, L, mu, threshold) and KPCA checks per layer, head and "
             "iteration, on clean, attacked and corrupted inputs of the same images")
    dg.add_argument("--model", action="append", metavar="NAME[:CKPT]",
                    help="model to diagnose (repeatable); CKPT 'packaged' uses the shipped checkpoint")
    dg.add_argument("--model-arg", action="append", metavar="KEY=JSON", help="model kwarg, e.g. rpc_iters=6")
    dg.add_argument("--attention", metavar="VARIANT", help="patch this attention variant in (as in run)")
    dg.add_argument("--attention-layers", default="all", metavar="LAYERS", help="blocks to patch (default all)")
    dg.add_argument("--attention-arg", action="append", metavar="KEY=JSON", help="variant parameter, e.g. lam=1")
    dg.add_argument("--diagnostic", action="append", metavar="NAME",
                    help="diagnostic to run (repeatable; default all: pap, projection_loss, eq11, and the "
                         "reproduction study's kpca_alignment, kpca_reconstruction_terms, kpca_eigenvalues)")
    dg.add_argument("--dataset", default="digits32", help="dataset name (default digits32)")
    dg.add_argument("--data-root", action="append", metavar="NAME=PATH", help="on-disk dataset root")
    dg.add_argument("--limit", type=int, default=256, help="N images of the dataset, spread evenly over its classes "
                    "as in run --limit (default 256)")
    dg.add_argument("--attack", metavar="NAME", help="also diagnose the same images attacked with this attack")
    dg.add_argument("--attack-arg", action="append", metavar="KEY=JSON",
                    help="attack parameter, e.g. eps=4/255, steps=10, alpha_rel=0.25")
    dg.add_argument("--corruption", metavar="NAME", help="also diagnose the same images corrupted")
    dg.add_argument("--severity", type=int, default=3, help="corruption severity 1..5 (default 3)")
    dg.add_argument("--out", help="output folder (default reports/diagnostics)")
    dg.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    dg.add_argument("--batch-size", type=int, default=128)
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--no-plots", action="store_true", help="CSV only")


def _train_head_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    th = add("train-head", "train a head on a frozen backbone's cached token features "
             "(convex heads: to a certified global optimum)")
    th.add_argument("--backbone", required=True, metavar="NAME[:CKPT]", help="backbone; CKPT 'packaged' = shipped")
    th.add_argument("--head", required=True, help="registered head (linear, mlp, attention, gated_attention, mixer)")
    th.add_argument("--solver", choices=("fista", "adam"),
                    help="fista: the convex program to a duality gap <= --tol (default for convex heads); "
                         "adam: the non-convex objective (default for mlp)")
    th.add_argument("--beta", type=float, default=1e-3, help="regularization (weight decay beta/2 ||W||^2)")
    th.add_argument("--proj-dim", type=int, help="PCA width of the tokens (default: the head's)")
    th.add_argument("--head-arg", action="append", metavar="KEY=JSON", help="head argument, e.g. heads=16, pool=mean")
    th.add_argument("--tol", type=float, default=1e-4, help="duality-gap tolerance (nats per sample)")
    th.add_argument("--max-iter", type=int, default=20000)
    th.add_argument("--steps", type=int, default=1000, help="Adam steps (full batch)")
    th.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    th.add_argument("--seed", type=int, default=0)
    th.add_argument("--compare", action="store_true",
                    help="convex heads: also train the non-convex counterpart by Adam at the same beta and record "
                         "both objectives in the checkpoint")
    th.add_argument("--adam-heads", type=int, help="heads of that counterpart (default max(8, rank))")
    th.add_argument("--cache-dir", help="feature cache (default ~/.cache/robustbench_rpc/features)")
    th.add_argument("--out", help="head checkpoint (default for a packaged backbone: the package's "
                                  "checkpoints/<backbone>+<head>[@adam].safetensors)")


def _heads_report_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    hr = add("heads-report", "per-head table and plots of a run over backbone+head models")
    hr.add_argument("run_dir")
    hr.add_argument("--out", help="folder for the table and plots (default RUN_DIR/heads)")


def _leaderboard_args(add: Callable[..., argparse.ArgumentParser]) -> None:
    lb = add("leaderboard", "one board across many run folders: columns by protocol fingerprint, "
             "ranks with Wilson and bootstrap rank intervals, Holm-corrected McNemar tests, flags")
    lb.add_argument("runs", nargs="*", metavar="RUN", help="run folders (read-only); rerun with one more to add it")
    lb.add_argument("--out", required=True, help="board folder (index.html, leaderboard.md/.csv/.tex, outcomes)")
    lb.add_argument("--published", action="append", metavar="JSON|DIR",
                    help="RobustBench model_info JSON file(s) or folder(s) (model_info/<dataset>/<threat>/ or a "
                         "parent): reference rows marked published; published files alone give one board per "
                         "RobustBench folder, ranked as RobustBench ranks it (best known robust accuracy)")
    lb.add_argument("--rank-by", metavar="COLUMN", help="column label (or its start) to rank by (default: best "
                    "known robust accuracy, else AutoAttack standard, else the first attack, else corruption "
                    "accuracy, else clean)")
    lb.add_argument("--title", help="page title")
    lb.add_argument("--export-model-info", action="store_true",
                    help="also write measured rows as RobustBench model_info JSON under OUT/model_info/ (only "
                         "numbers measured on RobustBench's protocol go under its field names)")
    lb.add_argument("--remove", action="append", metavar="RUN|JSON", default=[],
                    help="take a run folder (e.g. one deleted since) or a published file off the board")
