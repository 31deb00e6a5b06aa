"""Threat-model arithmetic shared by every attack: per-sample norms, projection onto the budget, and the
validation of ``eps`` / ``norm`` options.

Budgets are measured in the attack's working space: pixel space (images in [0, 1]) by default, or the
model's normalized input ``(x - mean) / std`` (``space="normalized"``, the RPC paper's threat model);
``measure_budget`` re-measures them from returned pixel images with a derived float rounding bound.
Projection first maps the perturbation into the norm ball, then clamps the image into the valid box
(``Box``: [0, 1] in pixel units, [(0 - mean)/std, (1 - mean)/std] per channel in normalized units, or
no box at all with ``clip=False``); clamping only moves each value towards the clean image, so it never
increases any Lp norm and the result satisfies both constraints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

NORMS = ("Linf", "L2", "L1")
#: L0 (the number of changed values, counted over every channel as foolbox does) is a norm only some attacks
#: take (``fmn``); it is kept out of NORMS so an attack's default threat models stay the dense ones
SPARSE_NORMS = ("L0",)
SPACES = ("pixel", "normalized")
LABELS = ("true", "predicted")
_NORM_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}
# Higham & Mary's probabilistic bound: a float32 norm over n values is within lambda sqrt(n) u (relative)
# with probability >= 1 - 2 n exp(-lambda^2 (1 - u)^2 / 2); lambda = 10: failure 6e-17 at n = 3x224x224.
NORM_LAMBDA = 10.0


def canonical_norm(norm: str) -> str:
    """'linf' / 'Linf' / 'inf' -> 'Linf' etc.; anything else raises ValueError naming the option."""
    if isinstance(norm, str):
        if norm in NORMS or norm in SPARSE_NORMS:
            return norm
        key = norm.strip().lower()
        if key in _NORM_ALIASES:
            return _NORM_ALIASES[key]
    raise ValueError(f"norm must be one of {', '.join(NORMS + SPARSE_NORMS)}; got {norm!r}")


def validate_norm(norm: str, supported: tuple[str, ...], attack: str) -> str:
    norm = canonical_norm(norm)
    if norm not in supported:
        raise ValueError(
            f"norm '{norm}' is not supported by attack '{attack}' (supported: {', '.join(supported)})"
        )
    return norm


def validate_eps(eps: object, attack: str, *, required: bool = True) -> float | None:
    """A budget is a finite, non-negative real number (pixel units)."""
    if eps is None:
        if required:
            raise ValueError(f"attack '{attack}' needs eps (the perturbation budget in pixel units)")
        return None
    if isinstance(eps, bool) or not isinstance(eps, (Real, torch.Tensor)):
        raise ValueError(f"eps of attack '{attack}' must be a number, got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps of attack '{attack}' must be finite and >= 0, got {eps!r}")
    return value


def validate_threat(space: object, clip: object, labels: object, attack: str) -> tuple[str, bool, str]:
    """The three threat-model options every attack takes, checked and named in the error."""
    if space not in SPACES:
        raise ValueError(f"space of attack '{attack}' must be one of {', '.join(SPACES)}, got {space!r}")
    if not isinstance(clip, bool):
        raise ValueError(f"clip of attack '{attack}' must be True or False, got {clip!r}")
    if labels not in LABELS:
        raise ValueError(f"labels of attack '{attack}' must be one of {', '.join(LABELS)}, got {labels!r}")
    return str(space), clip, str(labels)


class Box:
    """The valid input range in an attack's working space: per-channel ``lo``/``hi`` bounds, or none.

    ``Box.unit()`` is [0, 1] (pixel space); ``Box.of_normalized(mean, std)`` is the image of [0, 1] under
    ``(x - mean) / std``; ``Box.none()`` does not clamp (``clip=False``).
    """

    def __init__(self, lo: torch.Tensor | float | None, hi: torch.Tensor | float | None):
        self.lo, self.hi = lo, hi

    @classmethod
    def unit(cls) -> "Box":
        return cls(0.0, 1.0)

    @classmethod
    def none(cls) -> "Box":
        return cls(None, None)

    @classmethod
    def of_normalized(cls, mean: torch.Tensor, std: torch.Tensor) -> "Box":
        return cls((0.0 - mean) / std, (1.0 - mean) / std)

    @property
    def bounded(self) -> bool:
        return self.lo is not None

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is None:
            return x
        if isinstance(self.lo, float):
            return x.clamp(self.lo, self.hi)
        return torch.maximum(torch.minimum(x, self.hi.to(x.dtype)), self.lo.to(x.dtype))

    def __repr__(self) -> str:
        return "Box(unbounded)" if self.lo is None else f"Box({self.lo}, {self.hi})"


def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a (B, ...) perturbation, shape (B,)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "Linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    if norm == "L1":
        return flat.abs().sum(dim=1)
    if norm == "L0":
        return (flat != 0).sum(dim=1).to(flat.dtype if flat.is_floating_point() else torch.float32)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each sample onto the L1 ball of radius eps (Duchi et al., ICML 2008),
    batched and branch-free: samples already inside the ball are returned unchanged."""
    b = delta.shape[0]
    flat = delta.reshape(b, -1)
    mag = flat.abs()
    srt = mag.sort(dim=1, descending=True).values
    css = srt.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = srt * ks > (css - eps)
    rho = cond.to(torch.int64).cumsum(dim=1).amax(dim=1).clamp_min(1)  # cond holds on a prefix
    theta = (css.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - eps) / rho.to(flat.dtype)
    shrunk = flat.sign() * (mag - theta.clamp_min(0).unsqueeze(1)).clamp_min(0)
    inside = (mag.sum(dim=1) <= eps).unsqueeze(1)
    return torch.where(inside, flat, shrunk).reshape(delta.shape)


