"""Diagnostic registry and the machinery that runs diagnostics inside a model's own forward pass.

A diagnostic is a class registered with ``@register_diagnostic(name)``. ``attach(model)`` is a context
manager that installs its hooks (a forward pre-hook, or the ``iterate_recorder`` of variants that expose
their PAP iterates); while attached, every forward of the model feeds per-sample statistics into an
``Accumulator``; ``rows()`` returns them averaged over the samples seen, one dict per
(layer, head, iteration) with the diagnostic's own columns, and ``axis_rows()`` per-axis rows where a
diagnostic has them. Iteration 0 means "the layer's attention itself" (softmax / symmetric layers); PAP
iterations are numbered from 1.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections import defaultdict
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..registry import Registry

DIAGNOSTICS: Registry[type["Diagnostic"]] = Registry("diagnostic", name_attr="name")


def register_diagnostic(name: str):
    """Class decorator: make a diagnostic usable by name (API, ``robustbench-rpc diagnose``, suites)."""
    return DIAGNOSTICS.register(name)


def list_diagnostics(pattern: str | None = None) -> list[str]:
    return DIAGNOSTICS.names(pattern)


def get_diagnostic(name: str) -> type["Diagnostic"]:
    return DIAGNOSTICS.get(name)


def attention_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(block index, attention module) of a timm VisionTransformer, under the [0, 1] wrapper if any."""
    inner = getattr(model, "model", model)
    blocks = getattr(inner, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(inner).__name__} has no 'blocks': diagnostics need a timm VisionTransformer")
    return [(i, b.attn) for i, b in enumerate(blocks)]


class Accumulator:
    """Sums of per-sample statistics keyed by (layer, head, iteration[, axis]); NaNs are not counted."""

    def __init__(self) -> None:
        self.sums: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    @torch.no_grad()
    def add(self, key_prefix: tuple, per_head: dict[str, torch.Tensor]) -> None:
        """``per_head``: metric -> tensor (B, H) (or (B, H, A) for per-axis keys, the axis appended)."""
        for metric, t in per_head.items():
            t = t.detach().double().cpu()
            valid = ~torch.isnan(t)
            s = torch.where(valid, t, torch.zeros_like(t)).sum(0)
            c = valid.sum(0)
            s_list, c_list = s.reshape(-1).tolist(), c.reshape(-1).tolist()
            for j, idx in enumerate(itertools.product(*map(range, s.shape))):
                key = key_prefix[:1] + (idx[0],) + key_prefix[1:] + idx[1:]  # (layer, head, iteration[, axis])
                self.sums[key][metric] += s_list[j]
                self.counts[key][metric] += c_list[j]

    def add_total(self, key: tuple, metric: str, total: float, count: int) -> None:
        self.sums[key][metric] += float(total)
        self.counts[key][metric] += int(count)

    def means(self) -> dict[tuple, dict[str, float]]:
        out = {}
        for key, sums in self.sums.items():
            out[key] = {m: (sums[m] / self.counts[key][m]) if self.counts[key][m] else math.nan for m in sums}
        return out


class Diagnostic:
    """Base class. Subclasses implement ``attach`` (a context manager installing hooks) and ``columns``."""

    name = "?"
    columns: tuple[str, ...] = ()
    axis_columns: tuple[str, ...] = ()

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.acc = Accumulator()
        self.axis_acc = Accumulator()

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        yield

    def finalize(self, means: dict[tuple, dict[str, float]]) -> dict[tuple, dict[str, float]]:
        return means

    def rows(self) -> list[dict[str, Any]]:
        means = self.finalize(self.acc.means())
        return [{"layer": k[0], "head": k[1], "iteration": k[2], **v} for k, v in sorted(means.items())]

    def axis_rows(self) -> list[dict[str, Any]]:
        means = self.axis_acc.means()
        return [{"layer": k[0], "head": k[1], "iteration": k[2], "axis": k[3], **v} for k, v in sorted(means.items())]


@contextlib.contextmanager
def explicit_path(model: nn.Module) -> Iterator[None]:
    """Every attention module on its explicit (non-SDPA) path for the duration; restored afterwards."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, fused in saved:
            m.fused_attn = fused


@contextlib.contextmanager
def record_iterates(model: nn.Module, recorder_for) -> Iterator[list[int]]:
    """Set ``iterate_recorder = recorder_for(layer, module)`` on every attention module that exposes its
    iterates (``exposes_iterates = True``, e.g. ``rpc``); yields their layer indices. The forward runs as the
    model runs it (fused SDPA where the model uses it): the recorded iterates are those of the forward that
    produces the model's outputs, not of a stand-in path whose rounding moves entries across PAP's threshold.
    Recorders are removed on exit, whatever happens."""
    mods = [(i, a) for i, a in attention_blocks(model) if getattr(a, "exposes_iterates", False)]
    try:
        for i, a in mods:
            a.iterate_recorder = recorder_for(i, a)
        yield [i for i, _ in mods]
    finally:
        for _, a in mods:
            a.iterate_recorder = None


def merge_rows(parts: Iterable[list[dict[str, Any]]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Outer-join row lists on ``key`` (rows of different diagnostics for the same layer/head/iteration)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for rows in parts:
        for r in rows:
            k = tuple(r[c] for c in key)
            merged.setdefault(k, {c: r[c] for c in key}).update(r)
    return [merged[k] for k in sorted(merged)]


@torch.no_grad()
def run_diagnostics(model: nn.Module, images: torch.Tensor, names: Iterable[str] | None = None,
                    batch_size: int = 128, params: dict[str, dict[str, Any]] | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the named diagnostics (default: all registered) over ``images`` ([0, 1], (B, 3, H, W)) through
    ``model``'s own forward. Returns (rows per layer/head/iteration, rows per layer/head/iteration/axis),
    every statistic the mean over images."""
    names = list(names) if names else list_diagnostics()
    diags = [DIAGNOSTICS.get(n)(**(params or {}).get(n, {})) for n in names]
    device = next(model.parameters()).device
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for d in diags:
                stack.enter_context(d.attach(model))
            for i in range(0, len(images), batch_size):
                model(images[i:i + batch_size].to(device))
    finally:
        for m, flag in flags:  # each module's own flag back, as given
            m.training = flag
    rows = merge_rows([d.rows() for d in diags], ("layer", "head", "iteration"))
    axes = merge_rows([d.axis_rows() for d in diags], ("layer", "head", "iteration", "axis"))
    return rows, axes
