"""Per-token reference of the gated delta rule: the specification.

Axis legend: ``b`` batch, ``t`` time, ``h`` heads, ``k`` key/query head dim
(``Dk``), ``v`` value head dim (``Dv``).

Per head, with state ``S`` of shape ``[Dk, Dv]`` held in float32, for each
token ``t``::

    S   <- exp(log_alpha_t) * S                       # forget (decay)
    v^  <- S^T k_t                                    # what memory predicts for k_t
    S   <- S + k_t (beta_t * (v_t - v^))^T            # delta-rule write of the error
    o_t <- S^T (scale * q_t)                          # read with the query

equivalently ``S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t k_t v_t^T`` in the
``[Dk, Dv]`` orientation. ``scale`` defaults to ``Dk ** -0.5``. Everything is
computed in float32 at highest matmul precision; ``o`` is returned in ``v``'s
dtype and the final state in float32.

This is a ``lax.scan`` over time with a ``jax.checkpoint``-ed step: on CPU the
scan's backward is ~3x faster with the step rematerialised (ENV.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def gated_delta_step_reference(q, k, v, log_alpha, beta, state, *, scale=None):
  """One token of the gated delta rule.

  Args:
    q: ``[B, H, Dk]`` query.
    k: ``[B, H, Dk]`` key (L2-normalised by the caller).
    v: ``[B, H, Dv]`` value.
    log_alpha: ``[B, H]`` log forget gate, ``<= 0``.
    beta: ``[B, H]`` write strength in ``(0, 1)``.
    state: ``[B, H, Dk, Dv]`` float32.
    scale: query scale; ``None`` means ``Dk ** -0.5``.

  Returns:
    ``(o, new_state)``: ``o`` is ``[B, H, Dv]`` in ``v``'s dtype, ``new_state``
    float32 ``[B, H, Dk, Dv]``.
  """
  out_dtype = v.dtype
  dk = q.shape[-1]
  scale = dk ** -0.5 if scale is None else scale
  f32 = jnp.float32
  q, k, v = q.astype(f32), k.astype(f32), v.astype(f32)
  log_alpha, beta = log_alpha.astype(f32), beta.astype(f32)
  s = state.astype(f32) * jnp.exp(log_alpha)[..., None, None]
  v_hat = jnp.einsum("bhkv,bhk->bhv", s, k, precision=_HI)
  delta = beta[..., None] * (v - v_hat)
  s = s + jnp.einsum("bhk,bhv->bhkv", k, delta, precision=_HI)
  o = jnp.einsum("bhkv,bhk->bhv", s, q * scale, precision=_HI)
  return o.astype(out_dtype), s


def gated_delta_rule_reference(q, k, v, log_alpha, beta, *, initial_state=None, scale=None,
                               chunk_size=None):
  """Gated delta rule over a sequence, token by token (the oracle).

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, T, H, Dk]``.
    v: ``[B, T, H, Dv]``.
    log_alpha: ``[B, T, H]``, ``<= 0``.
    beta: ``[B, T, H]``.
    initial_state: ``[B, H, Dk, Dv]`` float32, or ``None`` for zeros.
    scale: query scale, default ``Dk ** -0.5``.
    chunk_size: ignored (accepted so every implementation shares a signature).

  Returns:
    ``(o, final_state)`` with ``o: [B, T, H, Dv]`` in ``v``'s dtype and
    ``final_state: [B, H, Dk, Dv]`` float32.
  """
  del chunk_size
  b, _, h, dk = q.shape
  dv = v.shape[-1]
  if initial_state is None:
    # Zeros shaped from k and v rather than a constant, so that inside
    # shard_map the state carries the inputs' varying mesh axes (check_vma).
    initial_state = jnp.zeros_like(k[:, 0, :, :, None] * v[:, 0, :, None, :], jnp.float32)

  @jax.checkpoint
  def step(s, xs):
    qt, kt, vt, at, bt = xs
    o, s = gated_delta_step_reference(qt, kt, vt, at, bt, s, scale=scale)
    return s, o

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_alpha, beta))
  final, o = jax.lax.scan(step, initial_state.astype(jnp.float32), xs)
  return jnp.moveaxis(o, 0, 1), final
