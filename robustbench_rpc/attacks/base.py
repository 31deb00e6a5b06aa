"""The attack base class, the attack registry and ``get_attack``.

The base class owns the boring, error-prone parts so each attack file holds only its algorithm:

* eval mode during the attack and the exact restore of every module's previous training flag;
  parameters are frozen (requires_grad=False) during the attack, so no ``.grad`` is left behind;
* the device (the model's) and dtype handling; inputs are validated to be float images in [0, 1];
* a guard that fails fast when the model does not return a ``(B, num_classes)`` logits tensor;
* seeding: with ``seed`` set, every call forks the torch RNG (CPU and CUDA), seeds it, and restores the
  caller's RNG afterwards, so the same batch always gives the same adversarial images;
* the threat model, three parameters every attack takes:
  ``space`` ("pixel": eps in [0, 1] pixel units; "normalized": eps, step sizes and norms in the model's
  normalized input ``(x - mean) / std``, the mean/std read from the model's [0, 1] wrapper), ``clip``
  (True: stay in the valid image range; False: never clip, as the RPC paper's cleverhans calls) and
  ``labels`` ("true"; "predicted": attack the model's clean prediction, cleverhans' ``y=None``);
* a final projection onto the threat model (the valid box and the ``eps`` ball of ``norm``);
* optional splitting into ``batch_size`` chunks with a tqdm progress bar (only on a TTY).

Subclasses implement ``perturb(model, x, y) -> x_adv`` and declare ``norms`` (supported threat models)
and ``gradient_based`` (False for black-box attacks; the gradient-masking check relies on it).
"""
from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry, did_you_mean
from .budget import NORMS, Box, canonical_norm, project, validate_eps, validate_norm, validate_threat
from ..models.normalize import Normalized

ATTACKS: Registry[Callable[..., "Attack"]] = Registry("attack", name_attr="name")

_AMP_ALIASES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def register_attack(name: str, *, overwrite: bool = False):
    """Class (or factory) decorator: ``@register_attack("my-attack")``. The factory is called with the
    attack's parameters and must return a callable ``attack(model, images, labels) -> x_adv``."""

    return ATTACKS.register(name, overwrite=overwrite)


def list_attacks(pattern: str | None = None) -> list[str]:
    """Registered attack names (sorted), optionally filtered with a wildcard pattern."""
    return ATTACKS.names(pattern)


def attack_class(name: str) -> Callable[..., "Attack"]:
    return ATTACKS.get(name)


def is_gradient_based(name: str) -> bool:
    """Whether the registered attack ``name`` uses model gradients (True for unknown factories)."""
    return bool(getattr(ATTACKS.get(name), "gradient_based", True))


def get_attack(name: str, **params: Any) -> "Attack":
    """Build the registered attack ``name`` with ``params`` (e.g. ``eps=4/255, norm="Linf", steps=20``).

    Unknown names raise ``UnknownNameError`` with close matches; unknown parameters and invalid
    options (negative eps, an unsupported norm, ...) raise ``ValueError`` naming the option.
    """
    factory = ATTACKS.get(name)
    _check_params(name, factory, params)
    attack = factory(**params)
    if isinstance(attack, Attack):
        return attack
    if not callable(attack):
        raise TypeError(f"attack '{name}': its factory returned {type(attack).__name__}, not a callable "
                        "attack(model, images, labels) -> adversarial images")
    return PluginAttack(name, attack, factory, params)


