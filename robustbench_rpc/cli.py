"""``robustbench-rpc``: models | run | report | compare | verify | train | diagnose | train-head | heads-report |
leaderboard. Each subcommand is a small function."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

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
    "models": """examples:
  robustbench-rpc models
  robustbench-rpc models 'rpc_*'""",
}


def _kv(items: list[str], flag: str) -> dict[str, str]:
    from .plan import parse_pairs

    return parse_pairs(items, flag)


def _model_kwargs(items: list[str], flag: str = "--model-arg") -> dict:
    from .plan import parse_pairs

    return parse_pairs(items, flag, as_json=True)


def load_plugin(spec: str) -> None:
    """Import a user module (dotted name or .py file) so its @register_* decorators run (faults: one line)."""
    from .plugins import load_plugin as load

    load(spec)


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import MODELS, PACKAGED_DIR as PACKAGED, create_model

    rows = []
    for name in MODELS.names(args.pattern):
        entry = MODELS.get(name)
        with torch.device("meta"):  # count parameters without allocating or initializing weights
            m = create_model(name)
        params = f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"
        shipped = "yes" if (PACKAGED / f"{name}.safetensors").is_file() else ""
        rows.append((name, params, entry.attention, shipped, entry.notes))
    headers = ("name", "params", "attention", "packaged ckpt", "notes")
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\n{len(rows)} models; any timm model works too as timm:<name>")
    from .attention import list_attentions

    print(f"attention variants (run --attention NAME): {', '.join(list_attentions())}")
    from .heads import list_heads

    shipped_heads = sorted(p.stem for p in PACKAGED.glob("*+*.safetensors"))
    print(f"heads on a frozen backbone (run --model BACKBONE+HEAD:CKPT, train-head --head NAME): "
          f"{', '.join(list_heads())}; shipped (:packaged): {', '.join(shipped_heads) or 'none'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .harness import run
    from .plan import RunConfig

    cfg = RunConfig.from_args(args)
    out = run(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"results: {Path(out) / 'results.sqlite'}")
    from .reports.build import checks_text

    print(checks_text(out))  # the run's last words: trust checks as stored, report path
    if not args.no_report:
        print(f"report:  {Path(out) / 'index.html'}")
    if args.strict:
        failed = _failed_checks(Path(out))
        if failed:
            print(f"--strict: {len(failed)} trust check(s) failed ({', '.join(failed[:5])}): exit code 3",
                  file=sys.stderr)
            return 3
    return 0


def _failed_checks(out: Path) -> list[str]:
    from .store import ResultsStore

    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        checks = store.checks()
    return [str(c) for c in checks.loc[checks["status"] == "fail", "check"]] if not checks.empty else []


def cmd_report(args: argparse.Namespace) -> int:
    from .reports import build_report

    paths = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    summary = paths.get("summary")
    if summary:
        print(summary)
    print(paths["checks"])
    print(f"report: {paths.get('html')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import difflib

    from .reports import compare_models
    from .store import ResultsStore

    path = Path(args.run_dir) / "results.sqlite"
    with ResultsStore(path, readonly=True) as store:
        models = store.models()
    known = {str(v) for col in ("model_key", "name", "spec", "arch") if col in models for v in models[col] if v}
    names = [str(v) for v in models.get("name", [])]
    for ident in (args.model_a, args.model_b):
        if ident not in known:
            close = difflib.get_close_matches(ident, sorted(known), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            print(f"error: no model {ident!r} in {path}.{hint} Models of this run: {', '.join(names) or 'none'}",
                  file=sys.stderr)
            return 2
    df = compare_models(Path(args.run_dir), args.model_a, args.model_b)
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a rerun against a reference run (robustbench_rpc.verify): manifests, then everything stored."""
    from .verify import verify_runs

    return verify_runs(Path(args.run_a), Path(args.run_b), tolerance=args.tolerance)


#: train flag (argparse dest) -> the recipe key it overrides
TRAIN_FLAGS = {"model": "model.name", "init": "model.init", "attention": "model.attention",
               "attention_layers": "model.attention_layers", "attention_reinit": "model.attention_reinit",
               "dataset": "data.dataset", "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
               "warmup_epochs": "optim.warmup_epochs", "objective": "objective.name", "eps": "objective.eps",
               "seed": "seed"}


