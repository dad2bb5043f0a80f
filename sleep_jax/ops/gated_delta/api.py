"""Public entry points of the gated delta rule.

``gated_delta_rule`` runs a whole sequence with the implementation chosen by
``impl``; ``gated_delta_step`` advances the state by one token for decoding.
The math (the spec) is in ``reference.py``; the chunked derivation in
``chunked.py``.

Implementations (``Impl``, or its string value):

* ``"reference"``: the per-token ``lax.scan`` oracle.
* ``"chunked"``: the WY / UT chunked form in pure JAX (exact forward and
  backward, any backend).
* ``"pallas"``: the Pallas kernels (``pallas.py``), interpreted on CPU.
* ``"auto"``: ``"pallas"`` on gpu / tpu; on cpu the fastest exact
  implementation and chunk size for the sequence length, from the measured
  ``AUTO_TABLE_CPU`` (``"reference"`` or ``"chunked"``). It never falls back:
  if the resolved implementation cannot run, the call raises.
  ``resolve_impl`` / ``auto_choice`` tell which implementation a call will
  use, and the first resolution per backend and length bucket is logged.
"""
from __future__ import annotations

import enum
import logging

import jax

from sleep_jax.array_typing import (Array, Float, Gate, GdnState, HeadsK, HeadsV, StepGate, StepK, StepV,
                                    typed)
from sleep_jax.ops.gated_delta import checks
from sleep_jax.ops.gated_delta import chunked
from sleep_jax.ops.gated_delta import reference

_LOG = logging.getLogger(__name__)
# Jitted so that eager calls (tests, notebooks) do not dispatch op by op; under
# an outer jit this is inlined.
_reference_rule = jax.jit(reference.gated_delta_rule_reference, static_argnames=("scale", "chunk_size"))
_reference_step = jax.jit(reference.gated_delta_step_reference, static_argnames=("scale",))
_LOGGED: set[tuple[str, str]] = set()


# impl="auto" on CPU: T up to the key -> (implementation, chunk size), the
# fastest exact choice by fwd+bwd process CPU time at the training window shapes
# (B=128, H=2, Dk=Dv=32 at T = 16, 24, 32, 64; B=128, H=4, Dk=Dv=64 at T = 75 for
# the 96 bucket). Candidates: the per-token reference and chunked at C = 8, 16,
# 32, 64 (capped at T). The reference lost at every length (fwd+bwd 2.5-3.9x
# slower than the winner); between chunk sizes the gaps were 5-25%.
# Measured 2026-11-29 on the 2-core x86-64 dev machine (jax 0.10.2, XLA
# single-threaded, both cores busy with other jobs, load ~12: CPU time, not
# wall-clock, is the criterion) by
#   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
#     python -m launch.bench kernels --auto-table-only
# which prints every candidate's times and the dict to paste here. Re-measure
# after changing chunked.py or reference.py.
AUTO_TABLE_CPU: dict[int, tuple[str, int | None]] = {
    16: ("chunked", 16), 24: ("chunked", 24), 32: ("chunked", 32), 64: ("chunked", 16), 96: ("chunked", 16),
    # Whole sequences of the fused N = 1 forward (windowed.forward_unslept): fwd+bwd CPU time at B=32, T=100,
    # H=2, Dk=Dv=32: C = 16 12.5 ms, C = 8 16.0, 20 14.8, 25 19.5, 32 20.4, 64 26.5, reference 20.8; at B=16,
    # T=256: C = 16 16.5 ms vs C = 32 20.3 (measured 2026-12-02, one pinned core, the other busy).
    128: ("chunked", 16), 256: ("chunked", 16),
}
# Longer sequences: measured at B=4, T=2048, H=4, Dk=Dv=64 (and at B=8, T=512: C = 32 52 ms vs C = 16 66 ms) (C = 32 fwd+bwd 177 ms
# CPU time vs 188 ms at C = 16 and 379 ms for the chunk-parallel form at C = 64).
LONG_CHUNK_CPU = 32
_GPU_TPU = ("gpu", "cuda", "rocm", "tpu")


class Impl(enum.Enum):
  """Implementation of the gated delta rule."""
  AUTO = "auto"
  REFERENCE = "reference"
  CHUNKED = "chunked"
  PALLAS = "pallas"


