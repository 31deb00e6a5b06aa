"""``transfer``: adversarial images crafted on a surrogate model with a gradient attack, evaluated on the target.

Source: Papernot, McDaniel & Goodfellow, "Transferability in Machine Learning", 2016 (arXiv:1605.07277);
as an adaptive evaluation of defenses whose own gradients are useless, Athalye et al., ICML 2018, and
Tramer, Carlini, Brendel & Madry, "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020
(arXiv:2002.08347): attack a differentiable model close to the defense, keep what transfers.

``surrogate``: ``"MODEL[:CHECKPOINT]"`` (loaded with ``robustbench_rpc.models.load_model``, e.g.
``"symvit_micro_patch4_32:packaged"``), ``"self:no-pap"`` (the target's own weights with PAP off: every
module offering ``without_pap()``, i.e. RPC attention, becomes plain symmetric attention; a model without
PAP is its own surrogate, so this is then a white-box attack), or an ``nn.Module`` (API only).
``base`` / ``base_args``: the gradient attack run on the surrogate (``pgd`` default, ``apgd-ce``, ...),
under this attack's threat model. The target only classifies: its gradients are never used
(``gradient_based = False``, so the gradient-masking check compares it with the white-box attacks). The
returned images are projected onto the budget and ``attack_outcomes`` verifies them on the target, as for
every attack. ``early_stop`` (robust accuracy): images the target already misclassifies are not attacked;
the base itself never stops early on the surrogate (a barely-fooled surrogate transfers worse).

Surrogates are loaded once per process and device (``self:no-pap`` once per target, rebuilt when the
target's weights change).
"""
from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
import torch.nn as nn

from ..base import Attack, eval_mode, model_device, normalization_of, register_attack, NormalizationError
from .inner import build_base, resolve_base, resolved_args
from ...models import CheckpointError, list_models, load_model, resolve_checkpoint, split_spec
from ...registry import UnknownNameError

SELF_NO_PAP = "self:no-pap"
_LOADED: dict[tuple[str, str], nn.Module] = {}
_NO_PAP: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()