def _train_overrides(args: argparse.Namespace) -> tuple[dict, dict, str | None]:
    """(recipe overrides, the flag that gave each, the dataset named by --data-root NAME=PATH)."""
    from .training.recipe import RecipeError, parse_value

    over, flags = {}, {}
    for dest, key in TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None and value is not False:
            over[key], flags[key] = value, "--" + dest.replace("_", "-")
    for flag, dest, key in (("--model-arg", "model_arg", "model.kwargs"),
                            ("--attention-arg", "attention_arg", "model.attention_args")):
        if getattr(args, dest):
            over[key], flags[key] = _model_kwargs(getattr(args, dest)), flag
    named = None
    for item in args.data_root or []:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (None, item)
        key = "data.val_root" if name == "val" else "data.root"
        named = named if name in (None, "val") else name
        over[key], flags[key] = path, "--data-root"
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects SECTION.KEY=VALUE (e.g. optim.lr=1e-3), got {item!r}")
        over[key.strip()], flags[key.strip()] = parse_value(value.strip()), f"--set {key.strip()}"
    return over, flags, named


def cmd_train(args: argparse.Namespace) -> int:
    from .training import RecipeError, Settings, build_recipe, train

    try:
        over, flags, named = _train_overrides(args)
        recipe = build_recipe(args.recipe, over, flags)
        if named is not None and named != recipe.data.dataset:
            raise RecipeError(f"--data-root {named}=...: the recipe trains on '{recipe.data.dataset}' (use "
                              f"--data-root PATH, or --dataset {named})")
        out = Path(args.out) if args.out else Path("runs") / "train" / recipe.name
        plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin]
        res = train(recipe, out, Settings(device=args.device, amp=args.amp, workers=args.workers,
                                          progress=False if args.no_progress else None,
                                          rank_timeout=args.rank_timeout, plugins=plugins))
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        acc = f"clean {100 * res['clean_acc']:.1f}%" if res.get("clean_acc") is not None else ""
        acc += f", pgd {100 * res['pgd_acc']:.1f}%" if res.get("pgd_acc") is not None else ""
        print(f"checkpoint: {res['last_checkpoint']}" + (f" ({acc} on the validation images)" if acc else "") +
              (f"; best: {res['best_checkpoint']} (epoch {res['best_epoch']})" if res.get("best_checkpoint") else ""))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """PAP iterates and KPCA checks of each model, clean and (optionally) attacked / corrupted. Planned
    like a run (one ``diagnostics`` evaluation): the same model, attention, data and --limit rules."""
    from .diagnostics import diagnose_inputs, write_outputs
    from .harness import build_model
    from .plan import Plan, RunConfig
    from .suite import suite_from_dict

    evaluation = {"kind": "diagnostics"}
    if args.diagnostic:
        evaluation["diagnostics"] = args.diagnostic
    if args.attack:
        evaluation.update(attack=args.attack, attack_args=_model_kwargs(args.attack_arg, "--attack-arg"))
    if args.corruption:
        evaluation.update(corruption=args.corruption, severity=args.severity)
    if not args.model:
        from .evalspec import SuiteError

        raise SuiteError("diagnose needs --model NAME[:CKPT] (repeatable)")
    suite = suite_from_dict({"name": "diagnose", "evaluation": [evaluation]}, "diagnose")
    out = Path(args.out or "reports/diagnostics")
    plan = Plan(RunConfig(suite=suite, models=args.model, out=out, device=args.device, batch_size=args.batch_size,
                          limit=args.limit, seed=args.seed, dataset=args.dataset,
                          data_roots=_kv(args.data_root, "--data-root"), model_kwargs=_model_kwargs(args.model_arg),
                          attention=args.attention, attention_layers=args.attention_layers,
                          attention_args=_model_kwargs(args.attention_arg, "--attention-arg")), log=lambda *_: None)
    prm = plan.evals[0].params
    rows, axes = [], []
    for m in plan.models:
        model = build_model(plan, m)
        att = m.patch_params
        label = m.display + ("" if not att else " (" + ",".join(f"{k}={v}" for k, v in att.items()) + ")")
        r, a = diagnose_inputs(model, plan.base_dataset(plan.dataset), names=prm["diagnostics"],
                               attack=(prm["attack"], prm["attack_args"]) if prm.get("attack") else None,
                               corruption=(prm["corruption"], prm["severity"]) if prm.get("corruption") else None,
                               batch_size=plan.batch_size, seed=plan.seed)
        rows += [{"model": label, **x} for x in r]
        axes += [{"model": label, **x} for x in a]
        accs = {x["input"]: x["accuracy"] for x in r}
        print(f"[{label}] " + ", ".join(f"{k} acc {100 * v:.1f}%" for k, v in accs.items()))
    paths = write_outputs(rows, axes, out, plots=not args.no_plots)
    _print_pap_summary(paths["csv"])
    print(f"diagnostics: {paths['csv']}")
    return 0


