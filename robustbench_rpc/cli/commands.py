"""``robustbench-rpc``: models | run | report | compare | verify | train | diagnose | train-head | heads-report |
leaderboard. Each subcommand is a small function.

Every command imports what it runs inside its own function, on purpose: ``robustbench-rpc --help`` or
``models`` must not pay for importing the harness, the attacks, the reports and matplotlib, and a Ctrl-C while
those load is answered in one line by :func:`main`. The modules each command reaches are named at its top."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..registry import did_you_mean



def _kv(items: list[str], flag: str) -> dict[str, str]:
    from ..evaluation.plan import parse_pairs

    return parse_pairs(items, flag)


def _model_kwargs(items: list[str], flag: str = "--model-arg") -> dict:
    from ..evaluation.plan import parse_pairs

    return parse_pairs(items, flag, as_json=True)


def load_plugin(spec: str) -> None:
    """Import a user module (dotted name or .py file) so its @register_* decorators run (faults: one line)."""
    from ..plugins import load_plugin as load

    load(spec)


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from ..models import MODELS, PACKAGED_DIR as PACKAGED, create_model

    rows = []
    for name in MODELS.names(args.pattern):
        entry = MODELS.get(name)
        with torch.device("meta"):  # count parameters without allocating or initializing weights
            m = create_model(name)
        params = f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"
        shipped = "yes" if (PACKAGED / f"{name}.safetensors").is_file() else ""
        rows.append((name, entry.task, params, entry.attention, shipped, entry.notes))
    headers = ("name", "task", "params", "attention", "packaged ckpt", "notes")
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\n{len(rows)} models; any timm model works too as timm:<name>")
    from ..attention import list_attentions

    print(f"attention variants (run --attention NAME): {', '.join(list_attentions())}")
    from ..heads import list_heads

    shipped_heads = sorted(p.stem for p in PACKAGED.glob("*+*.safetensors"))
    print(f"heads on a frozen backbone (run --model BACKBONE+HEAD:CKPT, train-head --head NAME): "
          f"{', '.join(list_heads())}; shipped (:packaged): {', '.join(shipped_heads) or 'none'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..evaluation.harness import run
    from ..evaluation.plan import RunConfig
    from ..evaluation.seg_run import run_segmentation

    seg_out = run_segmentation(args)  # a suite with task = "segmentation": its own planner, same store
    if seg_out is not None:
        return _finish_segmentation(args, seg_out)
    cfg = RunConfig.from_args(args)
    out = run(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if cfg.report:
        from ..reports import build_report

        build_report(out)
    print(f"results: {Path(out) / 'results.sqlite'}")
    from ..reports.build import checks_text

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


def _finish_segmentation(args: argparse.Namespace, out: Path) -> int:
    print(f"results: {Path(out) / 'results.sqlite'}")
    if not args.no_report:
        from ..reports.seg_report import build_seg_report

        paths = build_seg_report(Path(out))
        print(paths["table_md"].read_text().rstrip())
        print(f"report:  {paths['html']}")
    return 0


def _failed_checks(out: Path) -> list[str]:
    from ..store.results import ResultsStore

    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        checks = store.checks()
    return [str(c) for c in checks.loc[checks["status"] == "fail", "check"]] if not checks.empty else []


def cmd_report(args: argparse.Namespace) -> int:
    from ..reports import build_report
    from ..reports.seg_report import build_seg_report, is_segmentation_run

    if is_segmentation_run(Path(args.run_dir)):  # tables of aAcc/mAcc/mIoU recomputed from the stored counts
        paths = build_seg_report(Path(args.run_dir), Path(args.out) if args.out else None)
        print(paths["table_md"].read_text().rstrip())
        print(f"report: {paths['html']}")
        return 0

    paths = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    summary = paths.get("summary")
    if summary:
        print(summary)
    print(paths["checks"])
    print(f"report: {paths.get('html')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..reports import compare_models
    from ..store.results import ResultsStore

    path = Path(args.run_dir) / "results.sqlite"
    with ResultsStore(path, readonly=True) as store:
        models = store.models()
    known = {str(v) for col in ("model_key", "name", "spec", "arch") if col in models for v in models[col] if v}
    names = [str(v) for v in models.get("name", [])]
    for ident in (args.model_a, args.model_b):
        if ident not in known:
            hint = did_you_mean(ident, known)
            print(f"error: no model {ident!r} in {path}.{hint} Models of this run: {', '.join(names) or 'none'}",
                  file=sys.stderr)
            return 2
    df = compare_models(Path(args.run_dir), args.model_a, args.model_b)
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a rerun against a reference run (robustbench_rpc.store.verify): manifests, then everything stored."""
    from ..store.verify import verify_runs

    return verify_runs(Path(args.run_a), Path(args.run_b), tolerance=args.tolerance)


