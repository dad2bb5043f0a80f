"""SwiGLU feed-forward block."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class SwiGLU(nnx.Module):
  """``down(silu(gate(x)) * up(x))`` without biases.

  Params are float32; matmuls run in ``dtype``.
  """

  def __init__(self, d_model: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.gate = nnx.Linear(d_model, hidden, **kw)
    self.up = nnx.Linear(d_model, hidden, **kw)
    self.down = nnx.Linear(hidden, d_model, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
