"""GPU kernels of the gated delta rule (Pallas, Triton backend).

Layout: one program per ``b*h`` row (grid ``(b*h,)``, all independent); inside
it a ``fori_loop`` walks the chunks in order (forward) or in reverse
(backward), carrying the float32 ``[Dk, Dv]`` state (or its cotangent) in
registers. Each chunk is loaded from global memory with a dynamic slice, so
the whole sequence never has to fit on chip. The per-chunk math is
:func:`sleep_jax.ops.gated_delta.pallas.chunk_forward` / ``chunk_backward``.

Shapes seen here (prepared by :mod:`.pallas`): ``q, k [n, T, Dk]``,
``v [n, T, Dv]``, ``g, b [n, T]`` (``g`` is log_alpha),
``s0 [n, Dk, Dv]``; ``T`` a multiple of the chunk, ``C``, ``Dk`` and ``Dv``
powers of two ``>= 16`` (Triton tensors must be, and ``tl.dot`` needs 16).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sleep_jax.ops.gated_delta.pallas import chunk_backward, chunk_forward, out_struct

_F32 = jnp.float32


def _triton_params_class():
  # jax 0.10-0.11 name it pallas.triton.CompilerParams; older releases had
  # pallas.gpu.TritonCompilerParams. Looked up lazily so importing never fails.
  cls = getattr(pltriton, "CompilerParams", None)
  if cls is None:
    from jax.experimental.pallas import gpu as plgpu  # pylint: disable=import-outside-toplevel
    cls = plgpu.TritonCompilerParams
  return cls


def _compiler_params(dk, dv):
  # The [Dk, Dv] state lives in registers; wider heads need more warps to hold
  # it without spilling. Untuned on hardware (none was available when written).
  return _triton_params_class()(num_warps=4 if dk * dv <= 64 * 64 else 8, num_stages=1)


def _row_spec(t, d):
  return pl.BlockSpec((None, t, d), lambda i: (i, 0, 0))


def _load_chunk(q_ref, k_ref, v_ref, g_ref, b_ref, c, chunk):
  sl = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
  return q_ref[sl, :], k_ref[sl, :], v_ref[sl, :], g_ref[:, sl], b_ref[sl, :]


def _forward_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, s0_ref,
                    o_ref, s_final_ref, states_ref, *, chunk, n_chunks):
  def body(c, s):
    q, k, v, g, bc = _load_chunk(q_ref, k_ref, v_ref, g_ref, b_ref, c, chunk)
    states_ref[c, :, :] = s
    o, s = chunk_forward(q, k, v, g, bc, s)
    o_ref[pl.ds(pl.multiple_of(c * chunk, chunk), chunk), :] = o
    return s

  s_final_ref[...] = jax.lax.fori_loop(0, n_chunks, body, s0_ref[...])


def _backward_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, states_ref, do_ref, ds_final_ref,
                     dq_ref, dk_ref, dv_ref, dg_ref, db_ref, ds0_ref, *, chunk, n_chunks):
  def body(j, ds):
    c = n_chunks - 1 - j
    q, k, v, g, bc = _load_chunk(q_ref, k_ref, v_ref, g_ref, b_ref, c, chunk)
    sl = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
    dq, dk, dv, dg, db, ds = chunk_backward(q, k, v, g, bc, states_ref[c, :, :],
                                            do_ref[sl, :], ds)
    dq_ref[sl, :] = dq
    dk_ref[sl, :] = dk
    dv_ref[sl, :] = dv
    dg_ref[:, sl] = dg
    db_ref[sl, :] = db
    return ds

  ds0_ref[...] = jax.lax.fori_loop(0, n_chunks, body, ds_final_ref[...])


def _gate_layouts(g, b):
  # log_alpha as rows [n, 1, T] and beta as columns [n, T, 1]: the orientations
  # the chunk math uses, prepared outside because the kernel has no cheap
  # 1-D -> 2-D relayout.
  return g[:, None, :], b[..., None]


def forward(q, k, v, g, b, s0, *, chunk_size, interpret):
  """Forward kernel.

  Returns:
    ``(o [n, T, Dv], s_final [n, Dk, Dv], states [n, T/C, Dk, Dv])`` where
    ``states`` are the chunk-start states kept for the backward pass.
  """
  n, t, dk = q.shape
  dv = v.shape[-1]
  n_chunks = t // chunk_size
  gr, bc = _gate_layouts(g, b)
  kernel = functools.partial(_forward_kernel, chunk=chunk_size, n_chunks=n_chunks)
  return pl.pallas_call(
      kernel,
      out_shape=(out_struct((n, t, dv), q),
                 out_struct((n, dk, dv), q),
                 out_struct((n, n_chunks, dk, dv), q)),
      grid=(n,),
      in_specs=[_row_spec(t, dk), _row_spec(t, dk), _row_spec(t, dv), _row_spec(1, t),
                _row_spec(t, 1), _row_spec(dk, dv)],
      out_specs=(_row_spec(t, dv), _row_spec(dk, dv),
                 pl.BlockSpec((None, n_chunks, dk, dv), lambda i: (i, 0, 0, 0))),
      compiler_params=_compiler_params(dk, dv),
      interpret=interpret,
      name="gated_delta_fwd_triton",
  )(q, k, v, gr, bc, s0)


def backward(q, k, v, g, b, states, do, ds_final, *, chunk_size, interpret):
  """Backward kernel: chunks in reverse, carrying the state cotangent.

  Returns:
    ``(dq, dk, dv, dg, db, ds0)`` shaped like ``(q, k, v, g, b, s0)``.
  """
  n, t, dk = q.shape
  dv = v.shape[-1]
  n_chunks = t // chunk_size
  gr, bc = _gate_layouts(g, b)
  kernel = functools.partial(_backward_kernel, chunk=chunk_size, n_chunks=n_chunks)
  dq, dk_, dv_, dg, db, ds0 = pl.pallas_call(
      kernel,
      out_shape=(out_struct((n, t, dk), q),
                 out_struct((n, t, dk), q),
                 out_struct((n, t, dv), q),
                 out_struct((n, 1, t), q),
                 out_struct((n, t, 1), q),
                 out_struct((n, dk, dv), q)),
      grid=(n,),
      in_specs=[_row_spec(t, dk), _row_spec(t, dk), _row_spec(t, dv), _row_spec(1, t),
                _row_spec(t, 1),
                pl.BlockSpec((None, n_chunks, dk, dv), lambda i: (i, 0, 0, 0)),
                _row_spec(t, dv), _row_spec(dk, dv)],
      out_specs=(_row_spec(t, dk), _row_spec(t, dk), _row_spec(t, dv), _row_spec(1, t),
                 _row_spec(t, 1), _row_spec(dk, dv)),
      compiler_params=_compiler_params(dk, dv),
      interpret=interpret,
      name="gated_delta_bwd_triton",
  )(q, k, v, gr, bc, states, do, ds_final)
  return dq, dk_, dv_, dg[:, 0, :], db[..., 0], ds0
