"""Chunked (WY / UT-transform) form of the gated delta rule in pure JAX.

Axis legend: ``z`` batch x heads, ``n`` chunks, ``m`` batch x heads x chunks,
``c``/``i``/``j`` position inside a chunk, ``k``/``l`` key head dim (``Dk``),
``v`` value head dim (``Dv``), ``x`` a concatenation of ``Dk`` and ``Dv``.

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
``(I + A)^{-1}`` is built by block forward substitution (rows inside 16 x 16
blocks, then ``log2(C / 16)`` block doublings by batched matmuls), never with
``lax.linalg.triangular_solve`` (whose backward hung on CPU). All matmuls run
in float32 at ``Precision.HIGHEST``. ``T`` not a multiple of the chunk size
is padded with ``log_alpha = 0, beta = 0, k = 0`` tokens, which leave ``S``
unchanged.

Gradients: by default plain reverse-mode autodiff through the above, with the
closed-form VJP of the triangular inverse (``dA = -X^T dX X^T``). The
custom-VJP variant (``use_custom_vjp=True``) keeps only the inputs and the
chunk-start states, recomputes the chunk-parallel quantities in the backward
and runs the reverse-time state-gradient pass (``dS_n = Qe^T dO_n +
D_n^T dS_{n+1}``, starting from the final-state cotangent) by hand, as fla
does. Both are exact; ``launch/benchmarks/kernels.py`` times them side by side
(on the 2-core CPU they were within noise of each other, autodiff ahead at
B=4, T=2048: 357 ms vs 472 ms in the quietest run, so autodiff is the default).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def _mm(spec, *xs):
  return jnp.einsum(spec, *xs, precision=_HI)


_BASE_BLOCK = 16  # Diagonal blocks inverted by row-wise substitution, then merged.


def _diagonal_blocks(a, size):
  """``[..., C, C]`` -> its ``C // size`` diagonal blocks ``[..., C // size, size, size]``."""
  nb = a.shape[-1] // size
  # Static slices: cheaper to compile than a diagonal einsum or a gather.
  return jnp.stack([a[..., i * size:(i + 1) * size, i * size:(i + 1) * size] for i in range(nb)],
                   axis=-3)


def _subdiagonal_blocks(a, size):
  """The lower-left ``size`` blocks of each ``2 * size`` diagonal block: ``L21``."""
  nb = a.shape[-1] // (2 * size)
  return jnp.stack([a[..., (2 * i + 1) * size:(2 * i + 2) * size, 2 * i * size:(2 * i + 1) * size]
                    for i in range(nb)], axis=-3)


def _unit_lower_inverse_impl(a):
  c = a.shape[-1]
  cp = 1 << max(c - 1, 0).bit_length()
  a = jnp.tril(a, -1)
  if cp != c:  # Zero padding is an identity block: the top-left inverse is unchanged.
    pad = [(0, 0)] * (a.ndim - 2) + [(0, cp - c), (0, cp - c)]
    a = jnp.pad(a, pad)
  batch = a.shape[:-2]
  # Row-wise forward substitution inside the small diagonal blocks, all blocks
  # at once: row i of X = e_i - A[i, :i] X[:i, :]. (Measured on CPU: ~3x faster
  # than doubling with masked 16 x 16 matmuls; a fori_loop compiles faster than
  # the unrolled rows.)
  s = min(_BASE_BLOCK, cp)
  blocks = _diagonal_blocks(a, s)
  eye = jnp.eye(s, dtype=a.dtype)

  def row(i, x):
    a_i = jax.lax.dynamic_index_in_dim(blocks, i, -2, keepdims=False)
    x_i = jax.lax.dynamic_index_in_dim(eye, i, 0, keepdims=False) - _mm("...j,...jk->...k", a_i, x)
    return jax.lax.dynamic_update_index_in_dim(x, x_i, i, -2)

  # eye + 0 * blocks (not a broadcast constant): the carry then has the input's
  # varying mesh axes, so the loop type-checks inside shard_map(check_vma=True).
  x = jax.lax.fori_loop(1, s, row, eye + jnp.zeros_like(blocks))
  # Larger blocks: inv([[L11, 0], [L21, L22]]) = [[X11, 0], [-X22 L21 X11, X22]].
  while s < cp:
    nb = cp // (2 * s)
    l21 = _subdiagonal_blocks(a, s)
    pairs = x.reshape(batch + (nb, 2, s, s))
    x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
    off = -_mm("...ij,...jk->...ik", x22, _mm("...ij,...jk->...ik", l21, x11))
    top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
    bottom = jnp.concatenate([off, x22], axis=-1)
    x = jnp.concatenate([top, bottom], axis=-2)
    s *= 2
  return x.reshape(batch + (cp, cp))[..., :c, :c]


