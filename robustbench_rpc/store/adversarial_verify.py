"""``verify A B`` for saved adversarial images: each run's files against its own manifest, then run against run.

1. Each run: every unit file its ``manifest.json`` lists (``adversarial``) must exist with the sha256
   recorded there. A file that changed is named with the samples that changed: their images no longer
   match the per-sample digests the file was written with (store/adversarial.py).
2. The runs: the same (model, evaluation, unit) files in both, and equal images sample by sample (exactly,
   or within ``--tolerance`` per value); a difference names the model, the evaluation and the samples. A run
   that kept no images is not a difference (``INFO:``): its outcomes are compared with the stores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .adversarial import AdversarialSetError, read_set, sample_digest
from ..models.checkpoint import sha256_of

SHOW = 5


def _first(items) -> str:
    items = list(items)
    return ", ".join(str(i) for i in items[:SHOW]) + (f" and {len(items) - SHOW} more" if len(items) > SHOW else "")


def _entries(manifest: dict) -> dict[tuple[str, str, int], dict]:
    return {(e["model_key"], e["eval_key"], int(e["unit"])): e for e in manifest.get("adversarial") or []
            if isinstance(e, dict) and {"model_key", "eval_key", "unit", "file", "sha256"} <= set(e)}


def _where(e: dict) -> str:
    return f"model {e.get('model')} [{e['model_key']}] on '{e.get('evaluation')}' [{e['eval_key']}]"


def compare_saved_sets(a: Path, b: Path, ma: dict, mb: dict, tolerance: float, diff: Callable[[str], None],
                       out: Callable[[str], None]) -> None:
    """Report every difference through ``diff`` (a failed verification) and a summary through ``out``; images
    kept by one run only are an INFO line (their outcomes are compared with the stores), each run's files still
    checked against its own manifest."""
    ea, eb = _entries(ma), _entries(mb)
    if not ea and not eb:
        return
    if not ea or not eb:  # kept by one run only: the outcomes are compared above, the images cannot be
        out(f"INFO: adversarial images kept by run {'a' if ea else 'b'} only ({len(ea or eb)} unit file(s)): "
            "not compared")
        for side, run, entries in (("a", a, ea), ("b", b, eb)):
            _check_own(side, run, entries, diff, {})
        return
    intact: dict = {}
    for side, run, entries in (("a", a, ea), ("b", b, eb)):
        _check_own(side, run, entries, diff, intact)
    shared = sorted(set(ea) & set(eb))
    for side, mine, other in (("a", ea, eb), ("b", eb, ea)):
        only = sorted(set(mine) - set(other))
        if only:
            diff(f"{len(only)} saved adversarial unit file(s) only in run {side}: "
                 + _first(f"{_where(mine[k])} unit {k[2]}" for k in only))
    same = 0
    for key in shared:
        if ea[key]["sha256"] == eb[key]["sha256"] and intact.get(("a", key)) and intact.get(("b", key)):
            same += 1
            continue
        if not ((a / ea[key]["file"]).is_file() and (b / eb[key]["file"]).is_file()):
            continue  # named above
        try:
            ia, xa, _ = read_set(a / ea[key]["file"])
            ib, xb, _ = read_set(b / eb[key]["file"])
        except AdversarialSetError as err:
            diff(f"{_where(ea[key])}, unit {key[2]}: {err}")
            continue
        if ia != ib or xa.shape != xb.shape:
            diff(f"{_where(ea[key])}, unit {key[2]}: the runs saved other samples or shapes (ids {ia[:SHOW]} vs "
                 f"{ib[:SHOW]}, shapes {tuple(xa.shape)} vs {tuple(xb.shape)})")
            continue
        gap = (xa - xb).abs().flatten(1).amax(dim=1)
        bad = [(sid, float(g)) for sid, g in zip(ia, gap) if not float(g) <= tolerance]
        if bad:
            diff(f"{_where(ea[key])}: {len(bad)} sample(s) of unit {key[2]} have other adversarial images: "
                 + _first(f"sample {sid} (max |diff| {g:.3g})" for sid, g in bad))
        else:
            same += 1
    out(f"adversarial images: {len(shared)} unit file(s) in both runs, {same} equal"
        + (f" within {tolerance:g}" if tolerance else "") + f"; {len(set(ea) ^ set(eb))} in one run only")


def _check_own(side: str, run: Path, entries: dict, diff: Callable[[str], None], intact: dict) -> None:
    """Each listed file of one run against the sha256 its manifest recorded."""
    for key, e in sorted(entries.items()):
        path = run / e["file"]
        if not path.is_file():
            diff(f"run {side}: the adversarial images of {_where(e)}, unit {key[2]} are missing ({path})")
            intact[(side, key)] = False
        elif sha256_of(path) == e["sha256"]:
            intact[(side, key)] = True
        else:
            intact[(side, key)] = False
            diff(f"run {side}: the adversarial images of {_where(e)} changed since the run "
                 f"({e['file']}: sha256 differs from its manifest): {_changed_samples(path)}")


def _changed_samples(path: Path) -> str:
    """Which samples of a changed file no longer match the digests it was written with."""
    try:
        ids, images, header = read_set(path)
        digests = json.loads(header.get("digests", "[]"))
    except (AdversarialSetError, ValueError) as err:
        return f"the file no longer reads as a set ({err})"
    if len(digests) != len(ids):
        return "its per-sample digests were rewritten (samples cannot be named from this file alone)"
    changed = [sid for sid, img, d in zip(ids, images, digests) if sample_digest(img) != d]
    if not changed:
        return "its header was rewritten (every image still matches its digest)"
    return f"{len(changed)} sample(s) changed: sample " + _first(changed)