def _print_pap_summary(csv: Path) -> None:
    import pandas as pd

    df = pd.read_csv(csv)
    pap = df.dropna(subset=["s_fraction"])
    if pap.empty:
        return
    g = pap.groupby(["model", "input", "layer", "iteration"], sort=False)[
        ["s_fraction", "s_to_k_l1", "residual", "threshold", "mean_abs_k"]].mean().reset_index()
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 200):
        print(g.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_train_head(args: argparse.Namespace) -> int:
    import json

    from .heads.train import TrainHeadConfig, train_head

    cfg = TrainHeadConfig(backbone=args.backbone, head=args.head, solver=args.solver, beta=args.beta,
                          proj_dim=args.proj_dim, head_args=_model_kwargs(args.head_arg), tol=args.tol,
                          max_iter=args.max_iter, steps=args.steps, lr=args.lr, seed=args.seed,
                          compare=args.compare, adam_heads=args.adam_heads)
    res = train_head(cfg, out=args.out, cache_dir=args.cache_dir)
    cert = res.get("certificate")
    if cert:
        print(f"certificate: objective {cert['objective']:.6f}, duality gap {cert['gap']:.2e} <= tol {cert['tol']:g}: "
              f"{cert['converged']} ({cert['iterations']} iterations)")
    if res.get("nonconvex_check"):
        print("equivalence check: " + json.dumps({k: res["nonconvex_check"][k] for k in
                                                  ("convex_objective", "adam_objective", "holds")}))
    print(f"head checkpoint: {res['path']}  test acc {res['test_acc']:.4f}")
    return 0 if (not cert or cert["converged"]) else 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Merge run folders (and published RobustBench model_info JSONs) into one board folder."""
    from .leaderboard import LeaderboardError, build_leaderboard

    try:
        res = build_leaderboard(args.runs, args.out, published=args.published or [], rank_by=args.rank_by,
                                title=args.title, export_model_info=args.export_model_info)
    except LeaderboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for i, b in enumerate(res["boards"], 1):
        top = ", ".join(f"{r['rank']}. {b.rows[r['row']].name}" for r in b.ranking[:3])
        print(f"board {i}: {b.title}: {len(b.rows)} rows x {len(b.columns)} columns"
              + (f"; by {b.rank_column.label}: {top}" if b.rank_column and top else ""))
    if res["exported"]:
        print(f"model_info: {len(res['exported'])} JSON file(s) under {Path(args.out) / 'model_info'}")
    print(f"leaderboard: {res['paths']['html']}")
    return 0


def cmd_heads_report(args: argparse.Namespace) -> int:
    from .heads.summary import heads_report

    paths = heads_report(Path(args.run_dir), Path(args.out) if args.out else None)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustbench-rpc", description="Robustness benchmarks for vision transformers "
                                "(RPC-Attention, SymViT, any timm model): attacks, corruptions, OOD, reports.")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a module that registers attention variants, models or attacks (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES.get(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    m = add("models", cmd_models, "list registered models")
    m.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 'rpc_*'")

    r = add("run", cmd_run, "evaluate models over a suite, store results, write the report")
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
    r.add_argument("--strict", action="store_true",
                   help="exit with code 3 when any trust check FAILs (for CI jobs that evaluate checkpoints; "
                        "without it a run exits 0 and reports the failure)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .dist import DEFAULT_TIMEOUT_S

    r.add_argument("--rank-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="torchrun: a rank silent this long ends the job with an error naming it "
                        f"(default {DEFAULT_TIMEOUT_S:g}; must exceed the longest unit)")

    rp = add("report", cmd_report, "build tables, plots and index.html from a run's stored results")
    rp.add_argument("run_dir", help="folder holding results.sqlite")
    rp.add_argument("--out", help="where to write the report (default: the run folder)")

    c = add("compare", cmd_compare, "two models on the same images: deltas with CIs and McNemar tests")
    c.add_argument("run_dir")
    c.add_argument("model_a")
    c.add_argument("model_b")

    v = add("verify", cmd_verify, "check a rerun against a reference run: manifests and per-sample outcomes")
    v.add_argument("run_a", help="reference run folder (or its manifest.json)")
    v.add_argument("run_b", help="the rerun to check (folder or manifest.json)")
    v.add_argument("--tolerance", type=float, default=0.0, metavar="ABS",
                   help="accept float differences (confidence, norms, numbers in checks) up to ABS; default 0: "
                        "exact, as a rerun on the same machine is; integers and statuses always compare exactly")

    t = add("train", cmd_train, "train any registered model (standard, PGD-AT or TRADES) from a recipe; "
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
    from .dist import DEFAULT_TIMEOUT_S as _TIMEOUT

    t.add_argument("--rank-timeout", type=float, default=_TIMEOUT, metavar="SECONDS",
                   help="torchrun: a rank silent this long ends the job with an error naming it")

    dg = add("diagnose", cmd_diagnose, "PAP iterates (S, L, mu, threshold) and KPCA checks per layer, head and "
             "iteration, on clean, attacked and corrupted inputs of the same images")
    dg.add_argument("--model", action="append", metavar="NAME[:CKPT]",
                    help="model to diagnose (repeatable); CKPT 'packaged' uses the shipped checkpoint")
    dg.add_argument("--model-arg", action="append", metavar="KEY=JSON", help="model kwarg, e.g. rpc_iters=6")
    dg.add_argument("--attention", metavar="VARIANT", help="patch this attention variant in (as in run)")
    dg.add_argument("--attention-layers", default="all", metavar="LAYERS", help="blocks to patch (default all)")
    dg.add_argument("--attention-arg", action="append", metavar="KEY=JSON", help="variant parameter, e.g. lam=1")
    dg.add_argument("--diagnostic", action="append", metavar="NAME",
                    help="diagnostic to run (repeatable; default all: pap, projection_loss, eq11)")
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

    th = add("train-head", cmd_train_head, "train a head on a frozen backbone's cached token features "
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

    hr = add("heads-report", cmd_heads_report, "per-head table and plots of a run over backbone+head models")
    hr.add_argument("run_dir")
    hr.add_argument("--out", help="folder for the table and plots (default RUN_DIR/heads)")

    lb = add("leaderboard", cmd_leaderboard, "one board across many run folders: columns by protocol fingerprint, "
             "ranks with Wilson and bootstrap rank intervals, Holm-corrected McNemar tests, flags")
    lb.add_argument("runs", nargs="*", metavar="RUN", help="run folders (read-only); rerun with one more to add it")
    lb.add_argument("--out", required=True, help="board folder (index.html, leaderboard.md/.csv/.tex, outcomes)")
    lb.add_argument("--published", action="append", metavar="JSON|DIR",
                    help="RobustBench model_info JSON file(s) or folder(s): reference rows marked published")
    lb.add_argument("--rank-by", metavar="COLUMN", help="column label to rank by (default: AutoAttack standard, "
                    "else the first attack, else clean)")
    lb.add_argument("--title", help="page title")
    lb.add_argument("--export-model-info", action="store_true",
                    help="also write every measured row as RobustBench model_info JSON under OUT/model_info/")
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the run stops the way Ctrl-C stops it."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    import signal

    def on_term(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.folders import ClassMismatchError, UnreadableImageError
    from .data.resolve import DataRootError
    from .dist import RankFailure
    from .attacks import ModelOutputError
    from .models import CheckpointError, ModelContractError
    from .registry import UnknownNameError
    from .store import StoreError
    from .evalspec import SuiteError
    from .plugins import PluginError

    from .harness import UnitFault

    try:
        with _terminate_as_interrupt():
            for plugin in args.plugin:
                load_plugin(plugin)
            return int(args.fn(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C (130) or SIGTERM (143): every finished unit is in the store
        code = 143 if isinstance(e, _Terminated) else 130
        what = "terminated (SIGTERM)" if code == 143 else "interrupted (Ctrl-C)"
        print(f"{what}: finished units are kept; rerun the same command to resume", file=sys.stderr)
        return code
    except (SuiteError, UnknownNameError, CheckpointError, FileNotFoundError, DataRootError,
            UnreadableImageError, ClassMismatchError, ModelContractError, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RankFailure, StoreError, ModelOutputError, UnitFault) as e:  # faults during a run: NaN logits, full disk
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
