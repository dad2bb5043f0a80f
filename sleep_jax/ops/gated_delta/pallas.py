"""Pallas implementation of the gated delta rule: entry point, custom VJP and chunk math.

Same math, shapes, dtypes and semantics as
:func:`sleep_jax.ops.gated_delta.reference.gated_delta_rule_reference` (the
oracle). Two backends share the per-chunk math written here:

* ``"triton"`` (GPU, :mod:`.pallas_triton`): grid over ``b*h``, a sequential
  loop over chunks inside the kernel carrying the float32 state.
* ``"mosaic"`` (TPU, :mod:`.pallas_mosaic`): grid ``(b*h, chunks)`` with the
  chunk axis sequential ("arbitrary") and the state carried in VMEM scratch.

Axis legend: ``b`` batch, ``t`` time, ``h`` heads, ``k``/``v`` head dims, ``c``
chunk length ``C``, ``n`` number of chunks.

Chunk math (per head, state ``S0 [Dk, Dv]`` at the chunk start; ``Q`` already
scaled; ``D_ij = sum_{j < t <= i} log_alpha_t`` and ``G_i = sum_{t <= i} log_alpha_t``,
sums within the chunk)::

    Gam_ij = exp(D_ij) for i >= j else 0              (masked BEFORE exp: no overflow)
    A      = strict_lower(diag(beta) (K K^T * Gam))
    Tinv   = (I + A)^{-1}                             (block forward substitution, matmuls only)
    U      = Tinv diag(beta) V - Tinv diag(beta exp(G)) K S0     (the per-token write errors)
    O      = diag(exp(G)) Q S0 + (Q K^T * Gam) U
    S1     = exp(G_C) S0 + K^T diag(exp(G_C - G)) U

Every exponent above is ``<= 0`` whenever ``log_alpha <= 0``, so a log-decay of
any size inside a chunk underflows to 0 instead of overflowing, and
``log_alpha == 0`` is an ordinary value. Each exponent is formed as a masked
sum (or a 0/1 matmul) of exactly the gates it spans, not as a difference of
cumulative sums, so one huge decay does not wash out the small gates after it.
The backward pass is written out by hand (:func:`chunk_backward`) so that it
lowers to the same small set of primitives as the forward (2-D matmuls, exp,
select, row and column sums).

The ``jax.custom_vjp`` wraps only the kernels, on padded, float32,
``[b*h, t, d]``-shaped arrays; padding, the query scale and dtype casts live
outside it and are differentiated by JAX itself.
"""
from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST
_F32 = jnp.float32

BACKENDS = ("triton", "mosaic")
_PLATFORM_BACKEND = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "tpu": "mosaic"}


# ---------------------------------------------------------------------------
# 2-D helpers that every backend lowers (Triton: tt.dot / tt.trans; Mosaic: MXU).


def _mm(a, b):
  """``a @ b`` in float32 at highest precision."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HI,
                             preferred_element_type=_F32)


def _mm_nt(a, b):
  """``a @ b.T``."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HI,
                             preferred_element_type=_F32)