def without_pap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose modules offering ``without_pap()`` are replaced by what it returns (RPC
    attention -> symmetric attention, same weights); also the replaced module paths."""
    twin = copy.deepcopy(model)
    replaced = []
    for path, module in list(twin.named_modules()):
        if not path or not callable(getattr(module, "without_pap", None)):
            continue
        parent_path, _, leaf = path.rpartition(".")
        parent = twin.get_submodule(parent_path) if parent_path else twin
        setattr(parent, leaf, module.without_pap())
        replaced.append(path)
    return twin.eval(), replaced


def _check_spec(surrogate: Any) -> None:
    """Refuse a surrogate name that cannot load, before any compute (the file is read on first use)."""
    if isinstance(surrogate, nn.Module) or surrogate == SELF_NO_PAP:
        return
    if not isinstance(surrogate, str) or not surrogate:
        raise ValueError("attack 'transfer' needs surrogate: 'MODEL[:CHECKPOINT]', 'self:no-pap' or a module, "
                         f"got {surrogate!r}")
    if surrogate.startswith("self:"):
        raise ValueError(f"surrogate of attack 'transfer': unknown form {surrogate!r}; the target's own form is "
                         f"{SELF_NO_PAP!r}")

    name, checkpoint = split_spec(surrogate)
    try:
        if "+" not in name:  # BACKBONE+HEAD forms are checked by their loader when first used
            _known_model(name)
            resolve_checkpoint(name, checkpoint)
    except (KeyError, CheckpointError) as err:
        raise ValueError(f"surrogate {surrogate!r} of attack 'transfer': {err}") from None


def _known_model(name: str) -> None:
    import timm

    if name.startswith("timm:"):
        if not timm.is_model(name[5:]):
            raise UnknownNameError("timm model", name[5:], timm.list_models())
    elif name not in list_models():
        raise UnknownNameError("model", name, list_models())


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((id(p), p._version) for p in model.parameters())


def load_surrogate(surrogate: Any, target: nn.Module) -> nn.Module:
    """The surrogate module for ``target`` (on its device), cached as the module docstring says."""
    device = model_device(target, torch.device("cpu"))
    if isinstance(surrogate, nn.Module):
        return surrogate
    if surrogate == SELF_NO_PAP:
        hit = _NO_PAP.get(target)
        if hit is not None and hit[0] == _fingerprint(target):
            return hit[1]
        twin, _ = without_pap(target)
        _NO_PAP[target] = (_fingerprint(target), twin)
        return twin
    key = (surrogate, str(device))
    if key not in _LOADED:
        if len(_LOADED) >= 2:  # a run uses one or two surrogates; do not hoard models
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_model(surrogate, device=str(device)).eval()
    return _LOADED[key]


@register_attack("transfer")
class Transfer(Attack):
    gradient_based = False  # the target's gradients are never used
    norms = ("Linf", "L2", "L1")

    def __init__(self, eps: float | None = None, norm: str = "Linf", surrogate: Any = SELF_NO_PAP,
                 base: str = "pgd", base_args: dict[str, Any] | None = None, early_stop: bool = False,
                 space: str = "pixel", clip: bool = True, labels: str = "true", seed: int | None = None,
                 batch_size: int | None = None, progress: bool | None = None):
        super().__init__(eps=eps, norm=norm, space=space, clip=clip, labels=labels, seed=seed,
                         batch_size=batch_size, progress=progress)
        _check_spec(surrogate)
        name, args = resolve_base("transfer", base, base_args)
        if args.get("early_stop"):
            raise ValueError("base_args of attack 'transfer' may not set early_stop: the base attacks the surrogate "
                             "to the end (early_stop of 'transfer' skips what the target already misclassifies)")
        self.inner = build_base("transfer", name, args, {"eps": eps, "norm": norm, "space": space, "clip": clip,
                                                         "batch_size": batch_size, "progress": False})
        self._record(surrogate=surrogate, base=base, base_args=resolved_args(self.inner), early_stop=bool(early_stop))
        self.surrogate_fooled: torch.Tensor | None = None  # set by each call (classification): the returned images
        if early_stop and getattr(self.inner, "task", "") == "segmentation":
            raise ValueError("early_stop of attack 'transfer' skips images the target already misclassifies, which "
                             f"has no meaning per pixel: a segmentation base ('{name}') runs without it")

    def _validate_inputs(self, images, labels):
        return self.inner._validate_inputs(images, labels)  # a segmentation base takes (B, H, W) masks

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, y = self._validate_inputs(images, labels)
        device = model_device(model, x.device)
        x, y = x.to(device), y.to(device)
        surrogate = load_surrogate(self.surrogate, model)
        self._same_normalization(model, surrogate)
        with eval_mode(model), torch.no_grad():
            pred = torch.cat([model(c).argmax(1) for c in x.split(self.batch_size or max(len(x), 1))]) \
                if len(x) else y
        if self.labels == "predicted":
            y = pred
        todo = (pred == y).nonzero().squeeze(1) if self.early_stop else torch.arange(len(x), device=device)
        adv = x.clone()
        if todo.numel():
            self.inner.seed = self.seed  # the base seeds (and restores) the RNG for its call
            adv[todo] = self.inner(surrogate, x[todo], y[todo]).to(device, x.dtype)
        if getattr(self.inner, "task", "") != "segmentation" and len(adv):
            # whether each returned image fools the surrogate: the transfer-failure indicator (attacks/indicators.py)
            with eval_mode(surrogate), torch.no_grad():
                self.surrogate_fooled = torch.cat([surrogate(c).argmax(1) for c in adv.split(
                    self.batch_size or len(adv))]).ne(y).cpu()
        return adv.to(images.device)

    def _same_normalization(self, model: nn.Module, surrogate: nn.Module) -> None:
        """eps in normalized units means the target's; a surrogate with other mean/std would measure another."""
        if self.space != "normalized":
            return
        try:
            mt, st = normalization_of(model)
            ms, ss = normalization_of(surrogate)
        except NormalizationError as err:
            raise NormalizationError(f"attack 'transfer' with space='normalized': {err}") from None
        if not (torch.equal(mt.cpu(), ms.cpu()) and torch.equal(st.cpu(), ss.cpu())):
            raise ValueError("attack 'transfer' with space='normalized' needs a surrogate with the target's mean/std "
                             f"(target {mt.flatten().tolist()}/{st.flatten().tolist()}, surrogate "
                             f"{ms.flatten().tolist()}/{ss.flatten().tolist()}); use space='pixel'")