def project_l0_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Keep each sample's floor(eps) largest-magnitude values and zero the rest (the Euclidean projection onto
    the L0 ball; ties at the threshold are broken by position, so exactly floor(eps) survive)."""
    flat = delta.reshape(delta.shape[0], -1)
    k = min(int(math.floor(eps)), flat.shape[1])
    if k >= flat.shape[1]:
        return delta
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(delta.shape)


def project_delta(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Map a perturbation into the norm ball of radius eps (per sample)."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    if norm == "L2":
        n = lp_norms(delta, "L2").clamp_min(1e-12)
        return delta * _view(torch.clamp(eps / n, max=1.0), delta)
    if norm == "L1":
        return project_l1_ball(delta, eps)
    if norm == "L0":
        return project_l0_ball(delta, eps)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str | None,
            box: Box | None = None) -> torch.Tensor:
    """Project x_adv onto {x + d : ||d||_norm <= eps} and then into ``box`` ([0, 1] by default).
    eps=None: only the box."""
    if eps is not None and norm is not None:
        x_adv = x + project_delta(x_adv - x, eps, norm)
    return (box or Box.unit()).clamp(x_adv)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps_machine / 2 of the attack's arithmetic: float32's 2^-24 for float32/float64 images (attacks
    compute in at least float32), the dtype's own for half precision."""
    return max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps) / 2


