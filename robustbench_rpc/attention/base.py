"""Attention-variant registry and the machinery to swap attention inside any timm VisionTransformer.

A variant is one class decorated with ``@register_attention(name)``. Its constructor follows timm's
attention contract ``(dim, num_heads=8, qkv_bias=False, ..., attn_drop=0., proj_drop=0., **variant_kwargs)``
so it can be passed as ``attn_layer`` to timm's ``Block``, and ``patch_attention`` can build it from an
existing attention module, keeping every weight whose name and shape match.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..registry import Registry, did_you_mean

ATTENTIONS: Registry[type[nn.Module]] = Registry("attention variant", name_attr="variant_name")


def register_attention(name: str):
    """Class decorator: make an attention variant usable by name everywhere (API, suites, CLI)."""
    return ATTENTIONS.register(name)


def list_attentions(pattern: str | None = None) -> list[str]:
    return ATTENTIONS.names(pattern)


def get_attention(name: str) -> type[nn.Module]:
    return ATTENTIONS.get(name)


def variant_of(module: nn.Module) -> str:
    """Registered name of an attention module ('softmax' for timm's own Attention)."""
    name = getattr(type(module), "variant_name", None)
    if name is not None:
        return name
    from timm.layers import Attention as TimmAttention

    if isinstance(module, TimmAttention):
        return "softmax"
    return type(module).__name__


def attention_variant_params(module: nn.Module) -> dict[str, Any]:
    """The variant's own hyper-parameters (what makes two models with equal weights differ)."""
    getter = getattr(module, "variant_params", None)
    return dict(getter()) if callable(getter) else {}


def _constructor_args(attn: nn.Module) -> dict[str, Any]:
    """Read timm's attention constructor arguments back off a built module (a module whose projections are
    not timm's ``qkv``, e.g. FAN's ``q`` + ``kv``, says them itself: ``constructor_args()``)."""
    own = getattr(attn, "constructor_args", None)
    if callable(own):
        return dict(own())
    for attr in ("qkv", "proj", "num_heads"):
        if not hasattr(attn, attr):
            raise TypeError(
                f"cannot patch attention module of type {type(attn).__name__}: it lacks '{attr}'; "
                "patch_attention supports timm-style attention (qkv, proj, num_heads)"
            )
    args: dict[str, Any] = dict(
        dim=attn.qkv.in_features,
        num_heads=attn.num_heads,
        qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None,
        attn_drop=getattr(getattr(attn, "attn_drop", None), "p", 0.0),
        proj_drop=getattr(getattr(attn, "proj_drop", None), "p", 0.0),
    )
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None and not isinstance(q_norm, nn.Identity):
        args.update(qk_norm=True, norm_layer=type(q_norm))
    return args


def resolve_layers(layers: str | int | Sequence[int] | None, depth: int) -> list[int]:
    """'all' | 'first' | 'last' | 'none' | int | list of block indices (negative allowed) -> sorted indices."""
    if layers is None or layers == "all":
        return list(range(depth))
    if layers == "none":
        return []
    if layers == "first":
        return [0]
    if layers == "last":
        return [depth - 1]
    if isinstance(layers, str):
        try:
            layers = [int(p) for p in layers.replace(" ", "").split(",") if p]
        except ValueError:
            raise ValueError(
                f"layers must be 'all', 'first', 'last', 'none' or block indices like '0,3', got {layers!r}"
            ) from None
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for i in layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"layer index {i} out of range for a model with {depth} blocks")
        out.append(j)
    return sorted(set(out))


def _blocks(model: nn.Module) -> nn.Sequential:
    inner = getattr(model, "model", model)  # unwrap the [0,1]-input normalizing wrapper
    blocks = getattr(inner, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(inner).__name__} has no 'blocks': patch_attention needs a timm VisionTransformer")
    return blocks


def num_tokens_of(model: nn.Module) -> int:
    inner = getattr(model, "model", model)
    n = inner.patch_embed.num_patches
    return n + (0 if getattr(inner, "no_embed_class", False) else getattr(inner, "num_prefix_tokens", 1))


class UnknownVariantArgumentError(TypeError):
    """A keyword the attention variant does not take (variants swallow unknown keywords, so it is checked)."""


class AttentionReinitError(ValueError):
    """Swapping attention would re-initialise trained weights (shapes differ); names the parameters."""


