"""Rendering boards: one self-contained HTML page (sortable columns, no external files), Markdown, LaTeX,
a tidy CSV of every number, the McNemar pairs and the per-sample outcomes used."""
from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

import pandas as pd

from ..reports.render import Table, fmt_ci, fmt_num, fmt_p
from .. import atomic
from .merge import Board, Cell, Column
from .published import (FLAG_ABOVE_CLEAN, FLAG_EXTERNAL, FLAG_EXTRA_DATA, FLAG_NO_EPS, FLAG_OTHER_EPS,
                        FLAG_UNRELIABLE)

FLAG_TEXT = {
    "published": "imported from a RobustBench model_info JSON: no per-sample outcomes (no McNemar, no rank interval)",
    "incomplete": "some evaluation of this row is unfinished: not ranked in that column",
    "failed checks": "a trust check failed in the run (see its report): the robustness numbers are suspect",
    "reduced AutoAttack": "an AutoAttack column is not the standard version (fewer components, iterations or queries)",
    "dynamic model, no adaptive attack": "the model optimizes at inference time and no adaptive attack "
                                         "(bpda, transfer) was run: AutoAttack alone may overestimate it",
    "at chance": "clean accuracy is not significantly above 1/classes",
    "stochastic (EOT)": "the forward pass is random: evaluated with EOT",
    FLAG_UNRELIABLE: "the published file marks its AutoAttack evaluation potentially unreliable (RobustBench's "
                     "flag): its best known robust accuracy comes from another evaluation",
    FLAG_EXTERNAL: "the published best known robust accuracy comes from an external (adaptive) evaluation, lower "
                   "than AutoAttack's; RobustBench ranks by it",
    FLAG_EXTRA_DATA: "trained with data beyond the dataset's training set (the published additional_data)",
    FLAG_NO_EPS: "the published file states no eps: RobustBench's budget for its folder is assumed",
    FLAG_OTHER_EPS: "the published eps is close to but not its folder's budget (0.031 is 7.9/255): ranked in "
                    "the folder's column, as RobustBench ranks it",
    FLAG_ABOVE_CLEAN: "a published robust accuracy is above its clean accuracy: one of the two is wrong",
    "run folder gone": "the run folder this row was read from no longer exists: its numbers are the board's "
                       "copy (leaderboard --remove RUN takes them off)",
}


def cell_text(col: Column, cell: Cell | None) -> str | None:
    if cell is None or cell.value is None or (isinstance(cell.value, float) and math.isnan(cell.value)):
        return None
    if col.metric == "corruptions_mce":
        text = fmt_num(cell.value)
    elif cell.lo is not None:
        text = fmt_ci(cell.value, cell.lo, cell.hi)
    else:
        text = fmt_num(cell.value)
    if not cell.complete:
        text += f" ({cell.n}/{cell.n_expected})"
    return text


def _rank_of(board: Board) -> dict[str, dict]:
    return {r["row"]: r for r in board.ranking}


def _p_above(board: Board) -> dict[str, float]:
    """Holm-adjusted McNemar p of each ranked row against the row ranked just above it."""
    order = [r["row"] for r in board.ranking]
    out = {}
    for above, row in zip(order, order[1:]):
        hit = next((p for p in board.pairs if {p["a"], p["b"]} == {above, row}), None)
        if hit is not None:
            out[row] = hit["p_holm"]
    return out


def shown_columns(board: Board) -> list[Column]:
    """The board's columns as tables show them: the one it is ranked by first."""
    rank = board.rank_column
    return ([rank] if rank is not None else []) + [c for c in board.columns if c is not rank]


def ordered_rows(board: Board) -> list[str]:
    ranked = [r["row"] for r in board.ranking]
    return ranked + sorted((k for k in board.rows if k not in ranked), key=lambda k: board.rows[k].name)


