"""``robustbench-rpc evaluate-external``: its flags become a one-model run of a clean and an external evaluation,
planned and run like any suite, then summarized from the store. Apart from :mod:`external` (the set, its checks,
its rows), which the suite parser and the unit computation import: this module imports them, not the reverse."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import metrics
from ..attacks.budget import canonical_norm
from ..evalspec import SuiteError, parse_eps
from ..store.adversarial import AdversarialSetError
from ..store.results import ResultsStore
from .external import external_spec
from .plan import RunConfig, parse_pairs
from .suite import suite_from_dict


def external_run_config(args) -> Any:
    """``evaluate-external``'s flags -> a one-model run of a clean and an external evaluation (so report,
    verify and leaderboard read it as any run)."""
    if not Path(args.adversarial).expanduser().exists():  # the flags' own names, before the suite's words
        raise AdversarialSetError(f"--adversarial {args.adversarial}: no such file or folder")
    eps = parse_eps(args.eps, "--eps")
    try:
        norm = canonical_norm(args.norm)
    except ValueError as err:
        raise SuiteError(f"--norm: {err}") from None
    if norm == "Linf" and eps > 1:
        external_spec({"adversarial": args.adversarial, "eps": eps, "norm": norm}, args.dataset, "--eps")
    defaults = {"dataset": args.dataset, "batch_size": args.batch_size, "seed": args.seed}
    suite = suite_from_dict({"name": "external", "version": 1, "defaults": defaults, "evaluation": [
        {"kind": "clean"},
        {"kind": "external", "adversarial": args.adversarial, "norm": args.norm, "eps": args.eps}]},
        "evaluate-external")
    return RunConfig(suite=suite, models=[args.model], out=args.out, device=args.device, limit=args.limit,
                     subset=args.subset, data_roots=parse_pairs(args.data_root, "--data-root"),
                     report=not args.no_report, progress=False if args.no_progress else None)


def external_summary(out: str | Path) -> list[str]:
    """One line per stored external evaluation: model, robust accuracy with its Wilson interval, the file."""
    lines = []
    with ResultsStore(Path(out) / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        names = dict(zip(store.models().get("model_key", []), store.models().get("name", [])))
        for ek in evals.loc[evals["kind"] == "external", "eval_key"] if "kind" in evals else ():
            info = store.evaluation_info(ek)
            for mk, part in store.samples(eval_key=ek).groupby("model_key"):
                acc, lo, hi = metrics.accuracy_ci(part["correct1"].to_numpy().astype(bool))
                clean = part["clean_correct1"].astype(float).mean()
                lines.append(f"{names.get(mk, mk)}: external robust accuracy {100 * acc:.2f}% [{100 * lo:.1f}, "
                             f"{100 * hi:.1f}] (n={len(part)}, clean {100 * clean:.2f}%) on {info['name']}")
    return lines
