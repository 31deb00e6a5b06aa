"""A resume that leaves more files out as unreadable (``--skip-unreadable`` added after a run stopped at an
unreadable image): the one change of a stored evaluation's info the store accepts besides additions.

Why it is safe only in one case: an evaluation's units are consecutive positions of its images in
ascending sample-id order (every on-disk set; plan.py takes the run's images before leaving unreadable
ones out, so the choice itself does not move). Leaving out a file moves every later image one place
back, so a finished unit keeps its images exactly when each newly skipped id lies after every id
stored for the evaluation, which is the case for a run that stopped at that file. Anything else
(another listing, other parameters, a file skipped before finished units) stays a conflict.
"""
from __future__ import annotations

from typing import Any, Mapping

SKIP_FIELDS = ("n_samples", "skipped_sample_ids")  # top-level info fields a skip changes; params: below
SKIP_PARAM = "skipped_unreadable"


def _rest(info: Mapping[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in (info.get("params") or {}).items() if k != SKIP_PARAM}
    return {**{k: v for k, v in info.items() if k not in SKIP_FIELDS}, "params": params}


def newly_skipped(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[int] | None:
    """Sample ids ``new`` leaves out as unreadable beyond ``old``, when that is all that differs between the
    stored evaluation info ``old`` and ``new`` (and the sample count drops by exactly as many); else None."""
    if _rest(old) != _rest(new):
        return None
    before, after = set(old.get("skipped_sample_ids") or []), set(new.get("skipped_sample_ids") or [])
    counts = [(info.get("params") or {}).get(SKIP_PARAM, 0) for info in (old, new)]
    if counts != [len(before), len(after)] or not before < after:  # a count without its ids: an older store
        return None
    added = sorted(after - before)
    if int(old.get("n_samples", -1)) - int(new.get("n_samples", -1)) != len(added):
        return None
    return added


def skip_conflict(eval_key: str, where: str, added: list[int], last_stored: int | None) -> str | None:
    """Why the finished units of ``eval_key`` rule out leaving ``added`` out, or None when they do not."""
    if last_stored is None or added[0] > last_stored:
        return None
    return (f"evaluation {eval_key!r} in {where}: {len(added)} more unreadable file(s) would be left out (sample "
            f"ids {', '.join(map(str, added[:5]))}{', ...' if len(added) > 5 else ''}), but finished units already "
            f"hold images up to sample id {last_stored}, so leaving them out would move those units' images; "
            "restore the files, or start the run afresh in another --out")