def board_table(board: Board, index: int) -> Table:
    ranks, p_above = _rank_of(board), _p_above(board)
    rank_label = board.rank_column.label if board.rank_column else "—"
    columns = ["rank", "rank 95% interval", "model", "flags", "McNemar p vs row above (Holm)"] + \
              [c.label for c in shown_columns(board)]
    rows, tidy = [], []
    for key in ordered_rows(board):
        row, r = board.rows[key], ranks.get(key)
        interval = r["interval"] if r else None
        cells = [str(r["rank"]) if r else None, f"{interval[0]}-{interval[1]}" if interval else None, row.name,
                 "; ".join(row.flags) or None, fmt_p(p_above.get(key))]
        cells += [cell_text(c, c.cells.get(key)) for c in shown_columns(board)]
        rows.append(cells)
        for c in shown_columns(board):
            cell = c.cells.get(key)
            if cell is None:
                continue
            tidy.append({"board": index, "board_title": board.title, "rank": r["rank"] if r else None,
                         "rank_lo": interval[0] if interval else None, "rank_hi": interval[1] if interval else None,
                         "model": row.name, "row_id": key, "published": row.published, "flags": "; ".join(row.flags),
                         "column": c.label, "metric": c.metric, "value": cell.value, "lo": cell.lo, "hi": cell.hi,
                         "n": cell.n, "n_expected": cell.n_expected, "complete": cell.complete,
                         "runs": " ".join(cell.runs), "column_key": c.key, "ranked_by": c is board.rank_column,
                         "note": cell.note or None})  # where the number comes from (best known: which attacks)
    protocol = [f"ranked by {rank_label}; rank interval: paired bootstrap over the shared samples (1,000 resamples); "
                "accuracies in % with 95% Wilson intervals (corruption accuracy: bootstrap over samples); "
                "McNemar tests on shared sample ids, Holm-adjusted over the board's pairs"]
    protocol += [f"{c.label}: {protocol_text(c)}" for c in shown_columns(board)]
    notes = list(board.notes) + [f"{c.label}: {c.note}" for c in board.columns if c.note]
    notes += [f"{board.rows[k].name}: {board.rows[k].footnote}" for k in ordered_rows(board) if board.rows[k].footnote]
    return Table(f"board_{index}", f"Board {index}: {board.title}", columns, rows, pd.DataFrame(tidy),
                 protocol=protocol, notes=notes)


def protocol_text(col: Column) -> str:
    fp = col.fingerprint
    keys = [k for k in fp if k not in ("kind", "name")]
    shown = [f"{k}={_v(fp[k])}" for k in keys if not k.startswith("contract.")][:14]
    if col.partial:
        shown.append("(stated by published rows only)")
    return ", ".join(shown)


def _v(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


# ----------------------------------------------------------------------------------------------- html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2329;background:#fff}
main{max-width:1400px;margin:0 auto;padding:16px 20px}h1{font-size:22px;margin:4px 0 8px}
h2{font-size:18px;margin:26px 0 6px;border-bottom:1px solid #d8dee4;padding-bottom:3px}
.tbl{overflow-x:auto;border:1px solid #d8dee4;border-radius:4px}
table{border-collapse:collapse;width:max-content;min-width:100%}
th,td{padding:4px 9px;border-bottom:1px solid #eaeef2;white-space:nowrap;text-align:left}
th{background:#f3f5f7;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e6eaef}th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.model{position:sticky;left:0;background:#fff;font-weight:600}td.missing{color:#99a1a8;text-align:center}
tr.published td{background:#f7f9fc;font-style:italic}tr.published td.model{background:#f7f9fc}
td.flags{color:#a4470b;font-size:12.5px;white-space:normal;min-width:140px;max-width:280px}
.rankcol{background:#fff8e1 !important}
ul.small{font-size:12.5px;color:#444;margin:6px 0 0 0;padding-left:18px}details{margin:6px 0}
summary{cursor:pointer;color:#0b5cad}code{font-size:12px}
"""

_JS = """
document.querySelectorAll('table.board').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.from(body.rows),asc=!th.classList.contains('sorted-asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc')});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
        if(x===undefined||x==='')return 1; if(y===undefined||y==='')return -1;
        var nx=parseFloat(x),ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r)});});});});
