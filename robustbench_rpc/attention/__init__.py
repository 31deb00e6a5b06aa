"""Attention variants as plug-ins: ``@register_attention(name)`` and ``patch_attention(model, name)``."""
from .base import (
    ATTENTIONS, AttentionReinitError, UnknownVariantArgumentError, attention_variant_params, check_variant_args,
    build_like, describe_attention, get_attention, list_attentions, patch_attention, register_attention,
    resolve_layers, set_fused, summarize_attention, variant_of,
)
from .fan import FANAttention
from .fan_rpc import FANRPCAttention
from .rpc import PrincipalAttentionPursuit, RPCAttention, RPCKeyScaleAttention, soft_threshold
from .scaled import ScaledAttention, ScaledSymmetricAttention
from .softmax import SoftmaxAttention
from .symmetric import SymmetricAttention

__all__ = [
    "ATTENTIONS", "AttentionReinitError", "FANAttention", "FANRPCAttention", "PrincipalAttentionPursuit",
    "RPCAttention", "RPCKeyScaleAttention", "ScaledAttention",
    "ScaledSymmetricAttention", "SoftmaxAttention", "SymmetricAttention", "UnknownVariantArgumentError",
    "attention_variant_params", "build_like", "check_variant_args", "describe_attention", "get_attention",
    "list_attentions",
    "patch_attention", "register_attention", "resolve_layers", "set_fused", "soft_threshold",
    "summarize_attention", "variant_of",
]
