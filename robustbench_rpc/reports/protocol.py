"""Protocol prose of a report: how each evaluation is labelled and described (datasets, subsets,
threat models, pixel equivalents, incomplete pairs). Words only; the numbers are in ``compute``."""
from __future__ import annotations

import json

import pandas as pd

from ..evalspec import attack_label, eps_label as format_eps, threat_of
from .data import RunData


#: attack parameters that make a different attack of the same name (APGD's loss, BPDA's approximation, a
#: transfer's surrogate, the base attack, AutoAttack's version, a patch attack's patches): part of every label,
#: so rows never read alike
VARIANT_PARAMS = ("loss", "approximation", "surrogate", "base", "version", "n_patches", "select", "size", "positions",
                  "universal")


def attack_name(info: dict) -> str:
    """'apgd loss=dlr', 'bpda approximation=symmetric base=apgd-ce', 'pgd': the attack and what varies it."""
    p = info.get("params") or {}
    return attack_label(str(info["name"]), {k: p[k] for k in VARIANT_PARAMS if k in p})


PATCH_CORRUPTIONS = {"patch_noise": "random patches replaced by noise",
                     "patch_shuffle": "random patches swapped within the image"}


def patch_threat(name: str, params: dict) -> tuple[str, int] | None:
    """(threat, k) of a patch evaluation, from its stored parameters (defaults as the attacks define them);
    None for any other evaluation."""
    if name == "patch_fool":
        bits = [f"{params.get('loss', 'attention')} loss"]
        if params.get("select") == "random":
            bits.append("random patches")
        if params.get("eps") is not None:
            bits.append(f"within {format_eps(params['eps'], 'Linf')} of the clean patch")
        if params.get("steps") is not None:
            bits.append(f"{params['steps']} steps")
        return f"Patch-Fool ({', '.join(bits)})", int(params.get("n_patches", 1))
    if name == "adversarial_patch":
        size = int(params.get("size", 8))
        kind = "universal" if params.get("universal", True) else "one per image"
        extra = f", {params['steps']} steps" if params.get("steps") is not None else ""
        return f"adversarial patch {size}x{size} px ({kind}{extra})", len(params.get("positions") or [[0, 0]])
    if name in PATCH_CORRUPTIONS:
        return PATCH_CORRUPTIONS[name], int(params.get("severity", 1))
    return None


def patch_label(name: str, params: dict) -> str | None:
    """'Patch-Fool (ce loss, 50 steps), k=2': a patch attack's label, its budget being its patches (no eps);
    None for any other attack, or a patch attack also bounded by an eps."""
    patch = patch_threat(name, params) if params.get("eps") is None else None
    return f"{patch[0]}, k={patch[1]}" if patch is not None else None


def eval_label(info: dict) -> str:
    p = info.get("params") or {}
    kind = info.get("kind")
    if kind == "attack":
        patch = patch_label(str(info.get("name")), p)
        if patch is not None:
            return patch
        label = f"{attack_name(info)} {p.get('norm', '?')} eps={format_eps(p.get('eps'), p.get('norm'))}"
        steps = p.get("steps")
        return label + (f" ({steps} step{'' if steps == 1 else 's'})" if steps is not None else "")
    if kind == "corruption":
        return f"{p.get('corruption', info['name'])} s{p.get('severity', '?')}"
    return str(info["name"])


# -------------------------------------------------------------------------------------- protocol
def subset_text(info: dict) -> str:
    p = info.get("params") or {}
    size = info.get("dataset_size", p.get("dataset_size"))
    n = info.get("n_samples")
    how = info.get("subset")
    if isinstance(how, dict) and size and n != size:
        if how.get("method") == "stratified":
            return f"{n} of {size}, spread evenly over the classes (--limit {how.get('limit')})"
        if how.get("method") == "file":
            return f"{n} of {size}, listed in {how.get('file')} (sha256 {str(how.get('sha256'))[:12]})"
    if size:
        return "full set" if n == size else f"subset of {size}"
    if info.get("subset") is not None:
        return ("subset" if info["subset"] else "full set") if isinstance(info["subset"], bool) \
            else f"subset: {info['subset']}"
    if p.get("limit") is not None:
        return f"subset (limit={p['limit']})"
    return "subset or full not recorded"


def dataset_lines(data: RunData, evals: pd.DataFrame) -> list[str]:
    lines = []
    if evals.empty:
        return lines
    for dataset in dict.fromkeys(evals["dataset"]):
        group = evals[evals["dataset"] == dataset]
        ns = sorted(set(int(n) for n in group["n_samples"]))
        n_text = f"{ns[0]} images" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} images"
        subsets = sorted({subset_text(data.info(k)) for k in group["eval_key"]})
        h = data.sample_id_hash(dataset)
        lines.append(f"Dataset {dataset}: {n_text} per evaluation ({'; '.join(subsets)})"
                     + (f"; sample-id sha256 {h}" if h else ""))
    return lines


def common_lines(data: RunData) -> list[str]:
    return ["Accuracy in %, as value [lo, hi] with the 95% Wilson score interval",
            data.seeds_text(),
            "Incomplete (model, evaluation) pairs are shown as missing, never as 0"]


def params_text(params: dict, skip: tuple = ()) -> str:
    items = [f"{k}={_short(v)}" for k, v in sorted(params.items()) if k not in skip]
    return ", ".join(items) if items else "default parameters"


def _short(v, limit: int = 160) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def incomplete_notes(data: RunData, pairs: list[tuple[str, str]]) -> list[str]:
    notes = []
    for m, e in pairs:
        r = data.agg_row(m, e)
        if not r["complete"]:
            notes.append(f"{data.name(m)} on {eval_label(data.info(e))}: {r['n']}/{r['n_expected']} "
                         f"samples ({data.complete_pct(m, e):.0f}% complete) - shown as missing")
    return notes



def pixel_equivalents(data: RunData, params: dict) -> list[str]:
    """For a Linf eps in normalized units: the per-channel pixel budget eps * std_c of each model."""
    eps = params.get("eps")
    if threat_of(params)[0] != "normalized" or not isinstance(eps, (int, float)) \
            or params.get("norm", "Linf") != "Linf":
        return []
    out = []
    for m in data.model_keys:
        std = (data.store.model_info(m) or {}).get("std")
        if std:
            out.append(f"pixel-equivalent eps for {data.name(m)} at {format_eps(eps)}: "
                       + " / ".join(f"{eps * s * 255:.3g}/255" for s in std) + " per channel (R/G/B)")
    return out


_ATTACK_NAMES = {"pgd": "PGD", "fgsm": "FGSM", "square": "Square", "autoattack": "AutoAttack", "spsa": "SPSA",
                 "cw": "CW", "cw-cleverhans": "CW", "apgd": "APGD", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T",
                 "sld": "SLD", "mim": "MIM", "deepfool": "DeepFool"}


def attack_display(name: str) -> str:
    return _ATTACK_NAMES.get(str(name).lower(), str(name))


def threat_suffix(params: dict) -> str:
    """What a headline column says about a non-default threat model, e.g. ' (norm.)' for a budget in
    normalized input units or ' (plain acc.)' for plain accuracy: two columns never differ silently."""
    space, clip, labels, accuracy = threat_of(params)
    tags = (["norm."] if space == "normalized" else []) + (["no clip"] if not clip else []) \
        + (["pred. labels"] if labels == "predicted" else []) + (["plain acc."] if accuracy == "plain" else [])
    return f" ({', '.join(tags)})" if tags else ""
