"""Chunked (WY / UT-transform) form of the gated delta rule in pure JAX.

Axis legend: ``b`` batch, ``h`` heads, ``n`` chunks, ``c``/``i``/``j`` position
inside a chunk, ``k`` key head dim (``Dk``), ``v`` value head dim (``Dv``).

Math (per head; state ``S`` is ``[Dk, Dv]``, rows of ``Q``, ``K``, ``V`` are
tokens of one chunk of ``C`` tokens, ``S0`` the state entering the chunk).
Let ``G_i = sum_{j <= i} log_alpha_j`` be the chunk-local cumulative log-gate
(non-increasing, since ``log_alpha <= 0``) and ``u_i = beta_i (v_i - v^_i)``
the delta-rule write of token ``i``. Unrolling the per-token recurrence of
``reference.py`` inside the chunk gives

    S_i  = e^{G_i} S0 + sum_{j <= i} e^{G_i - G_j} k_j u_j^T
    u_i  = beta_i v_i - beta_i e^{G_i} S0^T k_i
           - beta_i sum_{j < i} e^{G_i - G_j} (k_i . k_j) u_j.

With the strictly lower ``A_ij = beta_i e^{G_i - G_j} (k_i . k_j)`` (``j < i``)
and ``T = (I + A)^{-1}`` this is ``U = Uw - W S0`` where

    Uw = T diag(beta) V                 (the writes, carrying the decay)
    W  = T diag(beta e^{G}) K           (the Householder part, applied to S0).

Outputs and the state leaving the chunk follow as matrix products:

    O    = Qe S0 + P Uw,    P  = scale (Q K^T) o M,  M_ij = e^{G_i - G_j} [j <= i]
                            Qe = scale diag(e^{G}) Q - P W
    S_C  = D S0 + E,        D  = e^{G_C} I - Kd^T W,  E = Kd^T Uw,
                            Kd = diag(e^{G_C - G}) K.

Everything except ``S_{n+1} = D_n S_n + E_n`` is independent across chunks and
is computed for all chunks at once with batched matmuls; the sequential part
is one ``[Dk, Dk] x [Dk, Dv]`` product per chunk in a ``lax.scan``.

Numerics. Every exponent is ``<= 0`` (``G_i``, ``G_i - G_j`` for ``i >= j``,
``G_C - G_i``); the upper triangle's exponents (which would be positive and
overflow beyond ~88) are masked to 0 *before* ``exp`` and the result masked
again, so a cumulative log-decay of thousands inside one chunk gives exact
zeros rather than ``0 * inf = NaN``, and the gradient through the masked
entries is exactly zero. ``log_alpha == 0`` everywhere is just ``G = 0``.
``(I + A)^{-1}`` is built by recursive 2x2 block forward substitution
(``log2 C`` levels of batched matmuls), never with
``lax.linalg.triangular_solve`` (whose backward hung on CPU). All matmuls run
in float32 at ``Precision.HIGHEST``. ``T`` not a multiple of the chunk size
is padded with ``log_alpha = 0, beta = 0, k = 0`` tokens, which leave ``S``
unchanged.

Gradients: by default plain reverse-mode autodiff through the above (the
chunk scan is checkpointed so only the chunk-start states are stored); the
custom-VJP variant (``use_custom_vjp=True``) recomputes the chunk-parallel
quantities in the backward and runs the reverse-time state-gradient pass by
hand. Both are exact; ``launch/benchmarks/kernels.py`` times them side by side.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def _mm(spec, *xs):
  return jnp.einsum(spec, *xs, precision=_HI)


def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """Inverse of ``I + a`` for strictly lower-triangular ``a``, by matmuls only.

  Recursive block forward substitution: the inverse of
  ``[[L11, 0], [L21, L22]]`` is ``[[X11, 0], [-X22 L21 X11, X22]]``. Starting
  from 1x1 diagonal blocks (all ones, since the diagonal is unit) the diagonal
  blocks double in size ``log2(C)`` times. This is as stable as row-by-row
  forward substitution, unlike the product identity
  ``prod_m (I + (-a)^(2^m))``, whose intermediate powers can grow
  combinatorially and cancel catastrophically in float32.

  Args:
    a: ``[..., C, C]`` strictly lower-triangular (the upper triangle and the
      diagonal are ignored).

  Returns:
    ``[..., C, C]`` lower-triangular ``(I + strict_lower(a))^{-1}``.
  """
  c = a.shape[-1]
  cp = 1 << max(c - 1, 0).bit_length()
  a = jnp.tril(a, -1)
  if cp != c:  # Zero padding is an identity block: the top-left inverse is unchanged.
    pad = [(0, 0)] * (a.ndim - 2) + [(0, cp - c), (0, cp - c)]
    a = jnp.pad(a, pad)
  batch = a.shape[:-2]
  x = jnp.ones(batch + (cp, 1, 1), a.dtype)  # Inverse diagonal blocks of size s.
  s = 1
  while s < cp:
    nb = cp // (2 * s)
    blocks = a.reshape(batch + (nb, 2 * s, nb, 2 * s))
    blocks = jnp.einsum("...iaib->...iab", blocks)  # Diagonal blocks of size 2s.
    l21 = blocks[..., s:, :s]
    pairs = x.reshape(batch + (nb, 2, s, s))
    x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
    off = -_mm("...ij,...jk,...kl->...il", x22, l21, x11)
    top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
    bottom = jnp.concatenate([off, x22], axis=-1)
    x = jnp.concatenate([top, bottom], axis=-2)
    s *= 2
  return x.reshape(batch + (cp, cp))[..., :c, :c]


def _to_chunks(x, n, c):
  """``[B, T, H, ...]`` (T = n * c) -> ``[B, H, n, c, ...]``."""
  b, _, h = x.shape[:3]
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((b, h, n, c) + x.shape[3:])


def _from_chunks(x):
  """``[B, H, n, c, D]`` -> ``[B, n * c, H, D]``."""
  b, h, n, c, d = x.shape
  return jnp.moveaxis(x.reshape(b, h, n * c, d), 1, 2)


def _pad_time(x, t_pad):
  if t_pad == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, t_pad)
  return jnp.pad(x, pad)


def _intra_chunk(q, k, v, g, beta, scale):
  """Chunk-parallel quantities (no dependence on the state).

  Args:
    q, k: ``[b, h, n, c, Dk]`` float32.
    v: ``[b, h, n, c, Dv]`` float32.
    g: ``[b, h, n, c]`` log-gates.
    beta: ``[b, h, n, c]``.
    scale: query scale.

  Returns:
    ``(qe, p, uw, d, e)``: ``qe [.., c, Dk]``, ``p [.., c, c]``,
    ``uw [.., c, Dv]``, ``d [.., Dk, Dk]``, ``e [.., Dk, Dv]``.
  """
  c = g.shape[-1]
  cum = jnp.cumsum(g, axis=-1)  # G_i <= 0, non-increasing.
  diff = cum[..., :, None] - cum[..., None, :]  # G_i - G_j
  row = jnp.arange(c)[:, None]
  col = jnp.arange(c)[None, :]
  incl = row >= col
  # Double where: the masked (positive, possibly huge) exponents never reach exp,
  # so neither the value nor its gradient can become inf or NaN.
  decay_incl = jnp.where(incl, jnp.exp(jnp.where(incl, diff, 0.0)), 0.0)
  decay_strict = jnp.where(row > col, decay_incl, 0.0)
  a = beta[..., :, None] * _mm("...ik,...jk->...ij", k, k) * decay_strict
  tinv = unit_lower_inverse(a)
  e_cum = jnp.exp(cum)
  w = _mm("...ij,...jk->...ik", tinv, k * (beta * e_cum)[..., None])
  uw = _mm("...ij,...jv->...iv", tinv, v * beta[..., None])
  p = scale * _mm("...ik,...jk->...ij", q, k) * decay_incl
  qe = scale * q * e_cum[..., None] - _mm("...ij,...jk->...ik", p, w)
  last = cum[..., -1:]
  kd = k * jnp.exp(last - cum)[..., None]
  eye = jnp.eye(k.shape[-1], dtype=k.dtype)
  d = jnp.exp(last)[..., None] * eye - _mm("...ik,...il->...kl", kd, w)
  e = _mm("...ik,...iv->...kv", kd, uw)
  return qe, p, uw, d, e


def _chunk_states(d, e, s0):
  """Runs ``S_{n+1} = D_n S_n + E_n`` over chunks.

  Args:
    d: ``[b, h, n, Dk, Dk]``.
    e: ``[b, h, n, Dk, Dv]``.
    s0: ``[b, h, Dk, Dv]``.

  Returns:
    ``(starts, final)``: ``starts [b, h, n, Dk, Dv]`` the state entering each
    chunk, ``final [b, h, Dk, Dv]``.
  """
  def step(s, de):
    dn, en = de
    return _mm("bhkl,bhlv->bhkv", dn, s) + en, s

  final, starts = jax.lax.scan(step, s0, (jnp.moveaxis(d, 2, 0), jnp.moveaxis(e, 2, 0)))
  return jnp.moveaxis(starts, 0, 2), final


def _forward_chunks(q, k, v, g, beta, s0, scale):
  """Forward in chunk layout; returns ``(o [b,h,n,c,Dv], final, residuals)``."""
  qe, p, uw, d, e = _intra_chunk(q, k, v, g, beta, scale)
  starts, final = _chunk_states(d, e, s0)
  o = _mm("bhnck,bhnkv->bhncv", qe, starts) + _mm("bhnij,bhnjv->bhniv", p, uw)
  return o, final, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunks_custom_vjp(q, k, v, g, beta, s0, scale):
  o, final, _ = _forward_chunks(q, k, v, g, beta, s0, scale)
  return o, final


def _chunks_fwd(q, k, v, g, beta, s0, scale):
  o, final, starts = _forward_chunks(q, k, v, g, beta, s0, scale)
  # Only the inputs and the chunk-start states are kept; everything
  # chunk-parallel is recomputed in the backward (as fla does).
  return (o, final), (q, k, v, g, beta, starts)


def _chunks_bwd(scale, res, cts):
  q, k, v, g, beta, starts = res
  do, dfinal = cts
  intra = functools.partial(_intra_chunk, scale=scale)
  (qe, p, uw, d, e), intra_vjp = jax.vjp(intra, q, k, v, g, beta)
  # O = Qe S_n + P Uw: local cotangents.
  dqe = _mm("bhncv,bhnkv->bhnck", do, starts)
  dp = _mm("bhniv,bhnjv->bhnij", do, uw)
  duw = _mm("bhnij,bhniv->bhnjv", p, do)
  ds_local = _mm("bhnck,bhncv->bhnkv", qe, do)  # dL/dS_n from the outputs.

  # Reverse-time state-gradient pass: dS_n = ds_local_n + D_n^T dS_{n+1}.
  def step(ds_next, xs):
    dn, ds_loc = xs
    ds_n = ds_loc + _mm("bhlk,bhlv->bhkv", dn, ds_next)
    return ds_n, ds_next  # ds_next is the cotangent of S_{n+1}, needed for dD, dE.

  ds0, ds_after = jax.lax.scan(step, dfinal, (jnp.moveaxis(d, 2, 0), jnp.moveaxis(ds_local, 2, 0)),
                               reverse=True)
  ds_after = jnp.moveaxis(ds_after, 0, 2)  # dL/dS_{n+1} for every chunk n.
  dd = _mm("bhnkv,bhnlv->bhnkl", ds_after, starts)
  de = ds_after
  dq, dk, dv, dg, dbeta = intra_vjp((dqe, dp, duw, dd, de))
  return dq, dk, dv, dg, dbeta, ds0


_chunks_custom_vjp.defvjp(_chunks_fwd, _chunks_bwd)


@functools.partial(jax.checkpoint, static_argnums=(6,))
def _chunks_autodiff(q, k, v, g, beta, s0, scale):
  o, final, _ = _forward_chunks(q, k, v, g, beta, s0, scale)
  return o, final


def gated_delta_rule_chunked(q, k, v, log_alpha, beta, *, initial_state=None, scale=None,
                             chunk_size=64, use_custom_vjp=False):
  """Gated delta rule over a sequence, chunk-parallel (WY / UT form).

  Same math and signature as ``reference.gated_delta_rule_reference`` (the
  spec; see this module's docstring for the chunked derivation). Inputs are
  not validated here: ``api.gated_delta_rule`` does that.

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, T, H, Dk]``.
    v: ``[B, T, H, Dv]``.
    log_alpha: ``[B, T, H]``, ``<= 0``.
    beta: ``[B, T, H]``.
    initial_state: ``[B, H, Dk, Dv]`` float32, or ``None`` for zeros.
    scale: query scale, default ``Dk ** -0.5``.
    chunk_size: tokens per chunk ``C``; shorter sequences use one chunk of
      ``T`` tokens. Any positive value is exact; 64 is the usual choice.
    use_custom_vjp: use the hand-written backward (recompute + reverse-time
      state-gradient pass) instead of autodiff. Both are exact.

  Returns:
    ``(o, final_state)`` with ``o: [B, T, H, Dv]`` in ``v``'s dtype and
    ``final_state: [B, H, Dk, Dv]`` float32.
  """
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  out_dtype = v.dtype
  scale = dk ** -0.5 if scale is None else float(scale)
  f32 = jnp.float32
  if initial_state is None:
    initial_state = jnp.zeros((b, h, dk, dv), f32)
  c = max(1, min(int(chunk_size), t))
  n = -(-t // c)
  t_pad = n * c - t
  # Padded tokens have k = 0, beta = 0 (no write) and log_alpha = 0 (no decay).
  xs = [_pad_time(x.astype(f32), t_pad) for x in (q, k, v, log_alpha, beta)]
  qc, kc, vc, gc, bc = (_to_chunks(x, n, c) for x in xs)
  fn = _chunks_custom_vjp if use_custom_vjp else _chunks_autodiff
  o, final = fn(qc, kc, vc, gc, bc, initial_state.astype(f32), scale)
  o = _from_chunks(o)[:, :t]
  return o.astype(out_dtype), final
