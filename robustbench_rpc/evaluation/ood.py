"""OOD-detection protocols: what an ``ood`` evaluation is scored against, and with which logits.

Every protocol scores with anomaly score = -max softmax probability, OOD as the positive class, AUPR =
average precision (:func:`robustbench_rpc.metrics.ood_metrics`); they differ in the in-distribution set
and in the classes the softmax ranges over:

- ``imagenet-o-200`` (the RPC-Attention paper's, checked against ``Robust/eval_OOD.py``
  ``get_imagenet_o_results`` and ``Robust/calibration_tools.py`` ``get_measures``): in-distribution =
  the ImageNet val images of the 200 ImageNet-O classes only (dataset ``imagenet-o-in``, read from the
  ``imagenet`` root); the logits of both sets are restricted to those 200 classes
  (``class_mask = "imagenet-o"``).  The planner adds that in-distribution evaluation (kind ``clean``)
  to the run and points the OOD evaluation's ``in_eval_key`` at it.  Only for ``dataset = "imagenet-o"``.
- ``all-classes``: in-distribution = the run's clean evaluation (every image, all classes), unmasked
  logits.  The earlier behaviour of this project; also the protocol of OOD sets that are not ImageNet-O.

A suite picks one with ``protocol = "..."`` in the ``[[evaluation]]`` table; without it, ``imagenet-o``
gets ``imagenet-o-200`` and every other dataset ``all-classes``.  The protocol is stored in the
evaluation's params (``protocol``, ``class_mask``), so the report names the protocol of every row.
"""
from __future__ import annotations

from typing import Any

from ..evalspec import EvalSpec, SuiteError
from ..registry import did_you_mean

IMAGENET_O_200 = "imagenet-o-200"
ALL_CLASSES = "all-classes"

PROTOCOLS: dict[str, str] = {
    IMAGENET_O_200: ("in-distribution = ImageNet val images of the 200 ImageNet-O classes only; logits of both "
                     "sets restricted to those 200 classes (as the paper's code, Robust/eval_OOD.py "
                     "get_imagenet_o_results)"),
    ALL_CLASSES: "in-distribution = the run's clean evaluation (all its images, all classes); unmasked logits",
}
#: protocol -> (OOD dataset it applies to, in-distribution dataset, class mask name)
_MASKED: dict[str, tuple[str, str, str]] = {IMAGENET_O_200: ("imagenet-o", "imagenet-o-in", "imagenet-o")}


def default_protocol(dataset: str) -> str:
    return IMAGENET_O_200 if dataset == "imagenet-o" else ALL_CLASSES


def ood_params(dataset: str, protocol: str | None, where: str) -> dict[str, Any]:
    """Validated params of an ``ood`` evaluation: ``protocol`` and, for masked protocols, ``class_mask``."""
    protocol = default_protocol(dataset) if protocol is None else protocol
    if protocol not in PROTOCOLS:
        hint = did_you_mean(protocol, PROTOCOLS, n=2, aside=True)
        raise SuiteError(f"{where}: unknown ood protocol {protocol!r}{hint}; known: {', '.join(PROTOCOLS)}")
    params: dict[str, Any] = {"protocol": protocol}
    if protocol in _MASKED:
        ood_dataset, _, mask = _MASKED[protocol]
        if dataset != ood_dataset:
            raise SuiteError(f"{where}: ood protocol {protocol!r} is defined for dataset '{ood_dataset}' only, "
                             f"got '{dataset}' (use protocol = \"{ALL_CLASSES}\")")
        params["class_mask"] = mask
    return params


def in_distribution_spec(e: EvalSpec) -> EvalSpec | None:
    """The in-distribution evaluation a masked protocol needs (None: the run's clean evaluation)."""
    if e.kind != "ood":
        return None
    protocol = e.params.get("protocol", ALL_CLASSES)
    if protocol not in _MASKED:
        return None
    _, in_dataset, mask = _MASKED[protocol]
    return EvalSpec("clean", in_dataset, in_dataset, {"class_mask": mask, "ood_protocol": protocol})


def in_eval_key(e: EvalSpec, clean_key: str | None) -> str | None:
    """The ``in_eval_key`` recorded with an OOD evaluation."""
    spec = in_distribution_spec(e)
    return spec.key if spec is not None else clean_key


def protocol_of(params: dict[str, Any]) -> str:
    """The protocol of a stored OOD evaluation (runs from before protocols were recorded: all-classes)."""
    return str(params.get("protocol") or ALL_CLASSES)


def describe(protocol: str) -> str:
    return PROTOCOLS.get(protocol, "unknown protocol")
