"""``pap``: what Principal Attention Pursuit does inside each PAP layer, per head and iteration.

Source: Teo & Nguyen, NeurIPS 2024, Algorithm 1 (PAP) as implemented in the paper's
``Attack/softmax.py`` (mu = N*C / (4 ||K||_1) per sample and head with C the full embedding dim;
S = soft-threshold(K - L + Y/mu, lambda*mu); L = softmax(K2 K2^T / sqrt(d)) V with K2 = K - S - Y/mu;
Y += mu (K - L - S)). The iterates are the model's own: ``RPCAttention`` hands them to its
``iterate_recorder`` in the forward the model runs (fused attention included; any variant with
``exposes_iterates = True`` is covered), so S is the one the model thresholds, entry for entry.

Columns (each the mean over images of a per-image, per-head value):

- ``s_fraction``: fraction of key entries with S != 0 (entries PAP flags as outliers);
- ``s_to_k_l1``: ||S||_1 / ||K||_1;
- ``residual``: primal residual ||K - L - S||_F / ||K||_F after the iteration;
- ``l_change``: ||L_t - L_{t-1}||_F / ||L_{t-1}||_F (NaN at iteration 1, where L_0 = 0);
- ``dual_rel``: ||Y/mu||_F / ||K||_F entering the iteration (0 at iteration 1);
- ``mu``, ``threshold`` (= lambda*mu), ``mean_abs_k`` (= ||K||_1 / (N d)) and
  ``threshold_to_mean_abs_k``: the soft threshold on the scale of the keys it thresholds;
- ``lam``, ``n_iter``: the layer's settings.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from .base import Diagnostic, record_iterates, register_diagnostic


def _fro(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(dim=(-2, -1)).sqrt()


@register_diagnostic("pap")
class PAPDiagnostic(Diagnostic):
    columns = ("s_fraction", "s_to_k_l1", "residual", "l_change", "dual_rel", "mu", "threshold", "mean_abs_k",
               "threshold_to_mean_abs_k", "lam", "n_iter")

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with record_iterates(model, self._recorder):
            yield

    def _recorder(self, layer: int, module: nn.Module):
        prev: dict[str, torch.Tensor] = {}

        @torch.no_grad()
        def record(it: int, *, k, S, L, Z, mu, tau) -> None:
            k, S, L = k.float(), S.float(), L.float()
            B, H, N, d = k.shape
            k_l1 = k.abs().sum(dim=(-2, -1))
            k_fro = _fro(k)
            stats = {
                "s_fraction": (S != 0).sum(dim=(-2, -1)).float() / (N * d),
                "s_to_k_l1": S.abs().sum(dim=(-2, -1)) / k_l1,
                "residual": _fro(k - L - S) / k_fro,
                "dual_rel": torch.zeros_like(k_l1) if Z is None else _fro(Z.float()) / k_fro,
                "mu": mu.reshape(B, H).float(),
                "threshold": tau.reshape(B, H).float(),
                "mean_abs_k": k_l1 / (N * d),
                "lam": torch.full_like(k_l1, float(getattr(module, "lam", math.nan))),
                "n_iter": torch.full_like(k_l1, float(getattr(module, "n_iter", math.nan))),
            }
            stats["threshold_to_mean_abs_k"] = stats["threshold"] / stats["mean_abs_k"]
            last = prev.get("L")
            if it > 1 and last is not None and last.shape == L.shape:
                stats["l_change"] = _fro(L - last) / _fro(last)
            else:
                stats["l_change"] = torch.full_like(k_l1, math.nan)
            prev["L"] = L.detach().clone()
            self.acc.add((layer, it), stats)

        return record