def auto_choice(t: int | None, backend: str | None = None) -> tuple[Impl, int | None]:
  """What ``impl="auto"`` runs for a sequence of ``t`` tokens.

  Args:
    t: sequence length; ``None`` means a long sequence.
    backend: platform name; ``None`` means ``jax.default_backend()``.

  Returns:
    ``(impl, chunk_size)``: ``(Impl.PALLAS, None)`` on gpu / tpu (the caller's
    chunk size applies); on cpu the row of ``AUTO_TABLE_CPU`` for ``t``
    (``chunk_size`` ``None`` for the reference).
  """
  backend = jax.default_backend() if backend is None else backend
  if backend in _GPU_TPU:
    choice, bucket = (Impl.PALLAS, None), None
  else:
    bucket = next((key for key in sorted(AUTO_TABLE_CPU) if t is not None and t <= key), None)
    if bucket is None:
      choice = (Impl.CHUNKED, LONG_CHUNK_CPU)
    else:
      name, chunk = AUTO_TABLE_CPU[bucket]
      choice = (Impl(name), chunk)
  if (backend, bucket, choice) not in _LOGGED:
    _LOGGED.add((backend, bucket, choice))
    _LOG.info("gated_delta_rule: impl='auto' with T=%s resolved to %r (chunk %s) on backend %r", t,
              choice[0].value, choice[1], backend)
  return choice


def resolve_impl(impl: str | Impl = "auto", backend: str | None = None, t: int | None = None) -> Impl:
  """Returns the concrete implementation that ``impl`` stands for.

  Args:
    impl: an ``Impl`` or one of ``"auto"``, ``"reference"``, ``"chunked"``,
      ``"pallas"``.
    backend: platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` means
      ``jax.default_backend()``.
    t: sequence length, which ``"auto"`` on cpu chooses by (``auto_choice``);
      ``None`` means a long sequence.

  Returns:
    ``Impl.REFERENCE``, ``Impl.CHUNKED`` or ``Impl.PALLAS`` (never ``AUTO``).

  Raises:
    ValueError: if ``impl`` is not a known implementation.
  """
  if isinstance(impl, Impl):
    resolved = impl
  elif isinstance(impl, str) and impl in {m.value for m in Impl}:
    resolved = Impl(impl)
  else:
    raise ValueError(f"impl must be an Impl or one of {[m.value for m in Impl]}, got {impl!r}")
  if resolved is not Impl.AUTO:
    return resolved
  return auto_choice(t, backend)[0]


def _pallas_rule():
  try:
    from sleep_jax.ops.gated_delta import pallas  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as err:
    if err.name != "sleep_jax.ops.gated_delta.pallas":
      raise
    raise ImportError("impl='pallas' (or 'auto' on gpu/tpu) needs sleep_jax/ops/gated_delta/pallas.py, "
                      "which is not available; pass impl='chunked' explicitly") from err
  return pallas.gated_delta_rule_pallas