class PluginAttack:
    """A registered attack that is not an :class:`Attack` (a plain function, as ``register_attack`` allows),
    carrying the threat model it was asked for.

    Why: ``attack_outcomes`` checks every attack's output against its ``eps`` / ``norm`` / ``space`` / ``clip``
    attributes; a plain function has none, so its images were only checked for [0, 1] and a plug-in returning
    images at 1.5x eps was stored as a valid evaluation. Here they are the parameters ``get_attack`` passed
    (the evaluation's), else the factory's defaults, else the callable's own attributes, else the project's
    defaults (Linf, pixel space, clipped); ``params`` records them, so the run's resolved parameters show
    them too. The call is the plug-in's own, unchanged."""

    def __init__(self, name: str, fn: Callable, factory: Callable, params: dict[str, Any]):
        try:
            sig = inspect.signature(factory).parameters.values()
        except (TypeError, ValueError):
            sig = []
        defaults = {p.name: p.default for p in sig if p.default is not inspect.Parameter.empty
                    and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        given = {**defaults, **params}

        def threat(key: str, fallback: Any) -> Any:
            value = given.get(key, getattr(fn, key, None))
            return fallback if value is None else value

        self.name, self.fn = name, fn
        eps = given.get("eps", getattr(fn, "eps", None))
        self.eps = None if eps is None else float(eps)
        self.norm = canonical_norm(threat("norm", "Linf"))
        self.space, self.clip, self.labels = validate_threat(threat("space", "pixel"), threat("clip", True),
                                                             threat("labels", "true"), name)
        self.gradient_based = bool(getattr(fn, "gradient_based", getattr(factory, "gradient_based", True)))
        self.batch_size = getattr(fn, "batch_size", None)
        self.params: dict[str, Any] = {**given, "eps": self.eps, "norm": self.norm, "space": self.space,
                                       "clip": self.clip}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(model, images, labels)

    def __getattr__(self, key: str) -> Any:  # anything else the plug-in exposes (its own state, helpers)
        if key == "fn":
            raise AttributeError(key)
        return getattr(self.fn, key)

    def __repr__(self) -> str:
        return f"PluginAttack({self.name!r}, eps={self.eps!r}, norm={self.norm!r})"


def _check_params(name: str, factory: Callable, params: dict) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = [p for p, v in sig.parameters.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    for key in params:
        if key not in known:
            hint = did_you_mean(key, known, cutoff=0.5)
            raise ValueError(f"attack '{name}' has no parameter '{key}'.{hint} "
                             f"Parameters: {', '.join(known)}")


def amp_dtype_of(value: Any) -> torch.dtype | None:
    """None | torch.bfloat16 | torch.float16, also accepting the strings 'bf16', 'fp16', ... ."""
    if value is None or value in (torch.bfloat16, torch.float16):
        return value
    if isinstance(value, str) and value.lower() in _AMP_ALIASES:
        return _AMP_ALIASES[value.lower()]
    if isinstance(value, str) and value.lower() in ("none", "fp32", "float32"):
        return None
    raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16; got {value!r}")


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Fork the global torch RNG (CPU and the CUDA devices), seed it, and restore it on exit."""
    if seed is None:
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed) % (2**63))
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad during the attack (no .grad pollution, no wasted backward work);
    each parameter's flag is restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class ModelOutputError(ValueError):
    """The model does not return a (B, num_classes) logits tensor."""


class LogitsGuard(nn.Module):
    """Wraps a model and checks (shape only, no host sync) that it returns (B, C) logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        check_logits(out, x.shape[0])
        return out


class ConnectedInput(nn.Module):
    """The model, with its logits always part of an autograd graph that reaches the input.

    Why: the reference libraries (pyautoattack's APGD/APGD-T/FAB, torchattacks) call
    ``torch.autograd.grad(loss, x)`` and die with "element 0 of tensors does not require grad" on a model
    whose forward cuts the graph (a hard threshold ``(x > 0.5).float()``, ``.detach()``, an argmax of the
    input): exactly the gradient-masking defenses an evaluation must report, not crash on. Under autograd the
    logits gain ``0 * x[:, :1]``: the same values (adding +0.0), the same input gradient where the graph reaches
    the input, and exactly zero where it does not (as our own attacks take it, :meth:`GradientAttack.input_grad`);
    the trust checks flag such a model (``differentiability``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            out = out + x.flatten(1)[:, :1].to(out.dtype) * 0
        return out


def check_logits(out: Any, batch: int) -> None:
    if not isinstance(out, torch.Tensor):
        hint = " (it has .logits: return those)" if hasattr(out, "logits") else ""
        raise ModelOutputError(
            f"the model must return a logits tensor of shape (B, num_classes); it returned "
            f"{type(out).__name__}{hint}. Wrap it so that forward returns only the logits.")
    if out.dim() != 2 or out.shape[0] != batch or out.shape[1] < 2:
        raise ModelOutputError(
            f"the model must return logits of shape (B, num_classes) with B={batch} and num_classes >= 2; "
            f"got shape {tuple(out.shape)}")
    if not out.is_floating_point():
        raise ModelOutputError(f"the model must return floating-point logits, got dtype {out.dtype}")


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Losses that attacks *maximize*: 'ce' (cross-entropy) or 'margin' (best other logit - true logit)."""
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return other - true
    raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class NormalizationError(ValueError):
    """``space="normalized"`` was asked of a model that does not say its mean/std."""


def normalization_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the [0, 1] wrapper (``models.Normalized``) at or under ``model`` (through ``.model``
    attributes of wrappers such as EOT or class masking), each shaped (1, C, 1, 1)."""
    m, seen = model, set()
    while isinstance(m, nn.Module) and id(m) not in seen:
        if isinstance(m, Normalized):
            return m.mean, m.std
        seen.add(id(m))
        m = getattr(m, "model", None)
    raise NormalizationError(
        f"space='normalized' measures eps in the model's normalized input, but {type(model).__name__} does not "
        "carry its mean/std: wrap it as robustbench_rpc.models.Normalized(model, mean, std) (load_model does "
        "this) or use space='pixel'")


class FromNormalized(nn.Module):
    """``z -> model(z * std + mean)``: a [0, 1]-input model seen from its normalized input (used when the
    wrapper is not the outermost module; otherwise the wrapped network is called directly)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std.to(z.dtype) + self.mean.to(z.dtype))


class Attack:
    """Base class: ``attack(model, images, labels) -> adversarial images`` (same shape, pixel space).

    Common parameters: ``eps`` (in ``space`` units), ``norm`` ('Linf' | 'L2' | 'L1', restricted per
    attack by ``norms``), ``space`` ('pixel' | 'normalized'), ``clip`` (keep images in [0, 1]),
    ``labels`` ('true' | 'predicted'), ``seed`` (None: use the ambient RNG), ``batch_size`` (None: the
    whole input at once), ``progress`` (None: a bar only on a TTY and for more than one chunk).

    During ``perturb`` the attack works in its space: ``x`` is the (normalized) input, ``self.box`` the
    valid range there (``self.box.clamp``), and the model maps that input to logits.
    """

    name: ClassVar[str] = "attack"
    gradient_based: ClassVar[bool] = True
    #: what the model is checked to return during the attack ((B, C) logits; segmentation attacks: per pixel)
    guard_class: ClassVar[type[nn.Module]] = LogitsGuard
    norms: ClassVar[tuple[str, ...]] = NORMS
    eps_required: ClassVar[bool] = True

    def __init__(self, *, eps: float | None = None, norm: str = "Linf", space: str = "pixel", clip: bool = True,
                 labels: str = "true", seed: int | None = None, batch_size: int | None = None,
                 progress: bool | None = None):
        self.eps = validate_eps(eps, self.name, required=self.eps_required)
        self.norm = validate_norm(norm, self.norms, self.name)
        self.space, self.clip, self.labels = validate_threat(space, clip, labels, self.name)
        self.box = Box.unit() if self.clip else Box.none()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed of attack '{self.name}' must be an int or None, got {seed!r}")
        self.seed = seed
        self.batch_size = self._positive_int("batch_size", batch_size, allow_none=True)
        self.progress = progress
        self.params: dict[str, Any] = {"eps": self.eps, "norm": self.norm, "space": self.space,
                                       "clip": self.clip, "labels": self.labels, "seed": seed}

    # -- helpers for subclasses -------------------------------------------------------------------------
    def _record(self, **params: Any) -> None:
        """Store attack-specific parameters as attributes and in ``params`` (used by ``spec``)."""
        for key, value in params.items():
            setattr(self, key, value)
        self.params.update(params)

    def _require_pixel_box(self) -> None:
        """Attacks that run a reference library (AutoAttack, APGD, Square) work on [0, 1] images only."""
        if self.space != "pixel" or not self.clip:
            raise ValueError(f"attack '{self.name}' runs the reference library, which works on [0, 1] images: "
                             "it supports only space='pixel' and clip=True")

    def _positive_int(self, key: str, value: Any, *, allow_none: bool = False, minimum: int = 1):
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key} of attack '{self.name}' must be an int >= {minimum}, got {value!r}")
        return value

    def _positive_float(self, key: str, value: Any, *, allow_zero: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (value >= 0 if allow_zero else value > 0) or value != value:
            raise ValueError(f"{key} of attack '{self.name}' must be a {'non-negative' if allow_zero else 'positive'}"
                             f" number, got {value!r}")
        return float(value)

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: enough to rebuild the attack with ``get_attack``."""
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({inner})"

    # -- the algorithm ---------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial images for one chunk. ``model`` is in eval mode, on x's device, and
        guarded to return (B, C) logits. The base class projects the result onto the budget."""
        raise NotImplementedError

    # -- the call --------------------------------------------------------------------------------------
    def working_space(self, model: nn.Module, device: torch.device):
        """(model on the working input, to_working, to_pixel, box) for this attack's ``space``/``clip``."""
        if self.space == "pixel":
            self.box = Box.unit() if self.clip else Box.none()
            return model, (lambda t: t), (lambda t: t), self.box

        mean, std = (t.to(device) for t in normalization_of(model))
        inner = model.model if isinstance(model, Normalized) else FromNormalized(model, mean, std)
        self.box = Box.of_normalized(mean, std) if self.clip else Box.none()
        return inner, (lambda t: (t - mean) / std), (lambda t: t * std + mean), self.box

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, y = self._validate_inputs(images, labels)
        device = model_device(model, x.device)
        x, y = x.to(device), y.to(device)
        inner, to_working, to_pixel, box = self.working_space(model, device)
        guard = self.guard_class(inner)
        x = to_working(x)
        n = x.shape[0]
        size = self.batch_size or max(n, 1)
        starts = list(range(0, n, size))
        show = self.progress if self.progress is not None else (_is_tty() and len(starts) > 1)
        outs = []
        grad_mode = torch.enable_grad() if self.gradient_based else torch.no_grad()
        with eval_mode(model), frozen(model), seeded(self.seed, device), grad_mode:
            bar = _progress(total=len(starts), desc=self.name, disable=not show)
            try:
                for s in starts:
                    xc, yc = x[s:s + size], y[s:s + size]
                    if self.labels == "predicted":  # cleverhans' y=None: the clean prediction, computed once
                        with torch.no_grad():
                            yc = guard(xc).argmax(dim=1)
                    adv = self.perturb(guard, xc, yc).detach().to(xc.dtype)
                    if adv.shape != xc.shape:
                        raise RuntimeError(f"attack '{self.name}' returned shape {tuple(adv.shape)}, "
                                           f"expected {tuple(xc.shape)}")
                    outs.append(project(xc, adv, self.eps, self.norm, box))
                    bar.update(1)
            finally:
                bar.close()
        out = to_pixel(torch.cat(outs) if outs else x.clone())
        if self.clip:  # the round trip from normalized units may leave [0, 1] by a rounding error
            out = out.clamp(0.0, 1.0)
        return out.to(images.device)

    def _validate_inputs(self, images: torch.Tensor, labels: torch.Tensor):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError("images must be a floating-point tensor in [0, 1] of shape (B, C, H, W)")
        if images.dim() < 2:
            raise ValueError(f"images must have a batch dimension, got shape {tuple(images.shape)}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise TypeError("labels must be integer class indices")
        if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise ValueError("images must lie in [0, 1] (models normalize inside; eps is in pixel units)")
        x = images.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x, labels.detach().long()


class GradientAttack(Attack):
    """Adds the input-gradient helper with optional autocast (``amp_dtype``)."""

    amp_dtype: torch.dtype | None = None

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def input_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                   reduction: str = "mean", return_logits: bool = False):
        """Gradient of the (batch-mean by default) loss w.r.t. the input; the model's parameters
        receive no gradient. ``return_logits``: also the logits at ``x`` (no extra forward)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with self.autocast(x.device):
                logits = model(x)
            value = per_sample_loss(logits, y, loss)
            value = value.mean() if reduction == "mean" else value.sum()
            if not value.requires_grad:  # the model cut the graph (e.g. .detach()): no signal at all
                grad = None
            else:
                (grad,) = torch.autograd.grad(value, x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad.detach()
        return (grad, logits.detach()) if return_logits else grad


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, leave=False)
