"""A single self-contained index.html: inline CSS, images embedded as base64 PNG, no external links."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dataclasses import dataclass

from ..atomic import write_text
from .plots import Plot
from .render import DURABLE, Table


@dataclass
class Section:
    """One entry of the page, in page order: a table, a plot (shown under its table) or the manifest."""
    id: str
    title: str
    kind: str            # "table" | "plot" | "manifest"
    obj: object = None
    sub: bool = False    # a plot nested under its table in the contents list


def _plot_anchor(name: str) -> str | None:
    """The table a plot belongs under."""
    if name.startswith("attack_acc_vs_eps_"):
        return "attacks"
    for prefix in ("corruption_ce_", "corruption_acc_vs_severity_"):
        if name.startswith(prefix):
            return "corruptions_" + name[len(prefix):]
    if name == "deltas_vs_reference":
        return "comparison"
    if name.startswith("attack_paths_"):
        return "indicators"
    if name == "patches_acc_vs_k":
        return "patches"
    return None


def page_plan(tables: list[Table], plots: list[Plot]) -> list[Section]:
    """Page order, shared by index.html and report.md: the headline table first, then the detailed
    tables (each followed by its plots), then the trust checks, then the run manifest."""
    lead = [t for t in tables if t.name == "headline"]
    checks = [t for t in tables if t.name == "checks"]
    detail = [t for t in tables if t.name not in ("headline", "checks")]
    names = {t.name for t in detail}
    out = [Section(t.name, t.title, "table", t) for t in lead]
    for t in detail:
        out.append(Section(t.name, t.title, "table", t))
        out += [Section(p.name, p.title, "plot", p, sub=True) for p in plots if _plot_anchor(p.name) == t.name]
    out += [Section(p.name, p.title, "plot", p) for p in plots if _plot_anchor(p.name) not in names]
    out += [Section(t.name, t.title, "table", t) for t in checks]
    out.append(Section("manifest", "Run manifest", "manifest"))
    return out

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav.toc{background:#f8f8fb;border:1px solid #e2e2ea;border-radius:6px;padding:.3em 1.2em;font-size:13.5px}
nav.toc ol{margin:.3em 0;padding-left:1.6em} nav.toc li.sub{margin-left:1.4em;list-style:circle}
.tbl{overflow-x:auto;max-width:100%;margin:.5em 0;border-left:1px solid #ddd}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;
white-space:nowrap;background:#fff}
thead th{border-top:1px solid #ddd;background:#f4f4f4;white-space:normal;vertical-align:bottom;min-width:6em}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{position:sticky;left:0;z-index:1;box-shadow:2px 0 2px -1px #bbb}
td.missing{color:#999;text-align:center}
td.unstable{background:#fff4d6}
#headline table{font-size:13.5px} #headline td{padding:4px 6px} #headline td:first-child{font-weight:600}
#headline thead th{min-width:7em;padding:4px 6px}
ul.under{font-size:12.5px;color:#333;margin:.3em 0;padding-left:1.3em} ul.under.notes{color:#8a5a00}
.card{background:#f8f8fb;border:1px solid #e2e2ea;border-radius:6px;padding:.4em 1em;font-size:12.5px;
max-width:1100px} .card h4{margin:.4em 0} .card li{overflow-wrap:anywhere}
.status-pass{background:#e6f4e6} .status-warn{background:#fff4d6} .status-fail,.status-error{background:#fde2e2}
.plot{margin:1em 0} .plot img{max-width:100%;box-sizing:border-box;border:1px solid #eee} .plot p{font-size:12.5px;color:#444}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}
dl.kv dt{font-weight:600} dl.kv dd{margin:0;font-family:ui-monospace,monospace;overflow-wrap:anywhere}
#checks td:last-child{white-space:normal;min-width:28em}
p.summary{font-size:14px} p.summary .bad{color:#a00;font-weight:600}
"""


def _kv(items: list[tuple[str, object]]) -> str:
    e = html.escape
    rows = "".join(f"<dt>{e(str(k))}</dt><dd>{e(v if isinstance(v, str) else json.dumps(v, sort_keys=True))}</dd>"
                   for k, v in items if v not in (None, {}, []))
    return f'<dl class="kv">{rows}</dl>' if rows else "<p><em>Not recorded.</em></p>"


