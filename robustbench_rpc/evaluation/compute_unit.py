"""How one unit (a fixed batch) of each evaluation kind is computed into per-sample rows.

Robust accuracy is always recomputed from the returned adversarial images (``attacks.attack_outcomes``);
a row's ``correct1`` for an attack is the accuracy its evaluation reports (``accuracy`` parameter):
"robust" (default: clean-correct AND still correct under attack) or "plain" (correct under attack, the
RPC paper's definition); the other definition is stored beside it (``plain_correct*``, ``clean_correct*``).
"""
from __future__ import annotations

import contextlib

import torch

from ..evalspec import EvalSpec, STOCHASTIC_EVAL_REPEATS, attack_params, unit_seed
from ..store.adversarial import GALLERY_KEY, IMAGES_KEY, gallery_images
from ..store.rows import NORM_COLUMNS
from ..attacks.base import amp_dtype_of
from ..attacks.evaluate import check_finite
from ..data.folders import mask_logits
from .. import attacks
from ..attacks.attack_record import QUERIES_KEY, CountQueries
from .adversarial_run import KeepImages
from .external import given_rows
from ..data import folders




def autocast(device: str, amp: str | None):
    dtype = amp_dtype_of(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def prediction_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                    device: str, amp: str | None, class_mask: torch.Tensor | None = None) -> dict[str, list]:
    """Top-1/top-5 correctness and max-softmax confidence of ``model`` on a batch."""
    with autocast(device, amp):
        logits = model(x).float()
    check_finite(logits)  # before the class mask, whose excluded classes are -inf on purpose
    if class_mask is not None:  # ImageNet-A/R: argmax over the 200 classes of the subset only

        logits = mask_logits(logits, class_mask)
    probs = logits.softmax(dim=1)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    yd = y.to(top.device)
    return {
        "sample_id": ids.tolist(),
        "label": y.tolist(),
        "pred": top[:, 0].tolist(),
        "correct1": (top[:, 0] == yd).int().tolist(),
        "correct5": (top == yd[:, None]).any(dim=1).int().tolist(),
        "confidence": probs.max(dim=1).values.tolist(),
    }


def attack_rows(model: torch.nn.Module, spec: EvalSpec, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                seed: int, device: str, amp: str | None, gallery: bool = False) -> dict[str, list]:
    attack = attacks.get_attack(spec.name, seed=seed, **attack_params(spec, amp))

    # forwards and backwards per sample, the attack unchanged; query_budget: AttackBench's cap, per sample
    attack = counted = CountQueries(attack, spec.params.get("query_budget"))
    if spec.save_adversarial or gallery:  # the images the rows are scored on, kept for store/adversarial.py

        attack = KeepImages(attack)
    # a stochastic model (evaluated through EOT): the final classification is repeated, worst draw kept
    stochastic = isinstance(getattr(model, "_orig_mod", model), attacks.EOTModel)
    out = attacks.attack_outcomes(model, attack, x, y, amp=amp_dtype_of(amp),
                                  repeats=STOCHASTIC_EVAL_REPEATS if stochastic else 1)
    plain = spec.params.get("accuracy", "robust") == "plain"
    top1, top5 = (out.plain_correct1, out.plain_correct5) if plain else (out.adv_correct1, out.adv_correct5)
    kept = {IMAGES_KEY: attack.images} if spec.save_adversarial else {}
    if gallery:  # the report's gallery: the first images, clean and adversarial (store/adversarial.py)
        kept[GALLERY_KEY] = gallery_images(x, attack.images, eps=spec.params.get("eps"))
    kept[QUERIES_KEY] = counted.stored(out.clean_correct1, out.adv_correct1)  # costs and failure indicators
    # a minimum-norm attack's row holds the sample's minimal norm; one it never broke has none (not the 0 of its
    # unchanged image)
    never_broken = (out.clean_correct1 & out.adv_correct1) if getattr(attack, "minimum_norm", False) else None
    return {
        **kept,
        "sample_id": ids.tolist(),
        "label": y.tolist(),
        "pred": out.adv_pred.tolist(),
        "correct1": top1.int().tolist(),
        "correct5": top5.int().tolist(),
        "confidence": out.adv_confidence.float().tolist(),
        "clean_correct1": out.clean_correct1.int().tolist(),
        "clean_correct5": out.clean_correct5.int().tolist(),
        "plain_correct1": out.plain_correct1.int().tolist(),
        "plain_correct5": out.plain_correct5.int().tolist(),
        **{k: _norms(getattr(out, k), never_broken) for k in NORM_COLUMNS},
    }


def _norms(values: torch.Tensor, missing: torch.Tensor | None) -> list:
    norms = values.float().tolist()
    return norms if missing is None else [None if m else v for v, m in zip(norms, missing.tolist())]


def unit_rows(model: torch.nn.Module, e: EvalSpec, unit: int, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
              *, run_seed: int, device: str, amp: str | None) -> dict[str, list]:
    """The per-sample rows of one unit of any evaluation kind (the kind -> rows dispatch)."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:  # on-the-fly corruptions travel as 8-bit images
        x = x.float().div_(255.0)
    y = y.to(device, non_blocking=True)
    seed = unit_seed(run_seed, e.key, unit)
    if e.kind == "attack":
        return attack_rows(model, e, x, y, ids, seed, device, amp, gallery=unit == 0)
    if e.kind in ("external", "transfer"):  # given adversarial images, no attack run

        return given_rows(model, e, x, y, ids, unit, device, amp)
    mask = None
    mask_name = e.dataset if e.kind == "shift" else e.params.get("class_mask")  # ood protocols set class_mask
    if mask_name:
        mask = folders.class_mask_for(mask_name).to(device)
    torch.manual_seed(seed)
    rows = prediction_rows(model, x, y, ids, device, amp, mask)
    if e.kind == "ood":  # every OOD sample is a "miss" for accuracy; only its confidence matters
        rows["correct1"] = [0] * len(rows["pred"])
        rows["correct5"] = [0] * len(rows["pred"])
    elif unit == 0 and e.kind in ("clean", "corruption"):  # the report's gallery: the first images as evaluated
        rows[GALLERY_KEY] = gallery_images(x, None, first=1 if e.kind == "corruption" else None)
    return rows