#: train flag (argparse dest) -> the recipe key it overrides
TRAIN_FLAGS = {"model": "model.name", "init": "model.init", "attention": "model.attention",
               "attention_layers": "model.attention_layers", "attention_reinit": "model.attention_reinit",
               "dataset": "data.dataset", "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
               "warmup_epochs": "optim.warmup_epochs", "objective": "objective.name", "eps": "objective.eps",
               "seed": "seed"}


def _train_overrides(args: argparse.Namespace) -> tuple[dict, dict, str | None]:
    """(recipe overrides, the flag that gave each, the dataset named by --data-root NAME=PATH)."""
    from ..training.recipe import RecipeError, parse_value

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
    from ..training import RecipeError, Settings, build_recipe, train
    from ..training.state import TrainingFault

    try:
        over, flags, named = _train_overrides(args)
        from ..training.seg_train import is_segmentation_recipe, train_segmentation

        if is_segmentation_recipe(args.recipe):  # task = "segmentation": per-pixel CE (training/seg_train.py)
            name = Path(args.recipe).stem
            res = train_segmentation(args.recipe, over, Path(args.out) if args.out else Path("runs/train") / name,
                                     device=args.device)
            print(f"checkpoint: {res['last_checkpoint']}" + (f" (val mIoU {100 * res['val_mIoU']:.1f}%)"
                                                             if res.get("val_mIoU") is not None else ""))
            return 0
        recipe = build_recipe(args.recipe, over, flags)
        if named is not None and named != recipe.data.dataset:
            raise RecipeError(f"--data-root {named}=...: the recipe trains on '{recipe.data.dataset}' (use "
                              f"--data-root PATH, or --dataset {named})")
        out = Path(args.out) if args.out else Path("runs") / "train" / recipe.name
        plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin]
        res = train(recipe, out, Settings(device=args.device, amp=args.amp, workers=args.workers,
                                          progress=False if args.no_progress else None,
                                          rank_timeout=args.rank_timeout, plugins=plugins,
                                          skip_unreadable=args.skip_unreadable))
    except (RecipeError, TrainingFault) as e:
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
    from ..diagnostics import diagnose_inputs, write_outputs
    from ..diagnostics.output import frame
    from ..reports.kpca_claims import write_claims
    from ..evaluation.harness import build_model
    from ..evaluation.plan import Plan, RunConfig
    from ..evaluation.suite import suite_from_dict

    evaluation = {"kind": "diagnostics"}
    if args.diagnostic:
        evaluation["diagnostics"] = args.diagnostic
    if args.attack:
        evaluation.update(attack=args.attack, attack_args=_model_kwargs(args.attack_arg, "--attack-arg"))
    if args.corruption:
        evaluation.update(corruption=args.corruption, severity=args.severity)
    if not args.model:
        from ..evalspec import SuiteError

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
    paths.update(write_claims(frame(rows), Path(out), plots=not args.no_plots))  # both sides of the KPCA claims
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

    from ..heads.train import TrainHeadConfig, train_head

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
    from ..leaderboard import LeaderboardError, build_leaderboard

    try:
        res = build_leaderboard(args.runs, args.out, published=args.published or [], rank_by=args.rank_by,
                                title=args.title, export_model_info=args.export_model_info, remove=args.remove)
    except LeaderboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # the board's state is one file replaced atomically: the previous board stands
        if type(err) is not KeyboardInterrupt:  # SIGTERM: main() answers it (exit 143)
            raise
        print(f"interrupted (Ctrl-C): {args.out} keeps the board it had before; rerun the same command",
              file=sys.stderr)
        return 130
    for i, b in enumerate(res["boards"], 1):
        top = ", ".join(f"{r['rank']}. {b.rows[r['row']].name}" for r in b.ranking[:3])
        print(f"board {i}: {b.title}: {len(b.rows)} rows x {len(b.columns)} columns"
              + (f"; by {b.rank_column.label}: {top}" if b.rank_column and top else ""))
    if res["exported"]:
        print(f"model_info: {len(res['exported'])} JSON file(s) under {Path(args.out) / 'model_info'}")
    for why in res["not_exported"]:
        print(f"model_info: not exported: {why}")
    print(f"leaderboard: {res['paths']['html']}")
    return 0


