"""Threat-model arithmetic shared by every attack: per-sample norms, projection onto the budget, and the
validation of ``eps`` / ``norm`` options.

Budgets are measured in the attack's working space: pixel space (images in [0, 1]) by default, or the
model's normalized input ``(x - mean) / std`` (``space="normalized"``, the RPC paper's threat model).
Projection first maps the perturbation into the norm ball, then clamps the image into the valid box
(``Box``: [0, 1] in pixel units, [(0 - mean)/std, (1 - mean)/std] per channel in normalized units, or
no box at all with ``clip=False``); clamping only moves each value towards the clean image, so it never
increases any Lp norm and the result satisfies both constraints.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

NORMS = ("Linf", "L2", "L1")
SPACES = ("pixel", "normalized")
LABELS = ("true", "predicted")
_NORM_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "l1": "L1"}
# Absolute slack allowed when *checking* a budget (float32 rounding of x + delta - x).
BUDGET_TOL = 1e-5


def canonical_norm(norm: str) -> str:
    """'linf' / 'Linf' / 'inf' -> 'Linf' etc.; anything else raises ValueError naming the option."""
    if isinstance(norm, str):
        if norm in NORMS:
            return norm
        key = norm.strip().lower()
        if key in _NORM_ALIASES:
            return _NORM_ALIASES[key]
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


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


def project_delta(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Map a perturbation into the norm ball of radius eps (per sample)."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    if norm == "L2":
        n = lp_norms(delta, "L2").clamp_min(1e-12)
        return delta * _view(torch.clamp(eps / n, max=1.0), delta)
    if norm == "L1":
        return project_l1_ball(delta, eps)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str | None,
            box: Box | None = None) -> torch.Tensor:
    """Project x_adv onto {x + d : ||d||_norm <= eps} and then into ``box`` ([0, 1] by default).
    eps=None: only the box."""
    if eps is not None and norm is not None:
        x_adv = x + project_delta(x_adv - x, eps, norm)
    return (box or Box.unit()).clamp(x_adv)


def budget_violations(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str | None,
                      tol: float = BUDGET_TOL, *, clip: bool = True,
                      std: torch.Tensor | None = None) -> list[str]:
    """Human-readable list of what is wrong with pixel-space x_adv (empty when it respects the threat
    model). ``std`` given: the budget is measured in normalized units, ``(x_adv - x) / std``; ``clip``:
    the images must stay in [0, 1]."""
    problems = []
    if x_adv.shape != x.shape:
        return [f"adversarial images have shape {tuple(x_adv.shape)}, clean images {tuple(x.shape)}"]
    if not torch.isfinite(x_adv).all():
        problems.append("adversarial images contain NaN or inf")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if clip and (lo < 0.0 or hi > 1.0):
        problems.append(f"adversarial images leave [0, 1] (min {lo:.6g}, max {hi:.6g})")
    if eps is not None and norm is not None:
        worst = float(perturbation_norms(x, x_adv, norm, std).max()) if len(x) else 0.0
        if worst > eps + tol:
            where = "normalized" if std is not None else "pixel"
            problems.append(f"{norm} perturbation {worst:.6g} ({where} units) exceeds eps {eps:.6g} "
                            f"(+{tol:g} tolerance)")
    return problems


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: str,
                       std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample norm of x_adv - x in float64: in pixel units, or in normalized units given ``std``."""
    delta = x_adv.double() - x.double()
    if std is not None:
        delta = delta / std.double().to(delta.device)
    return lp_norms(delta, norm)
