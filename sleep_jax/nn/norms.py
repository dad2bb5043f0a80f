"""RMSNorm and the gated RMSNorm used on the Gated DeltaNet output.

Statistics are computed in float32 whatever the compute dtype; the result is
returned in the input's dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
  """``x / sqrt(mean(x**2, -1) + eps)`` computed in float32, returned in float32."""
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
  """Root-mean-square norm over the last axis with a learned scale (init 1).

  With ``zero_centered`` the parameter is stored as an offset from one
  (``y = norm(x) * (1 + scale)``, init 0; Qwen3-Next's convention): the same
  function at initialisation, weight decay pulls the gain to one, not zero.

  Attributes:
    scale: ``[features]`` float32 parameter (the gain, or its offset from one).
    eps: numerical floor inside the square root.
    zero_centered: the gain is ``1 + scale``.
  """

  def __init__(self, features: int, *, eps: float = 1e-6, zero_centered: bool = False,
               rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init; accepted for a uniform constructor signature
    init = jnp.zeros if zero_centered else jnp.ones
    self.scale = nnx.Param(init((features,), jnp.float32))
    self.eps = eps
    self.zero_centered = zero_centered

  def __call__(self, x: jax.Array) -> jax.Array:
    gain = 1.0 + self.scale[...] if self.zero_centered else self.scale[...]
    return (rms_normalize(x, self.eps) * gain).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
  """``RMSNorm(x) * silu(gate)``, fla's output gate of Gated DeltaNet.

  Normalises over the last axis (one head's value dimension), so heads are
  normalised independently.
  """

  def __init__(self, features: int, *, eps: float = 1e-6, rngs: nnx.Rngs | None = None):
    del rngs
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
    y = rms_normalize(x, self.eps) * self.scale[...] * jax.nn.silu(gate.astype(jnp.float32))
    return y.astype(x.dtype)