@jax.custom_vjp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """Inverse of ``I + a`` for strictly lower-triangular ``a``, by matmuls only.

  Block forward substitution: ``inv([[L11, 0], [L21, L22]]) =
  [[X11, 0], [-X22 L21 X11, X22]]`` doubles the inverted diagonal blocks up
  to ``C``, starting from 16 x 16 blocks inverted by row-wise forward
  substitution (``C`` is padded to a power of two with an identity block). This is as stable as plain forward substitution, unlike the
  product identity ``prod_m (I + (-a)^(2^m))``, whose intermediate powers can
  grow combinatorially and cancel catastrophically in float32. No
  ``lax.linalg.triangular_solve`` (its backward hung on CPU). The gradient is
  the closed form ``d a = -strict_lower(X^T dX X^T)``.

  Args:
    a: ``[..., C, C]``; only its strictly lower triangle is read.

  Returns:
    ``[..., C, C]`` lower-triangular ``(I + strict_lower(a))^{-1}``.
  """
  return _unit_lower_inverse_impl(a)


def _inverse_fwd(a):
  x = _unit_lower_inverse_impl(a)
  return x, x


def _inverse_bwd(x, dx):
  # d(X) = -X d(A) X  =>  dA = -X^T dX X^T, restricted to the entries read.
  da = -_mm("...ji,...jk,...lk->...il", x, dx, x)
  return (jnp.tril(da, -1),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def _to_chunks(x, n, c):
  """``[B, T, H, ...]`` (T = n * c) -> ``[B * H, n, c, ...]``."""
  b, _, h = x.shape[:3]
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((b * h, n, c) + x.shape[3:])


def _from_chunks(x, b, h):
  """``[B * H, n, c, D]`` -> ``[B, n * c, H, D]``."""
  _, n, c, d = x.shape
  return jnp.moveaxis(x.reshape(b, h, n * c, d), 1, 2)


def _pad_time(x, t_pad):
  if t_pad == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, t_pad)
  return jnp.pad(x, pad)


