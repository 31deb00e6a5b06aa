"""Build the report of a run folder from ``results.sqlite`` only, and compare two models."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..atomic import write_text
from ..store.errors import output_error
from .compute import pairwise
from .curve_report import curves_section
from .data import STORE_FILENAME, RunData
from .diagnostics import diagnostics_section
from .html import page_plan, write_index, write_markdown
from .patch_report import patch_section
from .plots import all_plots
from .queries_report import indicators_table, queries_table, trace_plots
from .tables import all_tables, checks_summary

_OWNED = "report_files.json"  # files written by the previous build, removed before a rebuild


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Write tables (CSV, Markdown, LaTeX), plots (PNG, SVG), ``report.md`` and a self-contained
    ``index.html`` for the run in ``run_dir``, reading ``run_dir/results.sqlite`` only.

    Output goes to ``out_dir`` (default ``run_dir``): ``tables/<name>.{csv,md,tex}``,
    ``plots/<name>.{png,svg}``, ``report.md``, ``index.html``. Files left by an earlier build that this
    build does not write again (e.g. a plot whose data is now absent) are removed once this build has
    written its own, so a build that fails (a full disk: one ``OutputWriteError`` line naming the file)
    leaves the previous report in place, every file of it whole.

    Page order (index.html and report.md alike, with a contents list at the top): the headline table
    (one row per model, the paper's columns), the detailed tables each followed by its plots, the trust
    checks, the run manifest.

    Returns a dict: ``"tables/<file>"``, ``"plots/<file>"``, ``"report.md"``, ``"index.html"`` (alias
    ``"html"``) -> Path, ``"report"`` (alias ``"summary"``) -> str, the Markdown of the headline table
    for a terminal, and ``"checks"`` -> str, the trust-check summary (counts, then one line per check
    that did not pass).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        hint = f": pass its folder, {run_dir.parent}" if run_dir.name == STORE_FILENAME else ""
        raise FileNotFoundError(f"{run_dir} is a file; a report is built from a run folder (the folder that "
                                f"holds {STORE_FILENAME}){hint}")
    out = Path(out_dir) if out_dir is not None else run_dir
    data = RunData.load(run_dir)
    try:
        result = _write_report(data, run_dir, out)
    except OSError as e:  # a full disk, a read-only folder: one line; every file written is whole
        raise output_error(out, e, "report file", f"rerun `robustbench-rpc report {run_dir}` to write the "
                           "report again") from e
    finally:
        data.close()
    result["html"] = result["index.html"]  # alias
    return result


def _write_report(data: RunData, run_dir: Path, out: Path) -> dict:
    """Tables, plots, report.md and index.html of ``data`` into ``out``; each file is written atomically
    (a kill or a full disk leaves its previous version or the new one, never part of it)."""
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(out)
    tables = all_tables(data)
    plots = all_plots(data, out / "plots")
    d_tables, d_plots, paths = diagnostics_section(data, out)  # diagnostics / [sweep] runs only
    tables, plots = tables + d_tables, plots + d_plots
    from .adversarial import adversarial_section  # external sets, transfer matrix, gallery

    a_tables, a_plots = adversarial_section(data, out)
    tables, plots = tables + a_tables, plots + a_plots
    c_tables, c_plots = curves_section(data, out)  # kind = "curve": robust accuracy vs eps from minimal norms
    tables, plots = tables + c_tables, plots + c_plots
    p_tables, p_plots = patch_section(data, out)  # patch threats: accuracy against the number of patches
    tables, plots = tables + p_tables, plots + p_plots
    tables += [t for t in (queries_table(data), indicators_table(data)) if t is not None]  # each attack's cost
    plots += trace_plots(data, out / "plots")  # each attack's path: stalled, stopped early or resisted
    for t in tables:
        paths.update(t.write(out / "tables"))
    for p in plots:
        paths[f"plots/{p.png.name}"] = p.png
        paths[f"plots/{p.svg.name}"] = p.svg
    header = [f"# robustbench-rpc report: {run_dir.name}", "",
              f"Built from `{run_dir / STORE_FILENAME}`. {data.reference_note}.", ""]
    checks_line, not_passed = checks_summary(data)
    sections = page_plan(tables, plots)
    paths["report.md"] = write_markdown(out / "report.md", header, sections, data.meta, checks_line)
    paths["index.html"] = write_index(out / "index.html", run_dir, data.meta, sections, data.reference_note,
                                      checks_line)
    written = sorted({str(p.relative_to(out)) for p in paths.values()})
    write_text(out / _OWNED, json.dumps(written, indent=1), durable=False)
    _remove_stale(out, previous - set(written))  # only now: a build that fails keeps the previous files
    headline = [t for t in tables if t.name == "headline"]
    result: dict = dict(paths)
    result["report"] = result["summary"] = "\n".join(header + [t.to_markdown("##") for t in headline])
    result["checks"] = "\n".join([f"trust checks: {checks_line.split('; not passed')[0]}"]
                                 + [f"  {b}" for b in not_passed])
    return result


def checks_text(run_dir: str | Path) -> str:
    """The trust-check summary of a stored run, read from ``results.sqlite``: a line of counts, then
    one line per check that did not pass (status, check, model, message)."""
    data = RunData.load(run_dir)
    try:
        line, bad = checks_summary(data)
    finally:
        data.close()
    return "\n".join([f"trust checks: {line.split('; not passed')[0]}"] + [f"  {b}" for b in bad])


def _previous_files(out: Path) -> set[str]:
    """Files the previous build of ``out`` wrote (its ``report_files.json``), relative to ``out``."""
    owned = out / _OWNED
    if not owned.is_file():
        return set()
    try:
        names = json.loads(owned.read_text())
    except (OSError, ValueError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def _remove_stale(out: Path, names: set[str]) -> None:
    root = out.resolve()
    for name in names:
        p = (out / name).resolve()
        if root in p.parents and p.is_file():
            p.unlink()


def _resolve_model(data: RunData, ident: str) -> str:
    models = data.models
    for col in ("model_key", "name", "spec"):
        if col in models:
            hit = models[models[col] == ident]
            if len(hit) == 1:
                return str(hit.iloc[0]["model_key"])
            if len(hit) > 1:
                raise ValueError(f"model {ident!r} is ambiguous ({len(hit)} models have this {col}); use a key: "
                                 + ", ".join(hit["model_key"]))
    shown = {k: data.name(k) for k in data.model_keys}
    if ident in shown.values():
        return next(k for k, v in shown.items() if v == ident)
    avail = ", ".join(f"{v} (key {k})" for k, v in shown.items()) or "none"
    raise KeyError(f"no model {ident!r} in {data.run_dir / 'results.sqlite'}; available: {avail}")


def compare_models(run_dir: str | Path, model_a: str, model_b: str) -> pd.DataFrame:
    """Per evaluation (and per worst case over attacks): accuracy of a and b with 95% Wilson CI, the
    paired delta a - b with its 95% CI, McNemar p-value and n paired samples. Models are given by
    display name, name, spec or key. Accuracies in %, deltas in percentage points; NaN where either
    model is incomplete on that evaluation (``complete`` False)."""
    data = RunData.load(run_dir)
    try:
        a, b = _resolve_model(data, model_a), _resolve_model(data, model_b)
        df = pairwise(data, a, b)
        names = (data.name(a), data.name(b))
    finally:
        data.close()
    out = pd.DataFrame({"evaluation": df["evaluation"], "kind": df["kind"], "dataset": df["dataset"]})
    for src, dst in (("acc_a", "acc_a_pct"), ("acc_a_lo", "acc_a_lo_pct"), ("acc_a_hi", "acc_a_hi_pct"),
                     ("acc_b", "acc_b_pct"), ("acc_b_lo", "acc_b_lo_pct"), ("acc_b_hi", "acc_b_hi_pct"),
                     ("delta", "delta_pp"), ("delta_lo", "delta_lo_pp"), ("delta_hi", "delta_hi_pp")):
        out[dst] = 100.0 * df[src].astype(float)
    out["p_value"] = df["p_value"].astype(float)
    out["n"] = df["n"].astype(int)
    out["complete"] = df["complete"].astype(bool)
    out["eval_key"] = df["eval_key"]
    out["note"] = df["note"]
    out.attrs.update(model_a=names[0], model_b=names[1], model_a_key=a, model_b_key=b)
    return out