def _mm_tn(a, b):
  """``a.T @ b``, as one dot_general: Mosaic folds the transpose into the
  matmul, Triton inserts ``tt.trans``."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HI,
                             preferred_element_type=_F32)


def _rowsum(x):
  return jnp.sum(x, axis=1, keepdims=True)


def _masks(c):
  row = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  return row >= col, row > col, row == col, row < col


def _inv_unit_lower(a, eye):
  """``(I + a)^{-1}`` for strictly lower-triangular ``a`` ``[C, C]``, by block doubling.

  Recursive block forward substitution: with ``X`` block-diagonal holding the
  inverses of the diagonal ``s x s`` blocks of ``I + a``,
  ``inv([[L11, 0], [L21, L22]]) = [[X11, 0], [-X22 L21 X11, X22]]`` gives the
  inverses of the ``2s x 2s`` blocks, for all of them at once as
  ``X - X (a o M_s) X`` where the 0/1 mask ``M_s`` keeps the ``L21`` blocks
  (``s <= row ^ col < 2s``: same ``2s`` block, different ``s`` block; ``X``
  is block-diagonal, so the product only fills the ``X21`` blocks). Starting
  from ``s = 1`` (``X = I``), ``ceil(log2 C)`` levels of two ``C x C``
  matmuls each finish the inverse; ``C`` need not be a power of two.

  Every intermediate is a block of the inverse itself (or ``L21`` times one),
  so nothing grows beyond ``|X|``, and the error is that of row-by-row forward
  substitution: ~1e-7 relative on repeated, near-parallel and random keys with
  ``beta`` up to 2, measured against float64. The product identity
  ``(I - a)(I + a^2)(I + a^4)...`` that this replaces needs the powers
  ``a^(2^m)``, whose entries grow like binomial coefficients when keys repeat
  (one key, ``beta = 1``, no decay: ``a`` is the strict lower ones and
  ``a^32`` reaches ``C(62, 31) ~ 5e17`` at ``C = 64``) and then cancel to an
  inverse of size ~1: at ``C = 64`` it was off by 3e1 (keys from two unit
  vectors) to 4e8 (near-parallel keys) relative, the kernel's outputs and
  gradients by up to 7e9.

  Cost: ``2 ceil(log2 C)`` dependent ``C x C`` matmuls (12 at ``C = 64``,
  against 10 for the product form); row-by-row forward substitution would
  take ``C - 1`` dependent steps, and
  starting the doubling from 16 x 16 blocks solved row by row measured no
  more accurate. Only 2-D matmuls, iota masks and selects, which both Triton
  and Mosaic lower: no dynamic row indexing, no concatenation and no
  ``triangular_solve`` (whose backward hung on CPU, see KERNELS.md).
  """
  c = a.shape[0]
  row = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  # row ^ col < 2s exactly when row and col lie in the same aligned 2s block.
  bits = jnp.bitwise_xor(row, col)
  lower = row > col
  x = eye
  s = 1
  while s < c:
    l21 = jnp.where(lower & (bits >= s) & (bits < 2 * s), a, 0.0)
    x = x - _mm(x, _mm(l21, x))
    s *= 2
  return x


def _chunk_common(q, k, v, lr, bc):
  """Quantities of one chunk that do not depend on the incoming state."""
  c = q.shape[0]
  incl, strict, diag, later = _masks(c)
  eye = jnp.where(diag, 1.0, 0.0).astype(_F32)
  strict_f = jnp.where(strict, 1.0, 0.0).astype(_F32)
  # Every decay exponent is a masked sum of exactly the log-gates it spans, never
  # a difference of two cumulative sums: G_i - G_j loses the small gates once a
  # huge one (say -1e4) has entered both sums, and then exp(G_i - G_j) is wrong
  # by ulp(|G|). A masked sum is accurate relative to its own terms.
  lmat = jnp.where(incl, lr, 0.0)                   # lmat_it = la_t [t <= i]
  g = _rowsum(lmat)                                 # [C, 1] log-decay chunk start -> i
  to_end = _rowsum(jnp.where(later, lr, 0.0))       # [C, 1] log-decay i -> chunk end
  g_last = jnp.sum(lr, axis=1, keepdims=True)       # [1, 1]
  dmat = _mm(lmat, strict_f)                        # D_ij = sum_{j < t <= i} la_t
  # Mask before exp: above the diagonal D is meaningless (and may be huge).
  gam_i = jnp.where(incl, jnp.exp(jnp.where(incl, dmat, 0.0)), 0.0)
  gam_s = jnp.where(strict, gam_i, 0.0)
  eg = jnp.exp(g)
  decay_to_end = jnp.exp(to_end)
  kk = _mm_nt(k, k)
  a = bc * kk * gam_s
  tinv = _inv_unit_lower(a, eye)
  vb = bc * v
  kbg = (bc * eg) * k
  u_tilde = _mm(tinv, vb)
  w = _mm(tinv, kbg)
  return dict(incl=incl, strict=strict, later=later, strict_f=strict_f, gam_i=gam_i, gam_s=gam_s,
              g_last=g_last, eg=eg, decay_to_end=decay_to_end, kk=kk, tinv=tinv, vb=vb, kbg=kbg,
              u_tilde=u_tilde, w=w)


def chunk_forward(q, k, v, lr, bc, s0):
  """One chunk of the forward pass.

  Args:
    q: ``[C, Dk]`` float32 query, already scaled.
    k: ``[C, Dk]`` float32 key.
    v: ``[C, Dv]`` float32 value.
    lr: ``[1, C]`` log_alpha of the chunk's tokens (a row).
    bc: ``[C, 1]`` beta (a column).
    s0: ``[Dk, Dv]`` float32 state at the chunk start.

  Returns:
    ``(o [C, Dv], s1 [Dk, Dv])``.
  """
  m = _chunk_common(q, k, v, lr, bc)
  u = m["u_tilde"] - _mm(m["w"], s0)
  p = _mm_nt(q, k) * m["gam_i"]
  o = _mm(m["eg"] * q, s0) + _mm(p, u)
  s1 = jnp.exp(m["g_last"]) * s0 + _mm_tn(m["decay_to_end"] * k, u)
  return o, s1


def chunk_backward(q, k, v, lr, bc, s0, do, ds1):
  """Vector-Jacobian product of :func:`chunk_forward`, written out.

  Args:
    q, k, v, lr, bc, s0: as for :func:`chunk_forward` (recomputed here).
    do: ``[C, Dv]`` cotangent of ``o``.
    ds1: ``[Dk, Dv]`` cotangent of the state at the chunk end.

  Returns:
    ``(dq, dk, dv, dlog_alpha [1, C], dbeta [C, 1], ds0)``.
  """
  m = _chunk_common(q, k, v, lr, bc)
  gam_i, gam_s, eg, dte, tinv = m["gam_i"], m["gam_s"], m["eg"], m["decay_to_end"], m["tinv"]
  u = m["u_tilde"] - _mm(m["w"], s0)
  qk = _mm_nt(q, k)
  p = qk * gam_i
  e_last = jnp.exp(m["g_last"])

  # Through O = diag(eG) Q S0 + P U and S1 = e^{G_C} S0 + K^T diag(dte) U.
  du = _mm_tn(p, do) + _mm(dte * k, ds1)
  dp = _mm_nt(do, u)
  dpg = dp * gam_i
  ds0 = _mm_tn(eg * q, do) + e_last * ds1 - _mm_tn(m["w"], du)
  dq = eg * _mm_nt(do, s0) + _mm(dpg, k)
  dk = _mm_tn(dpg, q) + _mm_nt(dte * u, ds1)
  d_dte = _rowsum(_mm(k, ds1) * u)
  d_glast = jnp.sum(_rowsum(s0 * ds1), axis=0, keepdims=True) * e_last       # [1, 1]
  d_eg = _rowsum(_mm(q, s0) * do)

  # Through U = Tinv Vb - Tinv Kbg S0.
  dw = -_mm_nt(du, s0)
  dtinv = _mm_nt(du, m["vb"]) + _mm_nt(dw, m["kbg"])
  dvb = _mm_tn(tinv, du)
  dkbg = _mm_tn(tinv, dw)
  # d(M^{-1}) = -M^{-T} dX M^{-T}; only A's strict lower triangle is free.
  da = jnp.where(m["strict"], -_mm_nt(_mm_tn(tinv, dtinv), tinv), 0.0)
  dv = bc * dvb
  db = _rowsum(dvb * v)
  kbg_dot = _rowsum(dkbg * k)
  dk = dk + (bc * eg) * dkbg
  db = db + eg * kbg_dot
  d_eg = d_eg + bc * kbg_dot
  # Through A = diag(beta) (K K^T * Gam_s).
  db = db + _rowsum(da * m["kk"] * gam_s)
  f = bc * da * gam_s
  dk = dk + _mm(f, k) + _mm_tn(f, k)

  # Gates. Gam = exp(D) gives dD = dGam * Gam; D = lmat @ strict_f gives
  # d lmat = dD @ strict_f^T; lmat, g and to_end are masked copies / row sums
  # of the log-gates, so their gradients come back as column sums.
  d_dmat = dp * qk * gam_i + (da * bc * m["kk"]) * gam_s
  d_lmat = _mm_nt(d_dmat, m["strict_f"]) + d_eg * eg
  colsum = lambda x: jnp.sum(x, axis=0, keepdims=True)
  dla = (colsum(jnp.where(m["incl"], d_lmat, 0.0))
         + colsum(jnp.where(m["later"], d_dte * dte, 0.0)) + d_glast)
  return dq, dk, dv, dla, db, ds0


# ---------------------------------------------------------------------------
# Backend resolution and validation.


def _next_pow2(n):
  return 1 << max(0, (n - 1).bit_length())


def head_block(backend, d):
  """Padded head dim the backend wants for a head dim ``d``."""
  if backend == "triton":
    return max(16, _next_pow2(d))   # Triton blocks: powers of two, >= 16 for tl.dot
  return -(-d // 128) * 128         # Mosaic: lane dim a multiple of 128 (float32 tile 8 x 128)


def resolve_backend(backend):
  """``backend`` or the default for ``jax.default_backend()``."""
  if backend is None:
    platform = jax.default_backend()
    if platform == "cpu":
      # On CPU either backend only runs interpreted (same math); pick one.
      return "triton"
    if platform not in _PLATFORM_BACKEND:
      raise ValueError(f"backend=None: no Pallas backend for platform {platform!r}; "
                       f"pass backend= one of {BACKENDS}")
    return _PLATFORM_BACKEND[platform]
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
  return backend


def resolve_interpret(interpret, backend):
  """``interpret`` or its default: interpret exactly when the platform is CPU."""
  platform = jax.default_backend()
  if interpret is None:
    interpret = platform == "cpu"
  interpret = bool(interpret)
  if not interpret:
    if platform == "cpu":
      raise ValueError("interpret=False: Pallas kernels cannot be compiled on the cpu backend; "
                       "pass interpret=True (or None) to run them in interpret mode")
    want = "mosaic" if platform == "tpu" else "triton"
    if backend != want:
      raise ValueError(f"backend={backend!r} cannot be compiled on platform {platform!r}; "
                       f"use backend={want!r} or interpret=True")
  return interpret


def check_chunk_size(backend, chunk_size):
  """Raises ``ValueError`` unless ``chunk_size`` suits ``backend``."""
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
    raise ValueError(f"chunk_size must be an int, got {chunk_size!r}")
  if backend == "triton":
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
      raise ValueError(f"chunk_size must be a power of two >= 16 for the triton backend, "
                       f"got {chunk_size}")
  elif chunk_size < 8 or chunk_size % 8:
    raise ValueError(f"chunk_size must be a positive multiple of 8 for the mosaic backend, "
                     f"got {chunk_size}")


def _check_inputs(q, k, v, log_alpha, beta, initial_state):
  if q.ndim != 4:
    raise ValueError(f"q must be [B, T, H, Dk], got shape {q.shape}")
  if k.shape != q.shape:
    raise ValueError(f"k must have q's shape {q.shape}, got {k.shape}")
  b, t, h, _ = q.shape
  if v.ndim != 4 or v.shape[:3] != (b, t, h):
    raise ValueError(f"v must be [B, T, H, Dv] = [{b}, {t}, {h}, Dv], got {v.shape}")
  for name, x in (("log_alpha", log_alpha), ("beta", beta)):
    if x.shape != (b, t, h):
      raise ValueError(f"{name} must be [B, T, H] = {(b, t, h)}, got {x.shape}")
  if t == 0:
    raise ValueError("q has T = 0 tokens; the sequence must not be empty")
  if initial_state is not None:
    want = (b, h, q.shape[-1], v.shape[-1])
    if initial_state.shape != want:
      raise ValueError(f"initial_state must be [B, H, Dk, Dv] = {want}, got {initial_state.shape}")


def _backend_module(backend):
  # Imported lazily: the backend modules import the chunk math from here.
  return importlib.import_module(f"sleep_jax.ops.gated_delta.pallas_{backend}")


# ---------------------------------------------------------------------------
# The custom VJP around the kernels.


def _varying_axes(x):
  mat = getattr(jax.typeof(x), "manual_axis_type", None)
  return frozenset() if mat is None else frozenset(mat.varying)


def _match_varying(*xs):
  """Casts every array to vary over the union of the manual mesh axes any varies over.

  Inside ``jax.shard_map`` (with its default ``check_vma=True``) a
  ``pallas_call`` must declare how its outputs vary across the mesh; the
  backends copy that from their first input, so all inputs must agree.
  Outside ``shard_map`` there are no such axes and this is the identity.
  """
  axes = frozenset().union(*(_varying_axes(x) for x in xs))
  if not axes:
    return xs
  return tuple(x if _varying_axes(x) == axes
               else jax.lax.pcast(x, tuple(sorted(axes - _varying_axes(x))), to="varying")
               for x in xs)


def out_struct(shape, like):
  """``ShapeDtypeStruct`` (float32) for a kernel output varying like ``like``."""
  return jax.ShapeDtypeStruct(shape, _F32,
                              manual_axis_type=getattr(jax.typeof(like), "manual_axis_type", None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _kernel_core(q, k, v, g, b, s0, backend, chunk_size, interpret):
  """``[n, t, d]``-shaped padded float32 inputs; ``g`` is log_alpha ``[n, t]``."""
  o, s_final, _ = _backend_module(backend).forward(q, k, v, g, b, s0, chunk_size=chunk_size,
                                                   interpret=interpret)
  return o, s_final


def _kernel_core_fwd(q, k, v, g, b, s0, backend, chunk_size, interpret):
  o, s_final, states = _backend_module(backend).forward(q, k, v, g, b, s0, chunk_size=chunk_size,
                                                        interpret=interpret)
  # Residuals: inputs and the chunk-start states (n/C states of Dk x Dv, cheap);
  # everything else in a chunk is recomputed in the backward kernel.
  return (o, s_final), (q, k, v, g, b, states)


def _kernel_core_bwd(backend, chunk_size, interpret, res, cts):
  q, k, v, g, b, states = res
  do, ds_final = _match_varying(cts[0].astype(_F32), cts[1].astype(_F32), q)[:2]
  return _backend_module(backend).backward(q, k, v, g, b, states, do, ds_final,
                                           chunk_size=chunk_size, interpret=interpret)


_kernel_core.defvjp(_kernel_core_fwd, _kernel_core_bwd)


def _to_rows(x, t_pad, d_pad):
  """``[B, T, H, D] -> [B*H, T_pad, D_pad]`` float32, zero padded."""
  b, t, h, d = x.shape
  x = jnp.moveaxis(x.astype(_F32), 2, 1).reshape(b * h, t, d)
  return jnp.pad(x, ((0, 0), (0, t_pad - t), (0, d_pad - d)))


def gated_delta_rule_pallas(q, k, v, log_alpha, beta, *, initial_state=None, scale=None,
                            chunk_size=64, backend=None, interpret=None):
  """Gated delta rule with Pallas kernels (forward and backward).

  See :func:`sleep_jax.ops.gated_delta.reference.gated_delta_rule_reference`
  for the math; this computes the same function with a chunked (WY) kernel and
  is differentiable (through a ``jax.custom_vjp``) with respect to ``q``,
  ``k``, ``v``, ``log_alpha``, ``beta`` and ``initial_state``, with a
  cotangent on the final state.

  Head dims are zero-padded to what the backend wants (next power of two >= 16
  for Triton, a multiple of 128 for Mosaic) and ``T`` to a multiple of
  ``chunk_size`` with ``log_alpha = 0`` and ``beta = 0`` (which leave the state
  unchanged); results are sliced back.

  Args:
    q: ``[B, T, H, Dk]`` query.
    k: ``[B, T, H, Dk]`` key (L2-normalised by the caller).
    v: ``[B, T, H, Dv]`` value.
    log_alpha: ``[B, T, H]`` log forget gate, finite and ``<= 0`` (values are
      not checked here: they may be traced; positive values can overflow
      ``exp``, ``-inf`` gives NaN. ``gated_delta_rule`` checks concrete ones).
    beta: ``[B, T, H]`` write strength in ``[0, 2]``, usually ``(0, 1)``
      (not checked here either).
    initial_state: ``[B, H, Dk, Dv]`` float32, or ``None`` for zeros.
    scale: query scale; ``None`` means ``Dk ** -0.5``.
    chunk_size: tokens per chunk; a power of two >= 16 (Triton) or a multiple
      of 8 (Mosaic).
    backend: ``"triton"`` (GPU), ``"mosaic"`` (TPU) or ``None`` for the
      platform's own (``"triton"`` on CPU, where only interpret mode runs).
    interpret: run the kernels in Pallas interpret mode; ``None`` means
      ``True`` exactly on CPU.

  Returns:
    ``(o, final_state)``: ``o`` ``[B, T, H, Dv]`` in ``v``'s dtype and
    ``final_state`` ``[B, H, Dk, Dv]`` float32.

  Raises:
    ValueError: on a bad shape, an empty sequence, an unknown backend, a
      chunk size the backend cannot use, or ``interpret=False`` on CPU.
  """
  _check_inputs(q, k, v, log_alpha, beta, initial_state)
  backend = resolve_backend(backend)
  check_chunk_size(backend, chunk_size)
  interpret = resolve_interpret(interpret, backend)
  return _padded_rule(q, k, v, log_alpha, beta, initial_state, scale, chunk_size, backend,
                      interpret)


def _padded_rule(q, k, v, log_alpha, beta, initial_state, scale, chunk_size, backend, interpret):
  """The computation behind :func:`gated_delta_rule_pallas`, arguments resolved.

  Separate so that tests can lower it for GPU/TPU (``interpret=False``) on a
  CPU-only host, where the public entry point refuses compiled kernels.
  """
  bsz, t, h, dk = q.shape
  dv = v.shape[-1]
  scale = dk ** -0.5 if scale is None else scale
  dk_p, dv_p = head_block(backend, dk), head_block(backend, dv)
  n_chunks = -(-t // chunk_size)
  t_p = n_chunks * chunk_size

  qr = _to_rows(q, t_p, dk_p) * scale
  kr = _to_rows(k, t_p, dk_p)
  vr = _to_rows(v, t_p, dv_p)
  # Padded tokens: log_alpha = 0 and beta = 0 leave the state unchanged.
  g = _to_rows(log_alpha[..., None], t_p, 1)[..., 0]
  br = _to_rows(beta[..., None], t_p, 1)[..., 0]
  if initial_state is None:
    s0 = jnp.zeros((bsz * h, dk_p, dv_p), _F32)
  else:
    s0 = initial_state.astype(_F32).reshape(bsz * h, dk, dv)
    s0 = jnp.pad(s0, ((0, 0), (0, dk_p - dk), (0, dv_p - dv)))

  # Outside the custom VJP, so that JAX transposes the casts (a psum) itself.
  qr, kr, vr, g, br, s0 = _match_varying(qr, kr, vr, g, br, s0)
  o, s_final = _kernel_core(qr, kr, vr, g, br, s0, backend, chunk_size, interpret)
  o = jnp.moveaxis(o[:, :t, :dv].reshape(bsz, h, t, dv), 1, 2).astype(v.dtype)
  s_final = s_final[:, :dk, :dv].reshape(bsz, h, dk, dv)
  return o, s_final