def _intra_chunk(q, k, v, g, beta, scale):
  """Chunk-parallel quantities (no dependence on the state), all chunks at once.

  One flat leading axis ``m`` (batch x heads x chunks): XLA compiles
  single-batch-dim matmuls much faster than ones with several batch dims.
  Matmuls sharing an operand are fused by concatenation (``[Q; K] K^T``,
  ``T [K' | V']``, ``P [W | Uw]``, ``Kd^T [W | Uw]``): fewer, larger products.

  Args:
    q, k: ``[m, c, Dk]`` float32.
    v: ``[m, c, Dv]`` float32.
    g: ``[m, c]`` log-gates.
    beta: ``[m, c]``.
    scale: query scale.

  Returns:
    ``(qe, pu, d, e)``: ``qe [m, c, Dk]``, ``pu = P Uw [m, c, Dv]``,
    ``d [m, Dk, Dk]``, ``e [m, Dk, Dv]``; the chunk output is
    ``qe S_n + pu``.
  """
  c, dk = g.shape[-1], k.shape[-1]
  cum = jnp.cumsum(g, axis=-1)  # G_i <= 0, non-increasing.
  row = jnp.arange(c)[:, None]
  col = jnp.arange(c)[None, :]
  incl = row >= col
  # G_i - G_j as a direct sum of the gates in (j, i], never as a difference of
  # cumulative sums: after a decay of -1e4 the cumulative sum has an ulp of ~1e-3,
  # so the difference would lose every ordinary gate that follows it.
  # The running sum over rows is a product with the lower-triangular ones matrix
  # (measured on CPU: 2.3x faster than jnp.cumsum over that axis, same sums).
  diff = _mm("il,mlj->mij", incl.astype(g.dtype), jnp.where(row > col, g[:, :, None], 0.0))
  # Double where: the masked (positive, possibly huge) exponents never reach exp,
  # so neither the value nor its gradient can become inf or NaN.
  decay_incl = jnp.where(incl, jnp.exp(jnp.where(incl, diff, 0.0)), 0.0)
  decay_strict = jnp.where(row > col, decay_incl, 0.0)
  qk_k = _mm("mik,mjk->mij", jnp.concatenate([q, k], axis=1), k)  # [Q K^T; K K^T]
  a = beta[:, :, None] * qk_k[:, c:] * decay_strict
  p = scale * qk_k[:, :c] * decay_incl
  tinv = unit_lower_inverse(a)
  e_cum = jnp.exp(cum)
  rhs = jnp.concatenate([k * (beta * e_cum)[:, :, None], v * beta[:, :, None]], axis=-1)
  wu = _mm("mij,mjx->mix", tinv, rhs)  # [W | Uw]
  p_wu = _mm("mij,mjx->mix", p, wu)  # [P W | P Uw]
  qe = scale * q * e_cum[:, :, None] - p_wu[..., :dk]
  last = cum[:, -1:]
  # G_last - G_i, again summed directly (reverse exclusive cumulative sum).
  to_end = jnp.flip(jnp.cumsum(jnp.flip(g, axis=-1), axis=-1), axis=-1)
  to_end = jnp.concatenate([to_end[:, 1:], jnp.zeros_like(to_end[:, :1])], axis=-1)
  kd = k * jnp.exp(to_end)[:, :, None]
  kd_wu = _mm("mik,mix->mkx", kd, wu)  # [Kd^T W | Kd^T Uw]
  eye = jnp.eye(dk, dtype=k.dtype)
  d = jnp.exp(last)[:, :, None] * eye - kd_wu[..., :dk]
  return qe, p_wu[..., dk:], d, kd_wu[..., dk:]


def _flat(x):
  return x.reshape((-1,) + x.shape[2:])


def _unflat(x, z):
  return x.reshape((z, -1) + x.shape[1:])


def _intra_chunked_layout(q, k, v, g, beta, scale):
  """``_intra_chunk`` on ``[z, n, c, ...]`` inputs, outputs ``[z, n, ...]``."""
  z = q.shape[0]
  out = _intra_chunk(_flat(q), _flat(k), _flat(v), _flat(g), _flat(beta), scale)
  return tuple(_unflat(x, z) for x in out)


def _chunk_states(d, e, s0):
  """Runs ``S_{n+1} = D_n S_n + E_n`` over chunks.

  Args:
    d: ``[z, n, Dk, Dk]``.
    e: ``[z, n, Dk, Dv]``.
    s0: ``[z, Dk, Dv]``.

  Returns:
    ``(starts, final)``: ``starts [z, n, Dk, Dv]`` the state entering each
    chunk, ``final [z, Dk, Dv]``.
  """
  def step(s, de):
    dn, en = de
    return _mm("zkl,zlv->zkv", dn, s) + en, s

  final, starts = jax.lax.scan(step, s0, (jnp.moveaxis(d, 1, 0), jnp.moveaxis(e, 1, 0)))
  return jnp.moveaxis(starts, 0, 1), final


def _outputs(qe, pu, starts):
  """``O = Qe S_n + P Uw`` for every chunk: ``[z, n, c, Dv]``."""
  return _mm("znck,znkv->zncv", qe, starts) + pu


def _forward_chunks(q, k, v, g, beta, s0, scale):
  """Forward on ``[z, n, c, ...]``; returns ``(o, final, starts)``."""
  qe, pu, d, e = _intra_chunked_layout(q, k, v, g, beta, scale)
  starts, final = _chunk_states(d, e, s0)
  return _outputs(qe, pu, starts), final, starts


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
  intra = functools.partial(_intra_chunked_layout, scale=scale)
  (qe, _, d, _), intra_vjp = jax.vjp(intra, q, k, v, g, beta)
  # O = Qe S_n + PU: local cotangents.
  dqe = _mm("zncv,znkv->znck", do, starts)
  ds_local = _mm("znck,zncv->znkv", qe, do)  # dL/dS_n through the outputs.

  # Reverse-time state-gradient pass: dS_n = ds_local_n + D_n^T dS_{n+1}.
  def step(ds_next, xs):
    dn, ds_loc = xs
    return ds_loc + _mm("zlk,zlv->zkv", dn, ds_next), ds_next

  ds0, ds_after = jax.lax.scan(step, dfinal, (jnp.moveaxis(d, 1, 0), jnp.moveaxis(ds_local, 1, 0)),
                               reverse=True)
  ds_after = jnp.moveaxis(ds_after, 0, 1)  # dL/dS_{n+1} for every chunk n.
  dd = _mm("znkv,znlv->znkl", ds_after, starts)
  dq, dk, dv, dg, dbeta = intra_vjp((dqe, do, dd, ds_after))
  return dq, dk, dv, dg, dbeta, ds0