def cmd_evaluate_external(args: argparse.Namespace) -> int:
    """A given adversarial set scored on a model, stored as a run (evaluation/external.py)."""
    from ..evaluation.external_command import external_run_config, external_summary
    from ..evaluation.harness import run

    cfg = external_run_config(args)
    out = run(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if cfg.report:
        from ..reports import build_report

        build_report(out)
        print(f"report:  {Path(out) / 'index.html'}")
    for line in external_summary(out):
        print(line)
    return 0


def cmd_export_adversarial(args: argparse.Namespace) -> int:
    """A run's saved adversarial images of one evaluation, or a budget's worst case, as .pt/.safetensors/PNGs."""
    from ..store.adversarial_export import export_from_run

    path, n, what = export_from_run(Path(args.run_dir), args.model, evaluation=args.evaluation,
                                    worst_case=args.worst_case, norm=args.norm, dest=Path(args.out))
    print(f"{n} adversarial images ({what}) -> {path}")
    return 0


def cmd_heads_report(args: argparse.Namespace) -> int:
    from ..heads.summary import heads_report

    paths = heads_report(Path(args.run_dir), Path(args.out) if args.out else None)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .parser import build_parser as build

    return build({
        "models": cmd_models,
        "run": cmd_run,
        "report": cmd_report,
        "compare": cmd_compare,
        "verify": cmd_verify,
        "train": cmd_train,
        "diagnose": cmd_diagnose,
        "train-head": cmd_train_head,
        "heads-report": cmd_heads_report,
        "leaderboard": cmd_leaderboard,
        "evaluate-external": cmd_evaluate_external,
        "export-adversarial": cmd_export_adversarial,
    })


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
    try:  # start-up (arguments, imports): a Ctrl-C here is one line too, never an import's traceback
        args = build_parser().parse_args(argv)
        from ..data.folders import ClassMismatchError, UnreadableImageError
        from ..data.resolve import DataRootError
        from ..dist import RankFailure
        from ..attacks import ModelOutputError
        from ..models import CheckpointError, ModelContractError
        from ..registry import UnknownNameError
        from ..store.errors import StoreError
        from ..evalspec import SuiteError
        from ..plugins import PluginError

        from ..evaluation.harness import UnitFault
    except KeyboardInterrupt:
        from .startup import INTERRUPTED

        print(INTERRUPTED, file=sys.stderr)
        return 130

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
    except BrokenPipeError:  # the reader left (`robustbench-rpc models | head`): what it read was all it wanted
        _quiet_closed_stdout()
        return 0


def _quiet_closed_stdout() -> None:
    """Point stdout at devnull so Python's flush at exit does not raise a second BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
