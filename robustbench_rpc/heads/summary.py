"""``robustbench-rpc heads-report RUN``: per (backbone, head) clean / PGD / corruption accuracy with 95 % Wilson
intervals, next to what the head checkpoint certifies (solver, beta, duality gap, ranks of the learned
blocks); plots of accuracy per head and of the blocks' singular values. Built only from the run's store
and the head checkpoints' metadata (read, never modified)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from .model import read_head_metadata
from ..metrics import wilson_interval
from ..store.results import ResultsStore


def _head_meta(checkpoint: str | None) -> dict[str, Any]:
    if not checkpoint or not Path(checkpoint).is_file():
        return {}

    try:
        return read_head_metadata(checkpoint)
    except Exception:  # noqa: BLE001 - a plain backbone checkpoint: no head metadata
        return {}


def heads_table(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    with ResultsStore(Path(run_dir) / "results.sqlite", readonly=True) as store:
        models = store.models()
        evals = store.evaluations().set_index("eval_key")
        samples = store.samples(columns=["model_key", "eval_key", "correct1"])
    rows, spectra = [], {}
    for _, m in models.iterrows():
        spec_name = str(m["arch"])
        backbone, head = (spec_name.split("+", 1) + [""])[:2] if "+" in spec_name else (spec_name, "(own linear head)")
        meta = _head_meta(m.get("checkpoint"))
        row: dict[str, Any] = {"model": m["name"], "backbone": backbone, "head": head}
        s = samples[samples["model_key"] == m["model_key"]].merge(
            evals[["kind", "name", "params"]], left_on="eval_key", right_index=True)

        def acc(mask, label):
            sub = s[mask]
            if len(sub):
                k, n = int(sub["correct1"].sum()), len(sub)
                lo, hi = wilson_interval(k, n)
                row[label], row[f"{label}_lo"], row[f"{label}_hi"], row[f"{label}_n"] = k / n, lo, hi, n

        acc(s["kind"] == "clean", "clean")
        attack = s[s["kind"] == "attack"]
        for eps in sorted({float(p["eps"]) for p in attack["params"] if "eps" in p}):
            label = f"pgd_{round(eps * 255)}/255" if abs(eps * 255 - round(eps * 255)) < 1e-6 else f"pgd_{eps:g}"
            acc((s["kind"] == "attack") & (s["name"] == "pgd") & s["params"].map(lambda p: p.get("eps") == eps), label)
        acc(s["kind"] == "corruption", "corruption")  # pooled over corruptions x severities
        if meta:
            tr = meta.get("training", {})
            cert = meta.get("certificate") or {}
            rank = meta.get("rank") or {}
            row.update(solver=tr.get("solver"), beta=tr.get("beta"), heads=meta["head_config"].get("heads"),
                       ranks=json.dumps(rank.get("ranks")) if rank.get("ranks") is not None else "",
                       gap=cert.get("gap"), tol=cert.get("tol"), objective=(meta.get("result") or {}).get("train_objective"),
                       test_acc_full=(meta.get("result") or {}).get("test_acc"))
            if meta.get("singular_values"):
                spectra[m["name"]] = meta["singular_values"]
        rows.append(row)
    return pd.DataFrame(rows), spectra


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Accuracy columns (each has _lo/_hi/_n companions): clean, pgd_<eps>..., corruption."""
    return [c for c in df.columns if f"{c}_lo" in df.columns]


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    out = df[["backbone", "head"]].copy()
    for c in metric_columns(df):
        out[c] = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if pd.notna(v) else ""
                  for v, lo, hi in zip(df[c], df[f"{c}_lo"], df[f"{c}_hi"])]
    for c in ("solver", "beta", "heads", "ranks", "gap"):
        if c in df:
            out[c] = [v if isinstance(v, str) else "" if v is None or pd.isna(v) else
                      f"{v:.1e}" if c in ("gap", "beta") else f"{int(v)}" if c == "heads" else v for v in df[c]]
    return out


def _markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in row]
                                              for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def heads_report(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else Path(run_dir) / "heads"
    out.mkdir(parents=True, exist_ok=True)
    df, spectra = heads_table(run_dir)
    df.to_csv(out / "heads.csv", index=False)
    md = _fmt(df)
    (out / "heads.md").write_text("Accuracy in % with 95 % Wilson intervals; corruption = pooled over every "
                                  "corruption x severity evaluated; ranks = rank of each learned block "
                                  "(one per gate for gated_attention); gap = certified duality gap.\n\n"
                                  + _markdown(md) + "\n")
    metrics = metric_columns(df)
    backbones = list(dict.fromkeys(df["backbone"]))
    fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 4), squeeze=False)
    for ax, bb in zip(axes[0], backbones):
        sub = df[df["backbone"] == bb].reset_index(drop=True)
        width = 0.8 / max(1, len(sub))
        for i, r in sub.iterrows():
            xs = [j + i * width for j in range(len(metrics))]
            vals = [r.get(c) for c in metrics]
            err = [[max(0.0, (r.get(c) or 0) - (r.get(f"{c}_lo") or 0)) for c in metrics],
                   [max(0.0, (r.get(f"{c}_hi") or 0) - (r.get(c) or 0)) for c in metrics]]
            ax.bar(xs, [v if pd.notna(v) else 0 for v in vals], width, yerr=err, capsize=2, label=r["head"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title(bb)
        ax.set_ylabel("top-1 accuracy (95% CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "heads_accuracy.png", dpi=120)
    fig.savefig(out / "heads_accuracy.svg")
    plt.close(fig)
    paths = {"table": out / "heads.md", "csv": out / "heads.csv", "accuracy_plot": out / "heads_accuracy.png"}
    if spectra:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, blocks in spectra.items():
            for p, sv in enumerate(blocks):
                if sv:
                    ax.semilogy(range(1, len(sv) + 1), sv, marker=".", label=name + (f" gate {p}" if len(blocks) > 1 else ""))
        ax.set_xlabel("index")
        ax.set_ylabel("singular value of the learned block")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "heads_spectra.png", dpi=120)
        plt.close(fig)
        paths["spectra_plot"] = out / "heads_spectra.png"
    return paths