"""


def _sort_value(col: Column | None, cell: Cell | None) -> str:
    if cell is None or cell.value is None or (isinstance(cell.value, float) and math.isnan(cell.value)):
        return ""
    return f"{cell.value:.10f}"


def board_html(board: Board, index: int, table: Table) -> str:
    e = html.escape
    ranks, p_above = _rank_of(board), _p_above(board)
    head = ['<th class="num">rank</th>', '<th class="num">rank 95% interval</th>', "<th>model</th>", "<th>flags</th>",
            '<th class="num">p vs above (Holm)</th>']
    for c in shown_columns(board):
        cls = "num rankcol" if c is board.rank_column else "num"
        head.append(f'<th class="{cls}" title="{e(protocol_text(c))}">{e(c.label)}</th>')
    body = []
    for key in ordered_rows(board):
        row, r = board.rows[key], ranks.get(key)
        interval = r["interval"] if r else None
        tds = [f'<td class="num" data-v="{r["rank"] if r else ""}">{r["rank"] if r else "—"}</td>',
               f'<td class="num" data-v="{interval[0] if interval else ""}">'
               f'{f"{interval[0]}–{interval[1]}" if interval else "—"}</td>',
               f'<td class="model" data-v="{e(row.name)}">{e(row.name)}</td>',
               f'<td class="flags" data-v="{e("; ".join(row.flags))}">{e("; ".join(row.flags))}</td>',
               f'<td class="num" data-v="{p_above.get(key, "")}">{e(fmt_p(p_above.get(key)) or "—")}</td>']
        for c in shown_columns(board):
            cell = c.cells.get(key)
            text = cell_text(c, cell)
            cls = "num rankcol" if c is board.rank_column else "num"
            tds.append(f'<td class="{cls}" data-v="{_sort_value(c, cell)}">{e(text)}</td>' if text else
                       '<td class="missing" data-v="">—</td>')
        body.append(f'<tr class="{"published" if row.published else ""}">' + "".join(tds) + "</tr>")
    proto = "".join(f"<li>{e(p)}</li>" for p in table.protocol)
    notes = "".join(f"<li>{e(n)}</li>" for n in table.notes)
    pairs = "".join(f"<tr><td>{e(board.rows[p['a']].name)}</td><td>{e(board.rows[p['b']].name)}</td>"
                    f"<td class='num'>{p['n']}</td><td class='num'>{100 * p['delta']:+.1f}</td>"
                    f"<td class='num'>{p['n10']}</td><td class='num'>{p['n01']}</td>"
                    f"<td class='num'>{e(fmt_p(p['p_value']))}</td><td class='num'>{e(fmt_p(p['p_holm']))}</td></tr>"
                    for p in board.pairs)
    pair_html = (f"<details><summary>Paired McNemar tests ({len(board.pairs)} pairs, "
                 f"{e(board.rank_column.label if board.rank_column else '')})</summary><div class='tbl'><table>"
                 "<thead><tr><th>a</th><th>b</th><th class='num'>shared samples</th><th class='num'>a - b (pp)</th>"
                 "<th class='num'>a only</th><th class='num'>b only</th><th class='num'>p</th>"
                 f"<th class='num'>p (Holm)</th></tr></thead><tbody>{pairs}</tbody></table></div></details>"
                 if board.pairs else "")
    runs = "".join(f"<li><code>{e(r)}</code></li>" for r in board.runs)
    return (f'<section id="board-{index}"><h2>{e(table.title)}</h2><div class="tbl"><table class="board">'
            f'<thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            + (f'<ul class="small">{notes}</ul>' if notes else "")
            + f"<details><summary>Protocol of each column</summary><ul class='small'>{proto}</ul></details>"
            + pair_html + (f"<details><summary>Runs ({len(board.runs)})</summary><ul class='small'>{runs}</ul>"
                           "</details>" if runs else "") + "</section>")


def write_html(path: Path, title: str, boards: list[Board], tables: list[Table], sources: list[str]) -> Path:
    e = html.escape
    used = sorted({f.split(":")[0] for b in boards for r in b.rows.values() for f in r.flags})
    legend = "".join(f"<li><b>{e(f)}</b>: {e(FLAG_TEXT.get(f, ''))}</li>" for f in used)
    sections = "".join(board_html(b, i + 1, t) for i, (b, t) in enumerate(zip(boards, tables)))
    toc = "".join(f'<li><a href="#board-{i + 1}">{e(t.title)}</a> ({len(b.rows)} rows, {len(b.columns)} columns)</li>'
                  for i, (b, t) in enumerate(zip(boards, tables)))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main><h1>{e(title)}</h1><p>{len(sources)} source(s) merged; rows measured the same way share "
            "a column (protocol fingerprint: dataset, sample ids, threat model, attack parameters and code, "
            "model contract, mCE baseline); click a column header to sort.</p>"
            f"<ul>{toc}</ul>" + (f"<h2>Flags</h2><ul class='small'>{legend}</ul>" if legend else "")
            + sections + f"<script>{_JS}</script></main></body></html>")
    atomic.write_text(path, page)
    return path


def _html_escaped(table: Table) -> Table:
    """The table with its text HTML-escaped for Markdown, where raw HTML renders (a published name or footnote
    is text, never markup)."""
    def esc(v):
        return html.escape(v, quote=False) if isinstance(v, str) else v
    return dataclasses.replace(table, title=esc(table.title), columns=[esc(c) for c in table.columns],
                               rows=[[esc(v) for v in row] for row in table.rows],
                               protocol=[esc(p) for p in table.protocol], notes=[esc(n) for n in table.notes])


def write_all(out: Path, title: str, boards: list[Board], sources: list[str]) -> dict[str, Path]:
    """index.html, leaderboard.md, leaderboard.tex, leaderboard.csv and pairs.csv under ``out``."""
    tables = [board_table(b, i + 1) for i, b in enumerate(boards)]
    paths = {"html": write_html(out / "index.html", title, boards, tables, sources)}
    md = [f"# {html.escape(title)}", ""] + [_html_escaped(t).to_markdown("##") for t in tables]
    atomic.write_text(out / "leaderboard.md", "\n".join(md))
    atomic.write_text(out / "leaderboard.tex", "\n".join(t.to_latex() for t in tables))
    tidy = pd.concat([t.tidy for t in tables], ignore_index=True) if tables else pd.DataFrame()
    for col in ("rank", "rank_lo", "rank_hi"):  # integers, also where some rows are unranked
        if col in tidy:
            tidy[col] = pd.array([None if v is None or v != v else int(v) for v in tidy[col]], dtype="Int64")
    with atomic.replacing(out / "leaderboard.csv") as tmp:
        tidy.to_csv(tmp, index=False, na_rep="")
    pairs = [{"board": i + 1, "column": b.rank_column.label if b.rank_column else None,
              "model_a": b.rows[p["a"]].name, "model_b": b.rows[p["b"]].name, **{k: v for k, v in p.items()
                                                                                  if k not in ("a", "b")}}
             for i, b in enumerate(boards) for p in b.pairs]
    cols = ["board", "column", "model_a", "model_b", "n", "delta", "n01", "n10", "statistic", "p_value", "method",
            "p_holm"]
    with atomic.replacing(out / "pairs.csv") as tmp:
        pd.DataFrame(pairs, columns=cols).to_csv(tmp, index=False)
    paths.update(md=out / "leaderboard.md", tex=out / "leaderboard.tex", csv=out / "leaderboard.csv",
                 pairs=out / "pairs.csv")
    return paths
