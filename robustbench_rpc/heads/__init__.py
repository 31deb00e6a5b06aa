"""Heads on a frozen backbone's tokens: a registry, the paper's convex heads, their certified solver.

``register_head(name)`` makes a head usable by name; ``BACKBONE+HEAD[@TAG][:CHECKPOINT]`` evaluates a
backbone with a trained head like any other model (see ``heads.model``); ``robustbench-rpc train-head``
trains one on cached backbone features (``heads.train``).
"""
from .base import HEADS, Head, get_head, list_heads, register_head
from .convex import BlockNuclear, Certificate, SquaredFrobenius, fista, svt
from . import linear, mlp, attention, gated_attention, mixer  # noqa: E402,F401  (register the built-in heads)
from .model import BackboneWithHead, is_head_spec, load_head_model, parse_head_spec

__all__ = ["HEADS", "BackboneWithHead", "BlockNuclear", "Certificate", "Head", "SquaredFrobenius", "fista",
           "get_head", "is_head_spec", "list_heads", "load_head_model", "parse_head_spec", "register_head", "svt"]
