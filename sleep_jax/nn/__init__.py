"""Layers of the hybrid model (Flax NNX), public building blocks for a model of your own.

``GatedDeltaNet`` (the fast-weight mixer, its state explicit) and ``Attention``
(causal RoPE attention over a window, a kept prefix or a decoding ring, with
``KVCache``) are what ``HybridLM`` is made of; ``sleep_jax.examples.own_model``
builds another sleepable model from ``Attention`` and ``ops.gated_delta_rule``
(see ``sleep_jax.protocol``).
"""
from sleep_jax.nn.attention import Attention, KVCache, attention_mask, dot_product_attention
from sleep_jax.nn.gated_deltanet import GatedDeltaNet, causal_conv
from sleep_jax.nn.mlp import SwiGLU
from sleep_jax.nn.norms import GatedRMSNorm, RMSNorm
from sleep_jax.nn.rope import apply_rope

__all__ = [
    "Attention", "GatedDeltaNet", "GatedRMSNorm", "KVCache", "RMSNorm", "SwiGLU", "apply_rope",
    "attention_mask", "causal_conv", "dot_product_attention",
]
