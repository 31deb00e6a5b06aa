"""How one unit (a fixed batch) of each evaluation kind is computed into per-sample rows.

Robust accuracy is always recomputed from the returned adversarial images (``attacks.attack_outcomes``);
a row's ``correct1`` for an attack is the accuracy its evaluation reports (``accuracy`` parameter):
"robust" (default: clean-correct AND still correct under attack) or "plain" (correct under attack, the
RPC paper's definition); the other definition is stored beside it (``plain_correct*``, ``clean_correct*``).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
from typing import Any

import torch

from .suite import EvalSpec


def unit_seed(seed: int, eval_key: str, unit: int) -> int:
    """Seed of one unit: a function of (run seed, evaluation, unit index) only — not of rank or order."""
    digest = hashlib.sha256(f"{seed}:{eval_key}:{unit}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def autocast(device: str, amp: str | None):
    from .attacks.base import amp_dtype_of

    dtype = amp_dtype_of(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def prediction_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                    device: str, amp: str | None, class_mask: torch.Tensor | None = None) -> dict[str, list]:
    """Top-1/top-5 correctness and max-softmax confidence of ``model`` on a batch."""
    from .attacks.evaluate import check_finite

    with autocast(device, amp):
        logits = model(x).float()
    check_finite(logits)  # before the class mask, whose excluded classes are -inf on purpose
    if class_mask is not None:  # ImageNet-A/R: argmax over the 200 classes of the subset only
        from .data.folders import mask_logits

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


ACCURACIES = ("robust", "plain")
#: evaluation-level parameters of an attack evaluation (not passed to the attack)
EVAL_PARAMS = ("accuracy", "attack_amp")


def attack_params(spec: EvalSpec, amp: str | None) -> dict[str, Any]:
    """Suite parameters -> get_attack kwargs (``alpha_rel`` is a step size relative to eps).

    The run's ``amp`` reaches PGD/FGSM's own forward/backward unless the evaluation says
    ``attack_amp = false`` (the paper runs its attacks in fp32 and only classifies under autocast).
    Robust accuracy needs no work on lost samples: attacks that can stop early (``early_stop``: skip the
    clean-misclassified, keep the first misclassified iterate) do so unless the evaluation says
    otherwise; plain accuracy (the paper's) keeps every sample's last iterate."""
    from .attacks import attack_class

    params = {k: v for k, v in spec.params.items() if k not in EVAL_PARAMS}
    if "early_stop" not in params and "early_stop" in inspect.signature(attack_class(spec.name)).parameters:
        params["early_stop"] = spec.params.get("accuracy", "robust") == "robust"
    rel = params.pop("alpha_rel", None)
    if rel is not None:
        params["alpha"] = float(rel) * float(params["eps"])
    if amp and amp != "fp32" and spec.name in ("pgd", "fgsm") and spec.params.get("attack_amp", True):
        params["amp_dtype"] = amp  # the attacks accept 'bf16' / 'fp16' (attacks.base.amp_dtype_of)
    return params


def attack_rows(model: torch.nn.Module, spec: EvalSpec, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                seed: int, device: str, amp: str | None) -> dict[str, list]:
    from . import attacks
    from .attacks.base import amp_dtype_of

    attack = attacks.get_attack(spec.name, seed=seed, **attack_params(spec, amp))
    out = attacks.attack_outcomes(model, attack, x, y, amp=amp_dtype_of(amp))
    plain = spec.params.get("accuracy", "robust") == "plain"
    top1, top5 = (out.plain_correct1, out.plain_correct5) if plain else (out.adv_correct1, out.adv_correct5)
    return {
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
        "linf": out.linf.float().tolist(),
        "l2": out.l2.float().tolist(),
    }
