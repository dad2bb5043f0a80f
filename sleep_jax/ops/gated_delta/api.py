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
* ``"auto"``: ``"pallas"`` on gpu / tpu, ``"chunked"`` on cpu. It never falls
  back: if the resolved implementation cannot run, the call raises.
  ``resolve_impl`` tells which implementation a call will use, and the first
  resolution per backend is logged.
"""
from __future__ import annotations

import enum
import logging

import jax

from sleep_jax.ops.gated_delta import checks
from sleep_jax.ops.gated_delta import chunked
from sleep_jax.ops.gated_delta import reference

_LOG = logging.getLogger(__name__)
# Jitted so that eager calls (tests, notebooks) do not dispatch op by op; under
# an outer jit this is inlined.
_reference_rule = jax.jit(reference.gated_delta_rule_reference, static_argnames=("scale", "chunk_size"))
_reference_step = jax.jit(reference.gated_delta_step_reference, static_argnames=("scale",))
_LOGGED: set[tuple[str, str]] = set()


class Impl(enum.Enum):
  """Implementation of the gated delta rule."""
  AUTO = "auto"
  REFERENCE = "reference"
  CHUNKED = "chunked"
  PALLAS = "pallas"


def resolve_impl(impl: str | Impl = "auto", backend: str | None = None) -> Impl:
  """Returns the concrete implementation that ``impl`` stands for.

  Args:
    impl: an ``Impl`` or one of ``"auto"``, ``"reference"``, ``"chunked"``,
      ``"pallas"``.
    backend: platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` means
      ``jax.default_backend()``.

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
  backend = jax.default_backend() if backend is None else backend
  resolved = Impl.PALLAS if backend in ("gpu", "cuda", "rocm", "tpu") else Impl.CHUNKED
  if (backend, resolved.value) not in _LOGGED:
    _LOGGED.add((backend, resolved.value))
    _LOG.info("gated_delta_rule: impl='auto' resolved to %r on backend %r", resolved.value, backend)
  return resolved


def _pallas_rule():
  try:
    from sleep_jax.ops.gated_delta import pallas  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as err:
    if err.name != "sleep_jax.ops.gated_delta.pallas":
      raise
    raise ImportError("impl='pallas' (or 'auto' on gpu/tpu) needs sleep_jax/ops/gated_delta/pallas.py, "
                      "which is not available; pass impl='chunked' explicitly") from err
  return pallas.gated_delta_rule_pallas


def gated_delta_rule(q, k, v, log_alpha, beta, *, initial_state=None, scale=None, impl="auto",
                     chunk_size=64):
  """Gated delta rule over a sequence.

  Per token (per batch element and head, state ``S`` of shape ``[Dk, Dv]``)::

      S <- exp(log_alpha) S;  S <- S + k (beta (v - S^T k))^T;  o = S^T (scale q)

  Args:
    q: ``[B, T, H, Dk]`` queries (already normalised by the caller).
    k: ``[B, T, H, Dk]`` keys (already L2-normalised by the caller).
    v: ``[B, T, H, Dv]`` values.
    log_alpha: ``[B, T, H]`` log forget gate, ``<= 0``. Checked when concrete;
      under ``jit``/``vmap``/``grad`` the value check cannot run and is
      skipped (see ``checks.py``); values are never clipped.
    beta: ``[B, T, H]`` write strength, usually in ``(0, 1)``.
    initial_state: ``[B, H, Dk, Dv]`` (held in float32), or ``None`` for zeros.
    scale: query scale, a static real number; ``None`` means ``Dk ** -0.5``.
    impl: an ``Impl`` or its string value (see the module docstring).
    chunk_size: tokens per chunk for the chunked and Pallas forms (``>= 1``).
      The result does not depend on it beyond float rounding.

  Returns:
    ``(o, final_state)``: ``o`` is ``[B, T, H, Dv]`` in ``v``'s dtype,
    ``final_state`` is ``[B, H, Dk, Dv]`` float32. Differentiable with respect
    to every input, including ``initial_state``, with a cotangent on
    ``final_state``.

  Raises:
    ValueError: naming the argument for a wrong rank or shape, a non-floating
      dtype, ``T == 0``, a concrete positive ``log_alpha``, a bad ``scale``,
      ``chunk_size < 1`` or an unknown ``impl``.
    ImportError: if ``impl`` resolves to ``"pallas"`` and the kernels are not
      available (no silent fallback).
  """
  resolved = resolve_impl(impl)
  checks.check_chunk_size(chunk_size)
  checks.check_scale(scale)
  checks.check_sequence_inputs(q, k, v, log_alpha, beta, initial_state)
  checks.check_log_alpha_values(log_alpha)
  scale = None if scale is None else float(scale)
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
              chunk_size=int(chunk_size), interpret=None)


def gated_delta_step(q, k, v, log_alpha, beta, state, *, scale=None):
  """One decoding step of the gated delta rule.

  A sequence run with ``gated_delta_rule`` equals the same tokens fed one at a
  time through this function (the math is ``reference.gated_delta_step_reference``).

  Args:
    q: ``[B, H, Dk]``.
    k: ``[B, H, Dk]``.
    v: ``[B, H, Dv]``.
    log_alpha: ``[B, H]``, ``<= 0`` (checked when concrete).
    beta: ``[B, H]``.
    state: ``[B, H, Dk, Dv]`` (held in float32).
    scale: query scale, default ``Dk ** -0.5``.

  Returns:
    ``(o, new_state)``: ``o`` is ``[B, H, Dv]`` in ``v``'s dtype, ``new_state``
    is ``[B, H, Dk, Dv]`` float32.

  Raises:
    ValueError: naming the argument for a wrong rank, shape or dtype, a
      concrete positive ``log_alpha`` or a bad ``scale``.
  """
  checks.check_scale(scale)
  checks.check_step_inputs(q, k, v, log_alpha, beta, state)
  checks.check_log_alpha_values(log_alpha)
  scale = None if scale is None else float(scale)
  return _reference_step(q, k, v, log_alpha, beta, state, scale=scale)