def manifest_section(meta: dict) -> str:
    man = meta.get("manifest")
    suite = meta.get("suite")
    out = ['<section id="manifest"><h2>Run manifest</h2>']
    if not isinstance(man, dict):
        out.append("<p><strong>No manifest recorded in this store</strong>: versions, commit and hashes "
                   "are unknown, so these results cannot be checked against a rerun.</p>")
    else:
        git = man.get("git") or {}
        out.append(_kv([("created", man.get("timestamp")),
                        ("git commit", git.get("commit") if isinstance(git, dict) else git),
                        ("git dirty", git.get("dirty") if isinstance(git, dict) else None),
                        ("device", man.get("device")), ("host", man.get("hostname")),
                        ("platform", man.get("platform")), ("seeds", man.get("seeds"))]))
        versions = man.get("versions") or {}
        if versions:
            out.append("<h4>Package versions</h4>" + _kv(sorted(versions.items())))
        ckpts = man.get("checkpoints") or {}
        if ckpts:
            out.append("<h4>Checkpoints (sha256)</h4>" + _kv(
                [(k, (v.get("sha256") or "none") + (f"  ({v.get('path')})" if v.get("path") else ""))
                 if isinstance(v, dict) else (k, v) for k, v in sorted(ckpts.items())]))
        ids = man.get("sample_ids") or {}
        if ids:
            out.append("<h4>Evaluated sample ids (sha256 of the sorted ids)</h4>" + _kv(
                [(k, f"n={v.get('n')} sha256={v.get('sha256')}") if isinstance(v, dict) else (k, v)
                 for k, v in sorted(ids.items())]))
    if isinstance(suite, dict):
        out.append("<h4>Suite</h4>" + _kv(sorted((k, v) for k, v in suite.items())))
    out.append("</section>")
    return "".join(out)


def plot_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
    e = html.escape
    return (f'<section class="plot" id="{e(plot.name)}"><h3>{e(plot.title)}</h3>'
            f'<img alt="{e(plot.title)}" src="data:image/png;base64,{data}"><p>{e(plot.caption)} '
            f"Files: plots/{e(plot.png.name)}, plots/{e(plot.svg.name)}.</p></section>")


def manifest_markdown(meta: dict) -> str:
    man = meta.get("manifest")
    out = ['<a id="manifest"></a>', "## Run manifest", ""]
    if not isinstance(man, dict):
        out.append("**No manifest recorded in this store**: versions, commit and hashes are unknown.")
        return "\n".join(out + [""])
    git = man.get("git") or {}
    items = [("created", man.get("timestamp")),
             ("git commit", git.get("commit") if isinstance(git, dict) else git),
             ("git dirty", git.get("dirty") if isinstance(git, dict) else None),
             ("device", man.get("device")), ("seeds", man.get("seeds")), ("versions", man.get("versions")),
             ("checkpoints", man.get("checkpoints")), ("sample ids", man.get("sample_ids"))]
    out += [f"- **{k}**: `{v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)}`"
            for k, v in items if v not in (None, {}, [])]
    out.append("")
    out.append("Full manifest: `manifest.json` next to `results.sqlite`.")
    return "\n".join(out + [""])


def plot_markdown(plot: Plot) -> str:
    return (f'<a id="{plot.name}"></a>\n\n### {plot.title}\n\n![{plot.title}](plots/{plot.png.name})\n\n'
            f"{plot.caption} Vector version: `plots/{plot.svg.name}`.\n")


def write_markdown(path: Path, header: list[str], sections: list[Section], meta: dict, checks_line: str) -> Path:
    toc = ["**Contents**", ""]
    toc += [("  " if s.sub else "") + f"- [{s.title}](#{s.id})" for s in sections]
    parts = header + [f"**Trust checks:** {checks_line}", ""] + toc + [""]
    for s in sections:
        if s.kind == "table":
            parts += [f'<a id="{s.id}"></a>', "", s.obj.to_markdown("##")]
        elif s.kind == "plot":
            parts.append(plot_markdown(s.obj))
        else:
            parts.append(manifest_markdown(meta))
    return write_text(path, "\n".join(parts), durable=DURABLE)


def write_index(path: Path, run_dir: Path, meta: dict, sections: list[Section], reference_note: str,
                checks_line: str = "") -> Path:
    e = html.escape
    sub = ' class="sub"'
    toc = "".join(f'<li{sub if s.sub else ""}><a href="#{e(s.id)}">{e(s.title)}</a></li>' for s in sections)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>robustbench-rpc report: {e(run_dir.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>robustbench-rpc report</h1><p>Run folder: <code>{e(str(run_dir))}</code>. "
             f"Built from <code>results.sqlite</code> only. {e(reference_note)}. Accuracies are "
             "value [lo, hi] with 95% Wilson intervals; — marks a missing or incomplete result.</p>"]
    if checks_line:
        bad = not checks_line.startswith("all ")
        parts.append(f'<p class="summary">Trust checks: <span class="{"bad" if bad else ""}">{e(checks_line)}</span> '
                     '(<a href="#checks">details</a>)</p>')
    parts.append(f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>')
    for s in sections:
        if s.kind == "table":
            parts.append(s.obj.to_html())
        elif s.kind == "plot":
            parts.append(plot_html(s.obj))
        else:
            parts.append(manifest_section(meta))
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts), durable=DURABLE)
