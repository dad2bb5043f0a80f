"""Rotary position embeddings (half-split, "NeoX" layout).

Positions are absolute token indices within the sequence. Attention scores only
depend on the offset between a query's and a key's position, so absolute
positions are equivalent to restarting at every window as long as the cached
keys carry the positions they were written with (design decision, ours).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
  """Inverse frequencies ``theta ** (-2i / head_dim)`` for ``i < head_dim / 2``."""
  if head_dim % 2:
    raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
  return theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float, rope_dim: int | None = None) -> jax.Array:
  """Rotates ``x`` by its positions.

  Args:
    x: ``[B, T, H, K]`` queries or keys.
    positions: ``[T]`` (or ``[B, T]``) integer positions.
    theta: RoPE base.
    rope_dim: partial rotary: rotate only the first ``rope_dim`` (even)
      dimensions, half-split among themselves, with frequencies
      ``theta ** (-2i / rope_dim)``; the rest pass unchanged (Hugging Face's
      ``partial_rotary_factor``). None: all ``K``.

  Returns:
    The rotated array, same shape and dtype as ``x``; the rotation is computed
    in float32.
  """
  if rope_dim is not None and rope_dim < x.shape[-1]:
    rotated = apply_rope(x[..., :rope_dim], positions, theta=theta)
    return jnp.concatenate([rotated, x[..., rope_dim:]], axis=-1)
  head_dim = x.shape[-1]
  inv = rope_frequencies(head_dim, theta)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [..., T, K/2]
  if angles.ndim == 2:
    angles = angles[None]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
