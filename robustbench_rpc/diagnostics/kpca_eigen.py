"""``kpca_eigenvalues``: the Gram matrix's eigenvalue statistics with and without each adjustment.

Source: the reproduction study (Saritas & Yildiz, arXiv 2505.07908), claim (3): the eigenvalue statistics
the paper (Teo & Nguyen, NeurIPS 2024, appendix figure for Eq. 11) sets beside |gamma_i - gamma_j| cannot be
reproduced without undocumented implementation choices. Code KarahanS/Reproduction-Study-KPCA
``scripts/eigenvalues.py``: per layer, head and image, with keys k (N, d) and scale s,

    k         <- (k - mean) / (std + 1e-8) over the head dimension      (adjustment: key standardisation,
                                                                         its ``standardize: True`` default)
    K_phi     = exp(s k k^T) / (g g^T + eps)                            (adjustment: eps = 1e-6)
    K_c       = H K_phi H;  eigenvalues sorted descending               (adjustment: by |.| as value_vectors.py)
    top       = |the first d eigenvalues|
    max, min, mean, median of ``top`` (median: torch's, the lower middle value for even d)

The study then averages ``top`` per rank over layers and heads for each image and takes the statistics of
that average; when every head's ``top`` is in descending order (always when sorting by |.|, and whenever
the top d eigenvalues are >= 0, which holds for the positive semi-definite K_c), that equals the mean of
the per-head statistics reported here. Columns ``eig_<variant>_<stat>``, stat in max / min / mean / median,
variant one of VARIANTS (each switches one adjustment against the study's setting; ``plain`` has none:
the equation as the paper writes it). The diagonal regularisation diag(1/(g + 1e-6)) of
nlp_value_vectors.py changes only the predicted value matrix, not these eigenvalues: it is
``kpca_alignment``'s ``g_eps``. float64 throughout (the study's float32 gives NaN without standardisation
on large models; here the ``no_std`` numbers are finite). Rows carry ``<column>_sq``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .base import Diagnostic, register_diagnostic
from .kpca import _on_kpca_layers
from .kpca_alignment import double_centered, normalized_gram
from .moments import squared_columns, with_squares

#: variant -> (standardise keys, eps in the normaliser, sort by |eigenvalue|)
VARIANTS = {"study": (True, 1e-6, False), "no_std": (False, 1e-6, False), "no_eps": (True, 0.0, False),
            "abs_sort": (True, 1e-6, True), "plain": (False, 0.0, False)}
EIG_STATS = ("max", "min", "mean", "median")
EIG_METRICS = tuple(f"eig_{v}_{s}" for v in VARIANTS for s in EIG_STATS)


def standardized_keys(k: torch.Tensor) -> torch.Tensor:
    """(k - mean) / (std + 1e-8) over the head dimension, as eigenvalues.py."""
    return (k - k.mean(dim=-1, keepdim=True)) / (k.std(dim=-1, keepdim=True) + 1e-8)


def leading_abs(vals: torch.Tensor, d: int, abs_sort: bool) -> torch.Tensor:
    """|the first d eigenvalues| after sorting ``vals`` (..., N) descending, by value or by |value|."""
    order = torch.argsort(vals.abs() if abs_sort else vals, dim=-1, descending=True)
    return torch.gather(vals, -1, order)[..., :d].abs()


def eigen_statistics(k: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """Every ``eig_<variant>_<stat>`` (module docstring) for keys (B, H, N, d); each (B, H)."""
    out = {}
    spectra: dict[tuple[bool, float], torch.Tensor] = {}
    for name, (std, eps, by_abs) in VARIANTS.items():
        if (std, eps) not in spectra:
            kk = standardized_keys(k) if std else k
            # mean subtraction: the study's H K H products to rounding; eigenvalues do not amplify it
            spectra[(std, eps)] = torch.linalg.eigvalsh(double_centered(normalized_gram(kk, scale, eps)[0]))
        top = leading_abs(spectra[(std, eps)], k.shape[-1], by_abs)
        out.update({f"eig_{name}_max": top.amax(-1), f"eig_{name}_min": top.amin(-1),
                    f"eig_{name}_mean": top.mean(-1), f"eig_{name}_median": top.median(-1).values})
    return out


@register_diagnostic("kpca_eigenvalues")
class KpcaEigenvalues(Diagnostic):
    columns = squared_columns(EIG_METRICS)

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with _on_kpca_layers(model, self._record):
            yield

    def _record(self, layer: int, q, k, v, scale: float) -> None:
        self.acc.add((layer, 0), with_squares(eigen_statistics(k, scale)))
