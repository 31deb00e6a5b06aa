"""Attention variants as plug-ins: ``@register_attention(name)`` and ``patch_attention(model, name)``."""
from .base import (
    ATTENTIONS,
    attention_variant_params,
    build_like,
    describe_attention,
    get_attention,
    list_attentions,
    patch_attention,
    register_attention,
    resolve_layers,
    set_fused,
    summarize_attention,
    variant_of,
)
from .rpc import RPCAttention, RPCKeyScaleAttention, soft_threshold
from .scaled import ScaledAttention, ScaledSymmetricAttention
from .softmax import SoftmaxAttention
from .symmetric import SymmetricAttention

__all__ = [
    "ATTENTIONS", "RPCAttention", "RPCKeyScaleAttention", "ScaledAttention", "ScaledSymmetricAttention",
    "SoftmaxAttention", "SymmetricAttention",
    "attention_variant_params", "build_like", "describe_attention", "get_attention", "list_attentions",
    "patch_attention", "register_attention", "resolve_layers", "set_fused", "soft_threshold",
    "summarize_attention", "variant_of",
]