@dataclass(frozen=True)
class BudgetReport:
    """What ``measure_budget`` found, per sample tensors (float64) and counts."""

    norms: torch.Tensor | None        # measured per-sample norm of the perturbation (working units)
    tolerance: torch.Tensor | None    # per-sample rounding tolerance (eps + tolerance is the bound)
    eps: float | None
    norm: str | None
    units: str                        # "pixel" | "normalized"
    nonfinite_mask: torch.Tensor      # (B,) samples with a NaN/inf value
    outside_mask: torch.Tensor        # (B,) samples leaving [0, 1] (only when the attack clips)
    box_range: tuple[float, float]    # (min, max) of the finite adversarial values
    total: int

    @property
    def nonfinite(self) -> int:
        return int(self.nonfinite_mask.sum())

    @property
    def outside_box(self) -> int:
        return int(self.outside_mask.sum())

    @property
    def over(self) -> torch.Tensor:
        if self.norms is None:
            return torch.zeros_like(self.outside_mask)
        return self.norms > self.eps + self.tolerance

    @property
    def over_budget(self) -> int:
        return int(self.over.sum())

    @property
    def worst(self) -> float:
        return float(self.norms.max()) if self.norms is not None and self.total else 0.0

    @property
    def worst_excess(self) -> float:
        """Largest measured norm - eps (may be within the tolerance)."""
        return self.worst - self.eps if self.norms is not None else 0.0

    @property
    def broken(self) -> int:
        """Samples that break any part of the threat model."""
        over = self.over.to(self.outside_mask.device)
        return int((self.nonfinite_mask | self.outside_mask | over).sum())

    @property
    def ok(self) -> bool:
        return self.broken == 0

    def problems(self) -> list[str]:
        out = []
        if self.nonfinite:
            out.append(f"returned NaN/inf adversarial images for {self.nonfinite} of {self.total} samples")
        if self.outside_box:
            lo, hi = self.box_range
            out.append(f"left [0, 1] for {self.outside_box} of {self.total} samples (min {lo:.6g}, max {hi:.6g})")
        if self.over_budget:
            tol = float(self.tolerance[self.over].max())
            out.append(f"{self.norm} perturbation exceeds eps {self.eps:.6g} ({self.units} units) for "
                       f"{self.over_budget} of {self.total} samples: worst {self.worst:.6g}, excess "
                       f"{self.worst_excess:.3g} (rounding tolerance {tol:.3g})")
        return out


def _working(x: torch.Tensor, x_adv: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None):
    """(z, w_adv, std64): clean and adversarial images in the working units, in float64 (std64: None in
    pixel space)."""
    if std is None:
        return x.double(), x_adv.double(), None
    mean64, std64 = mean.double().to(x_adv.device), std.double().to(x_adv.device)
    return (x.double() - mean64) / std64, (x_adv.double() - mean64) / std64, std64


def _rounding_scale(x_adv: torch.Tensor, z: torch.Tensor, w_adv: torch.Tensor,
                    std: torch.Tensor | None) -> torch.Tensor:
    """Per-coordinate factor s_i with |measured delta_i - the attack's delta_i| <= u * s_i (see
    ``measure_budget``)."""
    if std is None:
        return x_adv.abs()
    return 2 * w_adv.abs() + x_adv.abs() / std + 2 * z.abs()


