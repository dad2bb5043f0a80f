"""TPU kernels of the gated delta rule (Pallas, Mosaic backend).

Layout: grid ``(b*h, chunks)``. The ``b*h`` axis is "parallel" (split across
TensorCores); the chunk axis is "arbitrary" (sequential), and the float32
``[Dk, Dv]`` state, or its cotangent in the backward pass, is carried across it
in a VMEM scratch buffer. Each grid step sees one chunk's blocks, which Mosaic
pipelines from HBM while the previous chunk computes. The backward grid walks
the chunks in reverse through its index maps. The per-chunk math is
:func:`sleep_jax.ops.gated_delta.pallas.chunk_forward` / ``chunk_backward``.

Block shapes obey Mosaic's rule that the last two dims are multiples of
``(8, 128)`` or equal the array's: ``[C, Dk]`` with ``C % 8 == 0`` and ``Dk``,
``Dv`` padded to multiples of 128 by :mod:`.pallas`; beta columns are
``[C, 1]`` blocks of ``[n, T, 1]`` and log_alpha rows ``[1, C]`` blocks of
``[n, T/C, 1, C]`` (full last two dims).

The last chunk is recognised by the static ``n_chunks`` bound into each call's
kernel, not by ``pl.num_programs``: jax 0.11.2 caches a kernel's traced jaxpr
by the function and its block shapes, not the grid, and ``num_programs`` is a
constant of that trace, so a module-level kernel reused with another number of
chunks kept the count of its first trace. The final state and ``ds0`` were
then written at the wrong step (stale values, or the NaN that interpret mode
fills unwritten outputs with). A fresh ``functools.partial`` per call is also
never served from that cache.

Interpret mode uses ``interpret=True`` (the generic Pallas interpreter) rather
than ``pltpu.InterpretParams()``: both run these kernels, but the TPU-semantics
interpreter took 1.4x the CPU time on the same fwd+bwd check (the kernels use no DMA,
semaphores or cross-core communication, the things it adds checks for).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sleep_jax.ops.gated_delta.pallas import chunk_backward, chunk_forward, out_struct

_F32 = jnp.float32
# jax 0.10-0.11: pltpu.CompilerParams; older releases: pltpu.TPUCompilerParams.
_SEMANTICS = (getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams"))(
    dimension_semantics=("parallel", "arbitrary"))


def _chunk_spec(chunk, d, reverse, n_chunks):
  if reverse:
    return pl.BlockSpec((None, chunk, d), lambda i, j: (i, n_chunks - 1 - j, 0))
  return pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0))


def _row_gate_spec(chunk, reverse, n_chunks):
  if reverse:
    return pl.BlockSpec((None, None, 1, chunk), lambda i, j: (i, n_chunks - 1 - j, 0, 0))
  return pl.BlockSpec((None, None, 1, chunk), lambda i, j: (i, j, 0, 0))


def _state_spec(dk, dv):
  return pl.BlockSpec((None, dk, dv), lambda i, j: (i, 0, 0))


def _states_spec(dk, dv, reverse, n_chunks):
  if reverse:
    return pl.BlockSpec((None, None, dk, dv), lambda i, j: (i, n_chunks - 1 - j, 0, 0))
  return pl.BlockSpec((None, None, dk, dv), lambda i, j: (i, j, 0, 0))


def _forward_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, s0_ref,
                    o_ref, s_final_ref, states_ref, s_scratch, *, n_chunks):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _():
    s_scratch[...] = s0_ref[...]

  s = s_scratch[...]
  states_ref[...] = s
  o, s = chunk_forward(q_ref[...], k_ref[...], v_ref[...], g_ref[...], b_ref[...], s)
  o_ref[...] = o
  s_scratch[...] = s

  @pl.when(j == n_chunks - 1)
  def _():
    s_final_ref[...] = s


def _backward_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, states_ref, do_ref, ds_final_ref,
                     dq_ref, dk_ref, dv_ref, dg_ref, db_ref, ds0_ref, ds_scratch, *, n_chunks):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _():
    ds_scratch[...] = ds_final_ref[...]

  dq, dk, dv, dg, db, ds = chunk_backward(q_ref[...], k_ref[...], v_ref[...], g_ref[...],
                                          b_ref[...], states_ref[...], do_ref[...], ds_scratch[...])
  dq_ref[...] = dq
  dk_ref[...] = dk
  dv_ref[...] = dv
  dg_ref[...] = dg
  db_ref[...] = db
  ds_scratch[...] = ds

  @pl.when(j == n_chunks - 1)
  def _():
    ds0_ref[...] = ds


def _gate_layouts(g, b, chunk):
  n, t = g.shape
  return g.reshape(n, t // chunk, 1, chunk), b[..., None]


def _in_specs(chunk, dk, dv, n_chunks, reverse):
  return [_chunk_spec(chunk, dk, reverse, n_chunks), _chunk_spec(chunk, dk, reverse, n_chunks),
          _chunk_spec(chunk, dv, reverse, n_chunks), _row_gate_spec(chunk, reverse, n_chunks),
          _chunk_spec(chunk, 1, reverse, n_chunks)]


def forward(q, k, v, g, b, s0, *, chunk_size, interpret):
  """Forward kernel.

  Returns:
    ``(o [n, T, Dv], s_final [n, Dk, Dv], states [n, T/C, Dk, Dv])`` where
    ``states`` are the chunk-start states kept for the backward pass.
  """
  n, t, dk = q.shape
  dv = v.shape[-1]
  n_chunks = t // chunk_size
  gr, bc = _gate_layouts(g, b, chunk_size)
  return pl.pallas_call(
      functools.partial(_forward_kernel, n_chunks=n_chunks),
      out_shape=(out_struct((n, t, dv), q),
                 out_struct((n, dk, dv), q),
                 out_struct((n, n_chunks, dk, dv), q)),
      grid=(n, n_chunks),
      in_specs=_in_specs(chunk_size, dk, dv, n_chunks, False) + [_state_spec(dk, dv)],
      out_specs=(_chunk_spec(chunk_size, dv, False, n_chunks), _state_spec(dk, dv),
                 _states_spec(dk, dv, False, n_chunks)),
      scratch_shapes=[pltpu.VMEM((dk, dv), _F32)],
      compiler_params=_SEMANTICS,
      interpret=interpret,
      name="gated_delta_fwd_mosaic",
  )(q, k, v, gr, bc, s0)


def backward(q, k, v, g, b, states, do, ds_final, *, chunk_size, interpret):
  """Backward kernel: chunks in reverse, carrying the state cotangent.

  Returns:
    ``(dq, dk, dv, dg, db, ds0)`` shaped like ``(q, k, v, g, b, s0)``.
  """
  n, t, dk = q.shape
  dv = v.shape[-1]
  n_chunks = t // chunk_size
  gr, bc = _gate_layouts(g, b, chunk_size)
  rev = functools.partial(_chunk_spec, chunk_size, reverse=True, n_chunks=n_chunks)
  dq, dk_, dv_, dg, db, ds0 = pl.pallas_call(
      functools.partial(_backward_kernel, n_chunks=n_chunks),
      out_shape=(out_struct((n, t, dk), q),
                 out_struct((n, t, dk), q),
                 out_struct((n, t, dv), q),
                 out_struct((n, n_chunks, 1, chunk_size), q),
                 out_struct((n, t, 1), q),
                 out_struct((n, dk, dv), q)),
      grid=(n, n_chunks),
      in_specs=_in_specs(chunk_size, dk, dv, n_chunks, True)
      + [_states_spec(dk, dv, True, n_chunks), rev(dv), _state_spec(dk, dv)],
      out_specs=(rev(dk), rev(dk), rev(dv), _row_gate_spec(chunk_size, True, n_chunks), rev(1),
                 _state_spec(dk, dv)),
      scratch_shapes=[pltpu.VMEM((dk, dv), _F32)],
      compiler_params=_SEMANTICS,
      interpret=interpret,
      name="gated_delta_bwd_mosaic",
  )(q, k, v, gr, bc, states, do, ds_final)
  return dq, dk_, dv_, dg.reshape(n, t), db[..., 0], ds0
