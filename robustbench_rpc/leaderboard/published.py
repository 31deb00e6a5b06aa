"""Published RobustBench ``model_info`` JSONs in: one row per file, keyed by the folder the file sits in.

RobustBench renders one leaderboard per folder ``model_info/<dataset>/<threat>/`` (its
``robustbench/leaderboard/template.py``): it reads every ``*.json`` there, never the file's own ``dataset``
field, and sorts by ``ACC_FIELDS[threat]`` with ``get_key`` (``robustbench/utils.py``): for Linf and L2 the
first of ``external``, ``autoattack_acc`` the file has (the "best known robust accuracy", an adaptive or
other external evaluation where one is known), for corruptions ``corruptions_acc``; descending. Its table
also shows ``unreliable`` ("AA eval. potentially unreliable"), ``additional_data`` and ``footnote``.

Here, each file's row is identified by (dataset, threat, file name) from its location, so a parent folder
gives one board per RobustBench folder and no row replaces another's numbers. A published-only board ranks
by the same key RobustBench sorts by (the "best known" column, or corruption accuracy); ties share a rank.
Budgets: RobustBench ranks every file of a folder together whatever its ``eps``; six CIFAR-10 Linf files state
``"0.031"`` (7.9/255, their footnotes say, not 8/255). An eps within 5e-4 of the folder's budget therefore
sits in the folder's column and is ranked there, flagged "eps not the folder's" with the value it states; a
file without ``eps`` takes its folder's budget, flagged "eps not stated"; any other eps has a column of its own.
Numbers must be percentages in [0, 100] (strings or numbers, not booleans); anything else is one error naming
the file and the key.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from .. import metrics
from ..data import robustbench as rbdata
from ..evalspec import eps_label
from ..store.rows import stable_key
from .merge import BASELINE_RB, ROBUSTBENCH_CORRUPTION_SET, Board, Cell, Column, Row, _rb_list_sha
from .sources import LeaderboardError
from .fingerprint import agrees, column_label

THREATS = ("Linf", "L2", "corruptions")
N_EXAMPLES = {"imagenet": 5000, "cifar10": 10000, "cifar100": 10000}
#: RobustBench's ranking field(s) per threat model (robustbench/utils.py ACC_FIELDS): the first present wins
ACC_FIELDS = {"Linf": ("external", "autoattack_acc"), "L2": ("external", "autoattack_acc"),
              "corruptions": ("corruptions_acc",)}
PERCENT_FIELDS = ("clean_acc", "autoattack_acc", "external", "corruptions_acc", "corruptions_acc_3d",
                  "corruptions_mce", "corruptions_mce_3d")
#: a stated eps this close to its folder's budget is ranked with it (RobustBench ranks 0.031 with 8/255)
_ROUNDING = 5e-4
FLAG_UNRELIABLE = "AA eval. potentially unreliable"
FLAG_EXTRA_DATA = "extra data"
FLAG_EXTERNAL = "external evaluation"
FLAG_NO_EPS = "eps not stated"
FLAG_OTHER_EPS = "eps not the folder's"
FLAG_ABOVE_CLEAN = "robust above clean"


@dataclass
class Published:
    """One published file: where it sits, what it states, the numbers it contributes."""
    path: Path
    dataset: str
    threat: str
    name: str
    info: dict[str, Any]
    numbers: list[tuple[dict[str, Any], str, Cell]] = field(default_factory=list)   # (fingerprint, metric, cell)
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def row(self) -> str:
        return f"published:{self.dataset}:{self.threat}:{self.name}"


def published_files(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise LeaderboardError(f"--published {p}: no such file or folder (on the board and deleted since? "
                                   f"--remove {p} takes it off)")
    return list(dict.fromkeys(out))


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LeaderboardError(f"--published {path}: cannot be read ({err})") from None
    if not text.strip():
        raise LeaderboardError(f"--published {path}: the file is empty, not a RobustBench model_info JSON")
    try:
        info = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise LeaderboardError(f"--published {path}: not valid JSON ({err}); truncated?") from None
    if not isinstance(info, dict):
        raise LeaderboardError(f"--published {path}: holds a JSON {type(info).__name__}, not the object of a "
                               "RobustBench model_info file")
    return info


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _percent(info: dict[str, Any], key: str, path: Path) -> float | None:
    """A percentage field as a fraction; None when absent or empty."""
    value = info.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LeaderboardError(f"--published {path}: {key} is {json.dumps(value)}, not a percentage like \"61.25\"")
    try:
        number = float(value)
    except ValueError:
        raise LeaderboardError(f"--published {path}: {key} {value!r} is not a percentage like \"61.25\"") from None
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise LeaderboardError(f"--published {path}: {key} {value!r} is not a percentage between 0 and 100")
    return number / 100.0


def _eps(info: dict[str, Any], path: Path) -> float | None:
    value = info.get("eps")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LeaderboardError(f"--published {path}: eps is {json.dumps(value)}, not a budget like \"8/255\"")
    try:
        eps = float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise LeaderboardError(f"--published {path}: eps {value!r} is not a budget like \"8/255\" or 0.5") from None
    if not math.isfinite(eps) or eps <= 0:
        raise LeaderboardError(f"--published {path}: eps {value!r} is not a positive budget")
    return eps


def _location(path: Path, info: dict[str, Any]) -> tuple[str, str, str | None]:
    """(dataset, threat, note): from the folders ``<dataset>/<threat>/`` the file sits in, as RobustBench reads
    them; a file outside that layout falls back on its ``dataset`` field and its numbers."""
    stated = info.get("dataset")
    if path.parent.name in THREATS and path.parent.parent.name in N_EXAMPLES:
        dataset, threat = path.parent.parent.name, path.parent.name
        note = None if stated in (None, dataset) else \
            f"its 'dataset' field says {stated!r}; RobustBench reads the folder it sits in ({dataset})"
        return dataset, threat, note
    if stated not in N_EXAMPLES:
        raise LeaderboardError(f"--published {path}: not under model_info/<dataset>/<threat>/ and its dataset "
                               f"{stated!r} is not one of RobustBench's ({', '.join(N_EXAMPLES)})")
    if path.parent.name in THREATS:
        return str(stated), path.parent.name, None
    if info.get("corruptions_acc") not in (None, ""):
        return str(stated), "corruptions", None
    eps = _eps(info, path)
    if eps is None:
        raise LeaderboardError(f"--published {path}: not under model_info/<dataset>/<threat>/ and no eps: "
                               "its threat model is unknown")
    return str(stated), "L2" if eps >= 0.1 else "Linf", None


def read_published(path: Path) -> Published:
    """One model_info JSON: its row, numbers, flags and notes (see the module docstring)."""
    info = _load(path)
    dataset, threat, where_note = _location(path, info)
    pub = Published(path, dataset, threat, path.stem, info)
    if where_note:
        pub.notes.append(where_note)
    sel = f"list sha256:{_rb_list_sha()}" if dataset == "imagenet" else "all"
    n = N_EXAMPLES[dataset]
    values = {k: _percent(info, k, path) for k in PERCENT_FIELDS}
    for key in ("unreliable", "additional_data"):
        if info.get(key) is not None and not isinstance(info[key], bool):
            raise LeaderboardError(f"--published {path}: {key} is {json.dumps(info[key])}, not true or false")
    clean = values["clean_acc"]
    if clean is not None:
        pub.numbers.append(({"dataset": dataset, "kind": "clean", "name": "clean", "samples.selection": sel},
                            "accuracy", _cell(clean, n, path)))
    if threat in ("Linf", "L2"):
        eps = _threat_eps(pub, _eps(info, path), dataset, threat)
        threat_fp = {"samples.selection": sel, "threat.norm": threat, "threat.eps": eps, "threat.space": "pixel",
                     "threat.clip": True, "threat.labels": "true", "threat.accuracy": "robust"}
        aa = values["autoattack_acc"]
        if aa is not None:
            pub.numbers.append(({"dataset": dataset, "kind": "attack", "name": "autoattack", **threat_fp,
                                 "attack.version": "standard"}, "accuracy", _cell(aa, n, path)))
        key = next((k for k in ACC_FIELDS[threat] if k in info), None)
        best = values.get(key) if key else None
        if best is not None:
            # an external evaluation may have run on fewer images than RobustBench's: no count, no interval
            cell = _cell(best, None if key == "external" else n, path)
            if key == "external":
                cell.note = "external evaluation (see the footnote; its number of images is not stated)"
                if aa is None or best != aa:
                    pub.flags.append(FLAG_EXTERNAL)
            pub.numbers.append(({"dataset": dataset, "kind": "best known", **threat_fp}, "accuracy", cell))
        if info.get("unreliable") is True:
            pub.flags.append(FLAG_UNRELIABLE)
        robust = [v for v in (aa, best) if v is not None]
    else:
        base = {"dataset": f"{dataset}-c", "kind": "corruption set", "samples.selection": sel,
                "corruption.source": f"{dataset}-c", "corruption.set": stable_key(ROBUSTBENCH_CORRUPTION_SET)}
        if values["corruptions_acc"] is not None:
            pub.numbers.append(({**base, "mce.baseline": None}, "corruptions_acc",
                                _cell(values["corruptions_acc"], None, path)))
        if values["corruptions_mce"] is not None and dataset == "imagenet":
            pub.numbers.append(({**base, "mce.baseline": BASELINE_RB}, "corruptions_mce",
                                _cell(values["corruptions_mce"], None, path)))
        if values["corruptions_acc_3d"] is not None:
            pub.numbers.append(({**base, "corruption.source": f"{dataset}-3dcc", "corruption.set": "3dcc",
                                 "mce.baseline": None}, "corruptions_acc_3d",
                                _cell(values["corruptions_acc_3d"], None, path)))
        robust = [v for v in (values["corruptions_acc"], values["corruptions_acc_3d"]) if v is not None]
    if clean is not None and any(v > clean for v in robust):
        pub.flags.append(FLAG_ABOVE_CLEAN)
        pub.notes.append(f"a robust accuracy ({100 * max(robust):.2f} %) above its clean accuracy "
                         f"({100 * clean:.2f} %): one of the two numbers is wrong")
    if info.get("additional_data") is True:
        pub.flags.append(FLAG_EXTRA_DATA)
    return pub


def _threat_eps(pub: Published, eps: float | None, dataset: str, threat: str) -> float | None:
    budget = rbdata.THREAT_MODELS.get((dataset, threat), {}).get("eps")
    if eps is None:
        if budget is None:
            raise LeaderboardError(f"--published {pub.path}: eps is missing and RobustBench has no {dataset} "
                                   f"{threat} budget to assume")
        pub.flags.append(FLAG_NO_EPS)
        pub.notes.append(f"no eps stated: RobustBench's {dataset} {threat} budget {eps_label(budget)} assumed "
                         "(RobustBench ranks every file of a folder together)")
        return round(budget, 12)
    if budget is not None and eps != budget and abs(eps - budget) <= _ROUNDING:
        pub.flags.append(f"{FLAG_OTHER_EPS}: {pub.info.get('eps')}")
        pub.notes.append(f"eps written {pub.info.get('eps')!r}, not {eps_label(budget)}: ranked in the "
                         f"{eps_label(budget)} column of its folder, as RobustBench ranks it")
        return round(budget, 12)
    return round(eps, 12)


def _cell(value: float, n: int | None, path: Path) -> Cell:
    """A published number; its Wilson interval when the count out of RobustBench's n is recoverable."""
    cell = Cell(value, None, None, n or 0, n or 0, None, [str(path)], published=True)
    if n:
        k = round(value * n)
        if abs(round(100.0 * k / n, 2) - round(100.0 * value, 2)) < 1e-9:
            cell.lo, cell.hi = metrics.wilson_interval(k, n)
            cell.note = f"count inferred: {k}/{n}"
    return cell


