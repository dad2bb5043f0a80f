"""Axis legend and array type aliases used across the model code.

Axis legend (one letter per axis, used in einsum strings and docstrings):

* ``b`` batch
* ``t`` time (tokens of the current window or sequence)
* ``s`` key/value positions of an attention cache (prefix plus window)
* ``d`` model (residual) width
* ``f`` MLP hidden width
* ``h`` heads
* ``k`` key / query head dimension (``Dk`` for GDN, ``head_dim`` for attention)
* ``v`` value head dimension (``Dv``)
* ``c`` channels of a short convolution
* ``n`` sleep passes
* ``w`` windows of ``L`` tokens

The aliases are jaxtyping annotations for documentation; they are not checked at
run time (no ``jaxtyped`` decorator), so they cost nothing under ``jit``.
"""
from __future__ import annotations

import jax
from jaxtyping import Array, Bool, Float, Int

Tokens = Int[Array, "b t"]
Positions = Int[Array, "t"]
Mask = Float[Array, "b t"]
Hidden = Float[Array, "b t d"]
Logits = Float[Array, "b t vocab"]
HeadsK = Float[Array, "b t h k"]
HeadsV = Float[Array, "b t h v"]
Gate = Float[Array, "b t h"]
GdnState = Float[Array, "b h k v"]
ConvState = Float[Array, "b conv c"]
KvCache = Float[Array, "b s h k"]
KvPositions = Int[Array, "s"]
AttnMask = Bool[Array, "t s"]
PRNGKey = jax.Array

__all__ = [
    "Array", "AttnMask", "ConvState", "Gate", "GdnState", "HeadsK", "HeadsV", "Hidden", "KvCache",
    "KvPositions", "Logits", "Mask", "PRNGKey", "Positions", "Tokens",
]