_chunks_custom_vjp.defvjp(_chunks_fwd, _chunks_bwd)


def _chunks_autodiff(q, k, v, g, beta, s0, scale):
  o, final, _ = _forward_chunks(q, k, v, g, beta, s0, scale)
  return o, final


def _chunk_step(s, xs, scale):
  """One chunk with its state: all per-chunk matmuls and the state update.

  The body of the fused scan (``form="scan"``). Same math as ``_intra_chunk``
  followed by one step of ``_chunk_states``, but the state enters as
  ``U = Uw - W S`` and ``S' = e^{G_C} S + Kd^T U`` (three ``[c, Dk] x [Dk, Dv]``
  products per chunk instead of forming ``D = e^{G_C} I - Kd^T W``), and
  every operand is one chunk of every head: small enough to stay in cache.

  Args:
    s: ``[z, Dk, Dv]`` state entering the chunk.
    xs: ``(q, k, v, g, beta)`` of one chunk: ``[z, c, Dk]``, ``[z, c, Dk]``,
      ``[z, c, Dv]``, ``[z, c]``, ``[z, c]``, float32.
    scale: query scale.

  Returns:
    ``(s_next [z, Dk, Dv], o [z, c, Dv])``.
  """
  q, k, v, g, beta = xs
  c = g.shape[-1]
  row = jnp.arange(c)[:, None]
  col = jnp.arange(c)[None, :]
  incl = row >= col
  strict = row > col
  cum = jnp.cumsum(g, axis=-1)  # G_i <= 0 (chunk-local, so no long-sum ulp loss).
  # G_i - G_j as direct sums of the gates in (j, i] (see _intra_chunk), masked
  # before and after exp so the upper triangle can never overflow.
  diff = _mm("il,mlj->mij", incl.astype(g.dtype), jnp.where(strict, g[:, :, None], 0.0))
  decay = jnp.where(incl, jnp.exp(jnp.where(incl, diff, 0.0)), 0.0)
  kk = _mm("mik,mjk->mij", k, k)
  qk = _mm("mik,mjk->mij", q, k)
  a = jnp.where(strict, beta[:, :, None] * kk * decay, 0.0)
  p = scale * qk * decay
  tinv = unit_lower_inverse(a)
  e_cum = jnp.exp(cum)
  w = _mm("mij,mjk->mik", tinv, k * (beta * e_cum)[:, :, None])
  uw = _mm("mij,mjv->miv", tinv, v * beta[:, :, None])
  u = uw - _mm("mik,mkv->miv", w, s)
  o = _mm("mik,mkv->miv", (scale * e_cum)[:, :, None] * q, s) + _mm("mij,mjv->miv", p, u)
  to_end = jnp.sum(jnp.where(col > row, g[:, None, :], 0.0), axis=-1)  # G_C - G_i, direct sums.
  kd = k * jnp.exp(to_end)[:, :, None]
  s_next = jnp.exp(cum[:, -1])[:, None, None] * s + _mm("mik,miv->mkv", kd, u)
  return s_next, o