_LABELS = {"corruptions_acc": "corruption acc (RobustBench 15 x 5)",
           "corruptions_mce": "mCE vs AlexNet (RobustBench 15 x 5)",
           "corruptions_acc_3d": "corruption acc (3D common corruptions)"}


def add_published(boards: list[Board], paths: list[str]) -> list[Board]:
    """Published rows joined to the measured board of their images where there is one (a column whose
    fingerprint agrees with every field they state, else a new one); else one board per RobustBench folder."""
    for path in published_files(paths):
        pub = read_published(path)
        board = _board_for(boards, pub)
        for fp, metric, cell in pub.numbers:
            col = next((c for c in board.columns if c.metric == metric and agrees(fp, c.fingerprint)), None)
            if col is None:
                col = Column(stable_key({"fp": fp, "metric": metric}), dict(fp),
                             _LABELS.get(metric) or column_label(fp), metric, partial=True)
                board.columns.append(col)
            col.cells[pub.row] = cell
        info = pub.info
        board.rows[pub.row] = Row(pub.row, pub.name, {"name": pub.name, "arch": info.get("architecture"),
                                                      "published": {k: info.get(k) for k in
                                                                    ("link", "name", "venue", "authors")}},
                                  runs=[str(path)], published=True, own_flags=list(pub.flags),
                                  footnote="; ".join(x for x in [footnote_text(info.get("footnote")), *pub.notes]
                                                     if x))
    return boards