def measure_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str | None, *,
                   clip: bool = True, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                   extra_tol: float = 0.0) -> BudgetReport:
    """Re-measure pixel-space ``x_adv`` against the threat model, in the attack's own working space.

    Units: pixel, or (``mean``/``std`` given) normalized: ``(x_adv - x) / std``, in float64 from the
    returned images, so the measurement itself does not round. (Measuring around the attack's own float32
    ``(x - mean) / std`` instead reads 2-3x more rounding: the round trip to pixels mostly undoes it.)

    The bound (u: ``unit_roundoff`` of the attack's dtype, 2^-24 for float32; n coordinates per sample).
    A correct attack holds ``w' = fl(z + d)`` with ``||d||_p <= eps (1 + rho)``, where rho covers its own
    float norm: rho = 2u for Linf (eps rounded to the dtype, a clamp), and for L1/L2 rho = 2u + lambda
    sqrt(n) u, the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019) for a float
    sum of n terms with independent roundings, lambda = 10 (torch's renorm, cleverhans' projection, is
    off by ~200u at n = 3x224x224; the worst-case bound n u would be 0.9 % there, too loose to tell eps
    from 1.01 eps). Each measured coordinate e_i then differs from d_i by at most u s_i (first order in
    u), by the standard model fl(a op b) = (a op b)(1 + delta), |delta| <= u:
    * pixel space: ``x_adv = fl(x + d)``: |e_i - d_i| <= u |x_adv_i|, so s_i = |x_adv_i|;
    * normalized: ``fl(z + d)`` adds u |w'_i|; the return to pixels ``fl(fl(w' std) + mean)`` adds
      u |w'_i| + u |x_adv_i| / std; the attack's centre ``fl(fl(x - mean) / std)`` is off the exact one
      by up to 2u |z_i| (two roundings). So s_i = 2 |w'_i| + |x_adv_i| / std_c + 2 |z_i|.
    Clamping into [0, 1] only moves a value towards the clean one, so it never adds.
    By the triangle inequality ``||measured||_p <= eps (1 + rho) + u ||s||_p``: the tolerance is
    ``rho eps + 1.001 u ||s||_p`` (the 0.1 % covers the O(u^2) terms) plus the float64 arithmetic
    (4 n 2^-53 relative) and ``extra_tol``. For the paper's SLD row (L1 eps 10, normalized, ImageNet
    mean/std) that is 0.062 at 3x224x224 and 0.0016 at 3x32x32, against 1.6e-3 and 3e-5 of rounding
    measured on uniform random images: an attack returning 1.01 eps (0.1 over) is caught at either size.
    ``clip``: the images must lie in [0, 1] (a few u of slack in normalized space, the round trip's).
    """
    if (mean is None) != (std is None):
        raise ValueError("measure_budget: give both mean and std (normalized units) or neither (pixel units)")
    total = int(x.shape[0])
    u = unit_roundoff(x_adv.dtype)
    flat = x_adv.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    values = flat[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
    slack = 4 * u if std is not None else 0.0
    outside = finite & ((flat < -slack) | (flat > 1 + slack)).any(dim=1) if clip else torch.zeros_like(finite)
    units = "normalized" if std is not None else "pixel"
    if eps is None or norm is None or not bool(finite.all()) or not total:
        return BudgetReport(None, None, eps, norm, units, ~finite, outside, (lo, hi), total)
    z, w_adv, std64 = _working(x, x_adv, mean, std)
    delta = w_adv - z
    n = delta[0].numel() if total else 0
    norms = lp_norms(delta, norm)
    scale = _rounding_scale(x_adv.double(), z, w_adv, std64)
    u64 = 2.0 ** -53
    rho = 2 * u if norm == "Linf" else 2 * u + NORM_LAMBDA * math.sqrt(n) * u
    tolerance = (rho * eps + 1.001 * u * lp_norms(scale, norm)
                 + 4 * n * u64 * (norms + lp_norms(w_adv.abs() + z.abs(), norm)) + float(extra_tol))
    return BudgetReport(norms, tolerance, float(eps), norm, units, ~finite, outside, (lo, hi), total)


def budget_violations(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str | None,
                      tol: float = 0.0, *, clip: bool = True, mean: torch.Tensor | None = None,
                      std: torch.Tensor | None = None) -> list[str]:
    """Human-readable list of what is wrong with pixel-space x_adv (empty when it respects the threat
    model, ``measure_budget``'s bound plus ``tol``). ``mean``/``std`` given: normalized units."""
    if x_adv.shape != x.shape:
        return [f"adversarial images have shape {tuple(x_adv.shape)}, clean images {tuple(x.shape)}"]
    return measure_budget(x, x_adv, eps, norm, clip=clip, mean=mean, std=std, extra_tol=tol).problems()


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norms: tuple[str, ...] = NORMS,
                       mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{norm: per-sample norm of the perturbation} in float64, in the units ``measure_budget`` measures:
    pixel, or normalized (``mean``/``std`` given)."""
    z, w_adv, _ = _working(x, x_adv, mean, std)
    delta = w_adv - z
    return {norm: lp_norms(delta, norm) for norm in norms}
