"""Static or dynamic: does the model's forward solve an optimization problem or call autograd?

Standard attacks can overstate the robustness of a dynamic model (RobustBench's eligibility rules exclude
"an optimization loop" from the standardized leaderboard; AutoAttack flags such models, ``flags_doc.md``,
"Optimization at inference time"), so every evaluated model is classified:

* declared: modules whose class says ``dynamic`` / ``dynamic_why`` (``robustbench_rpc.adaptive_protocol``;
  every attention variant does: RPC with n_iter > 1 is dynamic);
* detected, for everything else: as AutoAttack's ``checks.check_dynamic`` (fra31/auto-attack
  ``autoattack/checks.py``) one forward pass runs under a tracer that watches for the autograd entry points
  (``torch.autograd.grad``, ``torch.autograd.backward``, ``Tensor.backward``; AutoAttack watches the
  function names ``grad``, ``backward``, ``_make_grads``). Here the code objects are matched, not names (a
  model's own function called ``grad`` is not an autograd call), the tracer is ``sys.setprofile`` (leaves a
  coverage tool's or debugger's ``settrace`` alone; the previous profiler is restored), and forward hooks
  name the innermost module that made the call.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn

from ...adaptive_protocol import declared_dynamics
from ..base import eval_mode, model_device

KINDS = ("static", "dynamic")


def _autograd_codes() -> dict[Any, str]:
    import torch.autograd

    codes = {torch.autograd.grad.__code__: "torch.autograd.grad",
             torch.autograd.backward.__code__: "torch.autograd.backward",
             torch.Tensor.backward.__code__: "Tensor.backward"}
    make_grads = getattr(torch.autograd, "_make_grads", None)  # what both of them call first
    if make_grads is not None and hasattr(make_grads, "__code__"):
        codes.setdefault(make_grads.__code__, "torch.autograd.grad")
    return codes


def detect_autograd_calls(model: nn.Module, images: torch.Tensor) -> list[dict[str, str]]:
    """Autograd calls made during one eval-mode forward pass of ``model`` on ``images``: one row
    ``{"call", "module"}`` per distinct (call, innermost module). Parameters' ``.grad`` are restored."""
    codes = _autograd_codes()
    names = {m: (path or "<model>") for path, m in model.named_modules()}
    stack: list[str] = []
    seen: dict[tuple[str, str], None] = {}

    def pre(module, _inputs):
        stack.append(names.get(module, type(module).__name__))

    def post(module, _inputs, _output):
        if stack:
            stack.pop()

    def profiler(frame, event, _arg):
        if event == "call" and frame.f_code in codes:
            seen.setdefault((codes[frame.f_code], stack[-1] if stack else "<model>"), None)

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    grads = [(p, p.grad) for p in model.parameters()]
    previous = sys.getprofile()
    x = images.to(model_device(model, images.device))
    try:
        with eval_mode(model), torch.enable_grad():
            sys.setprofile(profiler)
            try:
                model(x)
            finally:
                sys.setprofile(previous)
    finally:
        for h in handles:
            h.remove()
        for p, g in grads:
            p.grad = g
    return [{"call": call, "module": module} for call, module in seen]


def _probe(model: nn.Module) -> torch.Tensor | None:
    """Two random images of the model's declared input size (its [0, 1] wrapper's data config), if any."""
    size = getattr(model, "data_config", {}).get("input_size") if isinstance(getattr(model, "data_config", None),
                                                                             dict) else None
    if not size:
        return None
    gen = torch.Generator().manual_seed(0)
    return torch.rand((2, *size), generator=gen)


def model_dynamics(model: nn.Module, images: torch.Tensor | None = None) -> dict[str, Any]:
    """``{"kind": "static"|"dynamic", "why": ..., "source": "declared"|"detected", "modules": [...]}``.

    A declared dynamic module decides (source ``declared``). Otherwise one forward on ``images`` (default:
    random images of the model's declared input size) looks for autograd calls (source ``detected``). A
    static verdict is ``declared`` when every attention module declared itself static and the forward made
    no autograd call, ``detected`` when nothing was declared. Without images or a declared input size only
    the declarations decide; a model declaring nothing then raises ``ValueError``."""
    rows = declared_dynamics(model)
    dynamic = [r for r in rows if r["dynamic"]]
    if dynamic:
        first = dynamic[0]
        more = f" (and {len(dynamic) - 1} more modules)" if len(dynamic) > 1 else ""
        return {"kind": "dynamic", "why": f"{first['module']} ({first['class']}): {first['why']}{more}",
                "source": "declared", "modules": [r["module"] for r in dynamic]}
    x = images[:2] if images is not None else _probe(model)
    if x is None:
        if not rows:
            raise ValueError(f"{type(model).__name__} declares no static/dynamic modules and has no declared input "
                             "size: pass images to model_dynamics")
        return {"kind": "static", "why": _static_why(rows) + " (no forward run: no images)", "source": "declared",
                "modules": []}
    calls = detect_autograd_calls(model, x)
    if calls:
        shown = "; ".join(f"{c['call']} inside {c['module']}" for c in calls[:3])
        return {"kind": "dynamic", "why": f"its forward calls autograd ({shown}): an optimization at inference "
                "time", "source": "detected", "modules": sorted({c["module"] for c in calls})}
    if rows:
        return {"kind": "static", "why": _static_why(rows) + "; its forward calls no autograd function",
                "source": "declared", "modules": []}
    return {"kind": "static", "why": "its forward calls no autograd function and no module declares itself "
            "dynamic", "source": "detected", "modules": []}


def _static_why(rows: list[dict[str, Any]]) -> str:
    classes: dict[str, int] = {}
    for r in rows:
        classes[r["class"]] = classes.get(r["class"], 0) + 1
    listed = ", ".join(f"{c} x{n}" for c, n in classes.items())
    return f"every declaring module is static ({listed}): {rows[0]['why']}"