def _chunks_scan(q, k, v, g, beta, s0, scale, remat=True):
  """Fused form: one ``lax.scan`` over chunks whose body holds all the chunk math.

  Why not the chunk-parallel form on CPU: its batched products over every
  chunk of every head (``[z * n, c, c]`` operands, megabytes each) stream
  through memory between every step, and XLA's CPU backend runs batched small
  matmuls several times slower when their operands fall out of cache
  (measured: 64 x 64 x 64 products ran at ~55 GFLOP/s single-threaded with
  16 in a batch, far less with 512 in a batch under load). Here every operand
  is one chunk of every head. The body is rematerialised (``jax.checkpoint``):
  the scan keeps only the chunk-start states (its carries) and the backward
  recomputes each chunk's quantities from them, which measured faster than
  storing them (fwd+bwd 337 vs 416 ms at B=4, T=2048, C=64).

  Args:
    q, k, v, g, beta: ``[z, n, c, ...]`` float32.
    s0: ``[z, Dk, Dv]``.
    scale: query scale.
    remat: rematerialise the body in the backward pass.

  Returns:
    ``(o [z, n, c, Dv], final [z, Dk, Dv])``.
  """
  step = functools.partial(_chunk_step, scale=scale)
  if remat:
    step = jax.checkpoint(step)
  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
  final, o = jax.lax.scan(step, s0, xs)
  return jnp.moveaxis(o, 0, 1), final


FORMS = ("scan", "parallel")


@functools.partial(jax.jit, static_argnames=("scale", "chunk_size", "use_custom_vjp", "form"))
def gated_delta_rule_chunked(q, k, v, log_alpha, beta, *, initial_state=None, scale=None,
                             chunk_size=64, use_custom_vjp=False, form="scan"):
  """Gated delta rule over a sequence, chunked (WY / UT form).

  Same math and signature as ``reference.gated_delta_rule_reference`` (the
  spec; see this module's docstring for the chunked derivation). Inputs are
  not validated here: ``api.gated_delta_rule`` does that. Jitted (every
  keyword but ``initial_state`` is static), so eager callers do not pay
  op-by-op dispatch.

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, T, H, Dk]``.
    v: ``[B, T, H, Dv]``.
    log_alpha: ``[B, T, H]``, ``<= 0``.
    beta: ``[B, T, H]``.
    initial_state: ``[B, H, Dk, Dv]`` float32, or ``None`` for zeros.
    scale: query scale, default ``Dk ** -0.5``.
    chunk_size: tokens per chunk ``C``; shorter sequences use one chunk of
      ``T`` tokens. Any positive value is exact; the fastest depends on the
      shape (``api.AUTO_TABLE``; 16-32 for long sequences on CPU).
    use_custom_vjp: with ``form="parallel"``, use the hand-written backward
      (recompute + reverse-time state-gradient pass) instead of autodiff.
      Both are exact. Ignored by ``form="scan"``.
    form: ``"scan"`` (default): one scan over chunks whose body holds all the
      chunk math, rematerialised in the backward (``_chunks_scan``).
      ``"parallel"``: the chunk-parallel quantities for all chunks at once,
      then a scan over ``S_{n+1} = D_n S_n + E_n`` (``_forward_chunks``).

  Returns:
    ``(o, final_state)`` with ``o: [B, T, H, Dv]`` in ``v``'s dtype and
    ``final_state: [B, H, Dk, Dv]`` float32.

  Raises:
    ValueError: for an unknown ``form``.
  """
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  out_dtype = v.dtype
  scale = dk ** -0.5 if scale is None else float(scale)
  f32 = jnp.float32
  if initial_state is None:
    # Zeros shaped from k and v rather than a constant, so that inside
    # shard_map the state carries the inputs' varying mesh axes (check_vma).
    initial_state = jnp.zeros_like(k[:, 0, :, :, None] * v[:, 0, :, None, :], jnp.float32)
  c = max(1, min(int(chunk_size), t))
  n = -(-t // c)
  t_pad = n * c - t
  # Padded tokens have k = 0, beta = 0 (no write) and log_alpha = 0 (no decay).
  xs = [_pad_time(x.astype(f32), t_pad) for x in (q, k, v, log_alpha, beta)]
  xs = tuple(_to_chunks(x, n, c) for x in xs)
  s0 = initial_state.astype(f32).reshape(b * h, dk, dv)
  if form == "scan":
    o, final = _chunks_scan(*xs, s0, scale)
  else:
    fn = _chunks_custom_vjp if use_custom_vjp else _chunks_autodiff
    o, final = fn(*xs, s0, scale)
  o = _from_chunks(o, b, h)[:, :t]
  return o.astype(out_dtype), final.reshape(b, h, dk, dv)
