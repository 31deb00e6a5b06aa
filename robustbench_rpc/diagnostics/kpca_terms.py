"""``kpca_reconstruction_terms``: the projection loss split into its two terms, each with its magnitude.

Source: the reproduction study (Saritas & Yildiz, arXiv 2505.07908), code KarahanS/Reproduction-Study-KPCA
``Reconstruction/softmax.py`` (their edit of the paper's ``Reconstruction/softmax.py``, ``reconstruct``
branch), whose logged quantities ``scripts/reconstruction_relative.py`` and ``scripts/reconstruction.py`` plot.
The paper's projection loss (Teo & Nguyen, Sec. 2.2.1) subtracts the squared norm of the projection h_i from
the squared norm of the query's feature; the study's point is that the two differ by orders of magnitude,
so the loss follows ||phi(q_i)||^2 alone. With s the layer's scale, per head and image, over tokens i:

    recon_phi_norm           mean ||phi(q_i)||^2 = exp(s q_i.q_i) / (sum_j exp(s q_i.k_j))^2
    recon_h_norm             mean ||h_i||^2,  h = softmax(s q k^T) v
    recon_abs_error          mean | ||phi(q_i)||^2 - ||h_i||^2 |
    recon_rel_error_wrt_h    mean |.| / (||h_i||^2 + 1e-8)
    recon_rel_error_wrt_phi  mean |.| / (||phi(q_i)||^2 + 1e-8)

The study averages these over images, heads and tokens per layer, then over layers; the rows here are per
(layer, head), means over images, so their mean over layers and heads is the study's number. Their model
standardises q and k inside attention (as the paper's); ``standardize_qk = True`` applies the same
(q - mean) / std over the head dimension here; by default the q and k the layer attends with are used (as
``projection_loss``). float64, log domain (exp(s q.q - 2 logsumexp(s q.k))). Rows carry ``<metric>_sq``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .base import Diagnostic, register_diagnostic
from .kpca import _on_kpca_layers
from .moments import squared_columns, with_squares

TERM_METRICS = ("recon_phi_norm", "recon_h_norm", "recon_abs_error", "recon_rel_error_wrt_h",
                "recon_rel_error_wrt_phi")


def standardized(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the last dim (unbiased std, no epsilon), as the paper's and study's models."""
    return (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True)


def reconstruction_terms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                         ) -> dict[str, torch.Tensor]:
    """The five quantities (module docstring) for (B, H, N, d) inputs; each (B, H), mean over tokens."""
    logits = (q @ k.transpose(-2, -1)) * scale
    lse = torch.logsumexp(logits, dim=-1)
    phi = torch.exp((q * q).sum(-1) * scale - 2 * lse)
    h = (torch.softmax(logits, dim=-1) @ v).pow(2).sum(-1)
    err = (phi - h).abs()
    return {"recon_phi_norm": phi.mean(-1), "recon_h_norm": h.mean(-1), "recon_abs_error": err.mean(-1),
            "recon_rel_error_wrt_h": (err / (h + 1e-8)).mean(-1),
            "recon_rel_error_wrt_phi": (err / (phi + 1e-8)).mean(-1)}


@register_diagnostic("kpca_reconstruction_terms")
class ReconstructionTerms(Diagnostic):
    """Params: ``standardize_qk`` (default False)."""

    columns = squared_columns(TERM_METRICS)

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with _on_kpca_layers(model, self._record):
            yield

    def _record(self, layer: int, q, k, v, scale: float) -> None:
        if self.params.get("standardize_qk", False):
            q, k = standardized(q), standardized(k)
        self.acc.add((layer, 0), with_squares(reconstruction_terms(q, k, v, scale)))