@typed
def gated_delta_rule(q: HeadsK, k: HeadsK, v: HeadsV, log_alpha: Gate, beta: Gate, *,
                     initial_state: Float[Array, "b h k v"] | None = None, scale: float | None = None,
                     impl: str | Impl = "auto", chunk_size: int | None = None) -> tuple[HeadsV, GdnState]:
  """Gated delta rule over a sequence.

  Per token (per batch element and head, state ``S`` of shape ``[Dk, Dv]``)::

      S <- exp(log_alpha) S;  S <- S + k (beta (v - S^T k))^T;  o = S^T (scale q)

  Shapes use the axis legend of ``sleep_jax.array_typing`` (``b t h k`` is
  ``[B, T, H, Dk]``); the annotations are checked at run time when
  ``sleep_jax.array_typing.enable_runtime_checks()`` is on.

  Args:
    q: ``[B, T, H, Dk]`` (``b t h k``) queries (already normalised by the caller).
    k: ``[B, T, H, Dk]`` (``b t h k``) keys (already L2-normalised by the caller).
    v: ``[B, T, H, Dv]`` (``b t h v``) values.
    log_alpha: ``[B, T, H]`` (``b t h``) log forget gate, finite and ``<= 0``.
      Checked when concrete; under ``jit``/``vmap``/``grad`` the value check
      cannot run and is skipped (see ``checks.py``); values are never clipped.
    beta: ``[B, T, H]`` (``b t h``) write strength, finite and in ``[0, 2]``
      (usually ``(0, 1)``). Checked when concrete, like ``log_alpha``.
    initial_state: ``[B, H, Dk, Dv]`` (``b h k v``, held in float32), or ``None`` for zeros.
    scale: query scale, a static real number; ``None`` means ``Dk ** -0.5``.
    impl: an ``Impl`` or its string value (see the module docstring).
    chunk_size: tokens per chunk for the chunked and Pallas forms (``>= 1``),
      or ``None`` for the default (Pallas: 64; chunked: the measured choice
      for ``T``, see ``AUTO_TABLE_CPU``). ``impl="auto"`` on cpu takes its
      chunk size from the table and does not read this; on gpu / tpu it is
      the Pallas chunk. The result does not depend on it beyond float
      rounding.

  Returns:
    ``(o, final_state)``: ``o`` is ``[B, T, H, Dv]`` (``b t h v``) in ``v``'s dtype,
    ``final_state`` is ``[B, H, Dk, Dv]`` (``b h k v``) float32. Differentiable with respect
    to every input, including ``initial_state``, with a cotangent on
    ``final_state``.

  Raises:
    ValueError: naming the argument for a wrong rank or shape, a non-floating
      dtype, ``T == 0``, a concrete ``log_alpha`` that is positive or not
      finite, a concrete ``beta`` outside ``[0, 2]`` or not finite, a bad
      ``scale``, ``chunk_size < 1`` or an unknown ``impl``. Under ``jit``,
      ``vmap`` or ``grad`` the two value checks cannot run (no values yet).
    ImportError: if ``impl`` resolves to ``"pallas"`` and the kernels are not
      available (no silent fallback).
  """
  if chunk_size is not None:
    checks.check_chunk_size(chunk_size)
  resolved = resolve_impl(impl)
  checks.check_scale(scale)
  checks.check_sequence_inputs(q, k, v, log_alpha, beta, initial_state)
  checks.check_log_alpha_values(log_alpha)
  checks.check_beta_values(beta)
  scale = None if scale is None else float(scale)
  t = q.shape[1]
  if impl in (Impl.AUTO, Impl.AUTO.value):
    resolved, auto_chunk = auto_choice(t)
    if resolved is not Impl.PALLAS:
      chunk_size = auto_chunk
  if resolved is Impl.CHUNKED and chunk_size is None:
    chunk_size = auto_choice(t, "cpu")[1] or LONG_CHUNK_CPU
  if resolved is Impl.REFERENCE:
    return _reference_rule(q, k, v, log_alpha, beta, initial_state=initial_state, scale=scale)
  if resolved is Impl.CHUNKED:
    return chunked.gated_delta_rule_chunked(q, k, v, log_alpha, beta, initial_state=initial_state,
                                            scale=scale, chunk_size=int(chunk_size))
  rule = _pallas_rule()
  # interpret=None: the kernels run interpreted exactly when the platform is
  # cpu (pallas.resolve_interpret). To debug a kernel on a GPU/TPU host, call
  # pallas.gated_delta_rule_pallas(..., interpret=True) directly.
  return rule(q, k, v, log_alpha, beta, initial_state=initial_state, scale=scale,
              chunk_size=64 if chunk_size is None else int(chunk_size), interpret=None)


@typed
def gated_delta_step(q: StepK, k: StepK, v: StepV, log_alpha: StepGate, beta: StepGate,
                     state: Float[Array, "b h k v"], *, scale: float | None = None) -> tuple[StepV, GdnState]:
  """One decoding step of the gated delta rule.

  A sequence run with ``gated_delta_rule`` equals the same tokens fed one at a
  time through this function (the math is ``reference.gated_delta_step_reference``).

  Args:
    q: ``[B, H, Dk]`` (``b h k``).
    k: ``[B, H, Dk]`` (``b h k``).
    v: ``[B, H, Dv]`` (``b h v``).
    log_alpha: ``[B, H]`` (``b h``), finite and ``<= 0`` (checked when concrete).
    beta: ``[B, H]`` (``b h``), finite and in ``[0, 2]`` (checked when concrete).
    state: ``[B, H, Dk, Dv]`` (``b h k v``, held in float32).
    scale: query scale, default ``Dk ** -0.5``.

  Returns:
    ``(o, new_state)``: ``o`` is ``[B, H, Dv]`` (``b h v``) in ``v``'s dtype, ``new_state``
    is ``[B, H, Dk, Dv]`` (``b h k v``) float32.

  Raises:
    ValueError: naming the argument for a wrong rank, shape or dtype, a
      concrete ``log_alpha`` or ``beta`` out of range (see
      ``gated_delta_rule``) or a bad ``scale``.
  """
  checks.check_scale(scale)
  checks.check_step_inputs(q, k, v, log_alpha, beta, state)
  checks.check_log_alpha_values(log_alpha)
  checks.check_beta_values(beta)
  scale = None if scale is None else float(scale)
  return _reference_step(q, k, v, log_alpha, beta, state, scale=scale)
