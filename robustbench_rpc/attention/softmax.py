"""``softmax``: standard asymmetric attention softmax(QK^T / sqrt(d)) V — timm's own module, registered."""
from timm.layers import Attention

from .base import register_attention

SoftmaxAttention = register_attention("softmax")(Attention)
# declared static for model_dynamics (``adaptive_protocol``), set on timm's class as the registration does
SoftmaxAttention.dynamic = False
SoftmaxAttention.dynamic_why = "one attention pass per forward (no optimization loop)"
