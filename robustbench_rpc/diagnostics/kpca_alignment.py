"""``kpca_alignment``: do a layer's learned value vectors match the value matrix kernel PCA predicts?

Source: Saritas & Yildiz, "A Reproduction Study: The Kernel PCA Interpretation of Self-Attention Fails Under
Scrutiny" (ACL 2025 SRW, arXiv 2505.07908), their value-vector check, code KarahanS/Reproduction-Study-KPCA
``scripts/value_vectors.py`` (``analyze_layer`` builds the prediction, ``compute_value_vector_similarities``
compares). The prediction is Eq. (6) of Teo & Nguyen (NeurIPS 2024) as the study builds it. Per layer, head
and image, from the keys k (N, d) the layer attends with and its scale s:

    K_raw[i, j] = exp(s k_i . k_j),    g_i = sum_j K_raw[i, j]
    K_phi       = K_raw / (g g^T + eps)                 eps = 1e-6 (the study's)
    K_c         = K_phi - 1K_phi - K_phi1 + 1K_phi1      1 = ones(N, N) / N (centered Gram matrix)
    A           = the d eigenvectors of K_c of largest |eigenvalue| (torch.linalg.eigh, sorted by |.|)
    V_kpca      = diag(1 / (g + g_eps)) (A - 1 A)        g_eps = 0 as value_vectors.py (``g_eps = 1e-6`` is
                                                         the diagonal regularisation of nlp_value_vectors.py)

and, against the layer's value vectors V (N, d):

    align_cos_direct   mean over tokens of cos(V_i, V_kpca_i), rows normalised with + 1e-8 as the study
    align_cos_optimal  mean cosine after the one-to-one token matching of largest total cosine (Hungarian:
                       scipy.optimize.linear_sum_assignment, as the study)
    align_linear_cka   linear CKA: <HXX^TH, HYY^TH> / (||HXX^TH|| ||HYY^TH|| + 1e-10)
    align_kernel_cka   the same with RBF Gram matrices, each side's bandwidth sigma^2 = the median (torch's:
                       the lower one) of its non-zero squared pairwise distances
    align_rel_frob     ||V - V_kpca||_F / ||V||_F

Eigenvector signs are whatever LAPACK returns (as in the study), so the direct cosine and the Frobenius
difference depend on them; the CKAs do not. Everything runs in float64, with the study's arithmetic unless
exp would overflow; then K_phi is exp(L - log g_i - log g_j) / (1 + eps exp(-log g_i - log g_j)), the same
number. Where d is close to N the trailing eigenvectors belong to near-zero eigenvalues and are numerically
arbitrary, in the study's code as here.
Rows also carry ``<metric>_sq`` (mean square over images) for intervals (``moments.py``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .base import Diagnostic, register_diagnostic
from .kpca import _on_kpca_layers
from .moments import squared_columns, with_squares

ALIGNMENT_METRICS = ("align_cos_direct", "align_cos_optimal", "align_linear_cka", "align_kernel_cka",
                     "align_rel_frob")


def normalized_gram(k: torch.Tensor, scale: float, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_phi, log g) for keys k (..., N, d): the kernel divided by g g^T + eps. The study's arithmetic
    (exp, then divide) while exp cannot overflow float64, the log domain beyond (same number, no inf)."""
    logits = (k @ k.transpose(-2, -1)) * scale
    log_g = torch.logsumexp(logits, dim=-1)
    if float(logits.max()) < 700:
        k_raw = torch.exp(logits)
        g = k_raw.sum(-1, keepdim=True)
        return k_raw / (g @ g.transpose(-2, -1) + eps), log_g
    log_gg = log_g.unsqueeze(-1) + log_g.unsqueeze(-2)
    k_phi = torch.exp(logits - log_gg)
    if eps:
        k_phi = k_phi / (1 + eps * torch.exp(-log_gg))
    return k_phi, log_g


def centered_gram(k_phi: torch.Tensor) -> torch.Tensor:
    """H K_phi H with H = I - 1 1^T / N, by the same products the study uses."""
    n = k_phi.shape[-1]
    one = torch.full((n, n), 1.0 / n, dtype=k_phi.dtype, device=k_phi.device)
    return k_phi - one @ k_phi - k_phi @ one + one @ k_phi @ one