def footnote_text(footnote: Any) -> str:
    """A published footnote as plain text: RobustBench writes them as HTML for its page (``<br>``, links,
    MathJax); here they are text (a link keeps its address), escaped wherever they are shown."""
    if footnote is None:
        return ""
    text = str(footnote)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"<a\s[^>]*href=[\"']([^\"']*)[\"'][^>]*>(.*?)</a>", r"\2 (\1)", text, flags=re.I | re.S)
    text = re.sub(r"<[^>]+>", "", text)
    return " ".join(html.unescape(text).split())


def _board_for(boards: list[Board], pub: Published) -> Board:
    sel = f"list sha256:{_rb_list_sha()}" if pub.dataset == "imagenet" else "all"
    measured = next((b for b in boards if b.robustbench is None and b.key[0] == pub.dataset and b.key[1] == sel),
                    None)
    if measured is not None:
        return measured
    board = next((b for b in boards if b.robustbench == pub.threat and b.key[0] == pub.dataset), None)
    if board is None:
        board = Board((pub.dataset, sel, None), f"{pub.dataset} {pub.threat}: RobustBench (published)",
                      robustbench=pub.threat)
        board.notes.append(f"RobustBench's model_info/{pub.dataset}/{pub.threat}/ leaderboard, ranked as RobustBench "
                           f"ranks it: by {' else '.join(ACC_FIELDS[pub.threat])}, the first a file has; "
                           "ties share a rank")
        boards.append(board)
    return board