def variant_arg_names(cls: type) -> set[str]:
    """Keyword parameters a variant accepts: its constructor and the bases it forwards ``**kwargs`` to (a
    ``**_`` catch-all swallows, so the chain ends there)."""
    import inspect

    names: set[str] = set()
    for c in cls.__mro__:
        if c in (nn.Module, object):
            break
        if "__init__" not in vars(c):
            continue
        params = inspect.signature(c.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        var = [p for p in params.values() if p.kind is p.VAR_KEYWORD]
        if not var or var[0].name == "_":  # no **kwargs, or **_ (swallowed): the chain ends here
            break
    return names - {"dim"}


def check_variant_args(variant: str | type, args: Iterable[str]) -> None:
    """Raise :class:`UnknownVariantArgumentError` (with did-you-mean) for a name ``variant`` does not take.
    One check for the API (``patch_attention``, ``build_like``) and the CLI (``--attention-arg``)."""
    cls = ATTENTIONS.get(variant) if isinstance(variant, str) else variant
    label = variant if isinstance(variant, str) else getattr(cls, "variant_name", cls.__name__)
    names = variant_arg_names(cls)
    for key in args:
        if key not in names:
            hint = did_you_mean(key, names, cutoff=0.5)
            err = UnknownVariantArgumentError(f"attention variant '{label}' has no parameter '{key}'.{hint} "
                                              f"Parameters: {', '.join(sorted(names))}")
            err.key = key
            raise err


def _build(old: nn.Module, variant: str, kwargs: dict[str, Any]) -> tuple[nn.Module, list[str]]:
    """The new module with old's weights copied where name and shape match, and the old parameters/buffers
    that could not be kept (``name (old shape -> new shape)``, or ``name (dropped)``)."""
    cls = ATTENTIONS.get(variant)
    args = _constructor_args(old)
    args.update(kwargs)
    new = cls(**args)
    old_state = old.state_dict()
    new_state = new.state_dict()
    keep = {k: v for k, v in old_state.items() if k in new_state and new_state[k].shape == v.shape}
    lost = [f"{k} ({'x'.join(map(str, v.shape))} -> {'x'.join(map(str, new_state[k].shape))})" if k in new_state
            else f"{k} (dropped)" for k, v in old_state.items() if k not in keep]
    new.load_state_dict(keep, strict=False)
    ref = next(old.parameters(), None)
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    return new, lost


def _reinit_error(variant: str, lost: list[str]) -> AttentionReinitError:
    shown = ", ".join(lost[:4]) + (f" ... ({len(lost)} in all)" if len(lost) > 4 else "")
    return AttentionReinitError(
        f"attention '{variant}' cannot keep these weights (shapes differ), they would be re-initialised: {shown}; "
        f"the result would not be the trained model. Pass allow_reinit=True (CLI: --attention-reinit) to evaluate "
        f"it anyway (recorded in the model info and manifest)")


def build_like(old: nn.Module, variant: str, *, allow_reinit: bool = False, **kwargs: Any) -> nn.Module:
    """A new ``variant`` module shaped like ``old``, with old's weights copied where name and shape match.
    Weights that cannot be kept raise :class:`AttentionReinitError` unless ``allow_reinit``; unknown
    keywords raise :class:`UnknownVariantArgumentError`."""
    check_variant_args(variant, kwargs)
    new, lost = _build(old, variant, kwargs)
    if lost and not allow_reinit:
        raise _reinit_error(variant, lost)
    return new


def patch_attention(
    model: nn.Module,
    variant: str,
    layers: str | int | Iterable[int] | None = "all",
    *,
    allow_reinit: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Swap the attention of the chosen blocks of a timm VisionTransformer for ``variant`` (in place).

    Weights are kept where names and shapes match (e.g. symmetric -> rpc keeps everything). Weights that
    cannot be kept (softmax -> symmetric: the 3*dim qkv does not fit the 2*dim one) raise
    :class:`AttentionReinitError` naming them, before anything is changed, unless ``allow_reinit=True``;
    then the re-initialised parameters are listed in ``model.attention_reinit``. Unknown variant keywords
    raise :class:`UnknownVariantArgumentError` with close matches. Variants that need the token count
    (``scaled``) get it from the model. Returns the model.
    """
    cls = ATTENTIONS.get(variant)
    check_variant_args(variant, kwargs)
    blocks = _blocks(model)
    idx = resolve_layers(layers if not isinstance(layers, (list, tuple, range)) else list(layers), len(blocks))
    if getattr(cls, "needs_num_tokens", False) and "num_tokens" not in kwargs:
        kwargs["num_tokens"] = num_tokens_of(model)
    built, lost = {}, []
    for i in idx:  # build all first: a refusal leaves the model untouched
        built[i], lost_i = _build(blocks[i].attn, variant, kwargs)
        lost += [f"blocks.{i}.attn.{k}" for k in lost_i]
    if lost and not allow_reinit:
        raise _reinit_error(variant, lost)
    for i, new in built.items():
        blocks[i].attn = new
    if lost:
        inner = getattr(model, "model", model)
        inner.attention_reinit = list(getattr(inner, "attention_reinit", [])) + [k.split(" (")[0] for k in lost]
        if inner is not model:
            model.attention_reinit = inner.attention_reinit
    return model


def set_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every registered attention module between the fused SDPA path and the explicit one."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = bool(fused)
    return model


def describe_attention(model: nn.Module) -> list[dict[str, Any]]:
    """Per block: variant name and its parameters (for model tables, keys and manifests)."""
    return [
        {"block": i, "variant": variant_of(b.attn), **attention_variant_params(b.attn)}
        for i, b in enumerate(_blocks(model))
    ]


def summarize_attention(model: nn.Module) -> dict[str, Any]:
    """Compact description: {'variant': ..., 'layers': [...], params...} grouped by variant."""
    per_block = describe_attention(model)
    groups: dict[str, dict[str, Any]] = {}
    for row in per_block:
        key = repr({k: v for k, v in row.items() if k != "block"})
        g = groups.setdefault(key, {k: v for k, v in row.items() if k != "block"} | {"layers": []})
        g["layers"].append(row["block"])
    return {"blocks": len(per_block), "groups": list(groups.values())}


def _sdpa_or_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool,
                      dropout_p: float) -> torch.Tensor:
    """softmax(q k^T * scale) v through fused SDPA, or explicitly (for diagnostics and reference)."""
    if fused:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    if dropout_p:
        attn = torch.nn.functional.dropout(attn, p=dropout_p)
    return attn @ v