def kpca_value_matrix(k: torch.Tensor, scale: float, eps: float = 1e-6, g_eps: float = 0.0) -> torch.Tensor:
    """The value matrix Eq. (6) predicts from keys k (..., N, d), as the study builds it (module docstring)."""
    d = k.shape[-1]
    k_phi, log_g = normalized_gram(k, scale, eps)
    vals, vecs = torch.linalg.eigh(centered_gram(k_phi))
    order = torch.argsort(vals.abs(), dim=-1, descending=True)[..., :d]
    a = torch.gather(vecs, -1, order.unsqueeze(-2).expand(*vecs.shape[:-1], d))
    inv_g = 1 / (torch.exp(log_g) + g_eps)
    return inv_g.unsqueeze(-1) * (a - a.mean(-2, keepdim=True))


def _rows_normalized(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


def double_centered(k: torch.Tensor) -> torch.Tensor:
    """H K H for Gram matrices (..., N, N), by subtracting row, column and grand means (the study's products,
    computed in O(N^2))."""
    return k - k.mean(-2, keepdim=True) - k.mean(-1, keepdim=True) + k.mean((-2, -1), keepdim=True)


def _cka(kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """<HKxH, HKyH> / (||HKxH|| ||HKyH|| + 1e-10), the study's CKA (HSIC without its 1/(N-1)^2)."""
    cx, cy = double_centered(kx), double_centered(ky)
    return (cx * cy).sum((-2, -1)) / ((cx * cx).sum((-2, -1)).sqrt() * (cy * cy).sum((-2, -1)).sqrt() + 1e-10)


def rbf_gram(x: torch.Tensor) -> torch.Tensor:
    """exp(-D / (2 sigma^2)) for one (N, d) matrix, sigma^2 = torch.median of its non-zero squared distances."""
    gram = x @ x.T
    diag = gram.diagonal()
    dist = diag.unsqueeze(0) - gram + (diag.unsqueeze(0) - gram).T
    nonzero = dist[dist != 0]
    sigma2 = torch.median(nonzero) if nonzero.numel() else torch.ones((), dtype=x.dtype, device=x.device)
    return torch.exp(dist * (-0.5 / sigma2))


def alignment_metrics(v: torch.Tensor, v_kpca: torch.Tensor) -> dict[str, torch.Tensor]:
    """The five alignment metrics (module docstring) for value matrices (B, H, N, d); each (B, H)."""
    vn, pn = _rows_normalized(v), _rows_normalized(v_kpca)
    direct = (vn * pn).sum(-1).mean(-1)
    sims = (vn @ pn.transpose(-2, -1)).cpu()
    optimal = torch.empty(sims.shape[:2], dtype=torch.float64)
    kernel = torch.empty(sims.shape[:2], dtype=torch.float64)
    for b in range(sims.shape[0]):
        for h in range(sims.shape[1]):
            cost = -sims[b, h].numpy()
            rows, cols = linear_sum_assignment(cost)
            optimal[b, h] = float(-cost[rows, cols].mean())
            kernel[b, h] = float(_cka(rbf_gram(v[b, h]), rbf_gram(v_kpca[b, h])))
    linear = _cka(v @ v.transpose(-2, -1), v_kpca @ v_kpca.transpose(-2, -1))
    rel_frob = (v - v_kpca).pow(2).sum((-2, -1)).sqrt() / v.pow(2).sum((-2, -1)).sqrt()
    return {"align_cos_direct": direct.cpu(), "align_cos_optimal": optimal, "align_linear_cka": linear.cpu(),
            "align_kernel_cka": kernel, "align_rel_frob": rel_frob.cpu()}


@register_diagnostic("kpca_alignment")
class KpcaAlignment(Diagnostic):
    """Params: ``eps`` (normaliser, default 1e-6 as the study), ``g_eps`` (diagonal regularisation of
    diag(1/g), default 0 as value_vectors.py)."""

    columns = squared_columns(ALIGNMENT_METRICS)

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        with _on_kpca_layers(model, self._record):
            yield

    def _record(self, layer: int, q, k, v, scale: float) -> None:
        pred = kpca_value_matrix(k, scale, float(self.params.get("eps", 1e-6)), float(self.params.get("g_eps", 0.0)))
        self.acc.add((layer, 0), with_squares(alignment_metrics(v, pred)))
