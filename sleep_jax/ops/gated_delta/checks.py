"""Input validation for the gated delta rule.

Every check raises a ``ValueError`` that names the offending argument and
shows the shapes involved; nothing is broadcast, clipped or cast silently.

Shape checks are static and run under ``jit``/``vmap`` as well. The value
checks (``log_alpha`` finite and ``<= 0``, ``beta`` finite and in ``[0, 2]``)
run only when the array is concrete (an eager call on a ``jax.Array`` or
numpy array); on a tracer (inside ``jit``, ``vmap``, ``grad``) they cannot
run and are skipped, and out-of-range or non-finite values then flow into the
computation unchanged: a positive ``log_alpha`` is a decay ``> 1`` that the
chunked and Pallas forms may overflow on, ``-inf`` or NaN gates become NaN
in their masked sums, and ``beta`` outside ``[0, 2]`` grows the state
geometrically along a repeated key. Callers that build ``log_alpha`` as
``-exp(A_log) * softplus(...)`` and ``beta`` as a sigmoid (or twice one)
satisfy both by construction.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _shape_of(x, name: str) -> tuple[int, ...]:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
  return tuple(x.shape)


def _check_rank(shape, rank: int, name: str, legend: str) -> None:
  if len(shape) != rank:
    raise ValueError(f"{name} must have rank {rank} ({legend}), got shape {shape}")


def _check_equal(shape, expected, name: str, legend: str, against: str) -> None:
  if tuple(shape) != tuple(expected):
    raise ValueError(f"{name} must have shape {legend} = {tuple(expected)} to match {against}, "
                     f"got {tuple(shape)}")


# jax.core.Tracer is public in jax 0.10-0.11; guarded in case a release drops the alias.
_TRACER = getattr(jax.core, "Tracer", None)
if _TRACER is None:  # pragma: no cover
  from jax._src.core import Tracer as _TRACER  # pylint: disable=g-import-not-at-top,protected-access


def is_concrete(x) -> bool:
  """True when ``x`` holds values readable on the host (not a tracer)."""
  return not isinstance(x, _TRACER)


def _concrete_values(x):
  """``x`` as a float32 numpy array, or ``None`` for a tracer (no values yet)."""
  if not is_concrete(x):
    return None
  return np.asarray(jax.device_get(x), dtype=np.float32)


def check_log_alpha_values(log_alpha, name: str = "log_alpha") -> None:
  """Raises if a concrete ``log_alpha`` has an entry that is not finite and ``<= 0``.

  ``log_alpha`` is the log of a forget gate in ``(0, 1]``: a positive entry is
  a gate above 1, and ``-inf`` (a gate of exactly 0) turns the chunked forms'
  masked sums of log-gates into NaN. Skipped for tracers (see the module
  docstring).
  """
  values = _concrete_values(log_alpha)
  if values is None:
    return
  bad = values[~(np.isfinite(values) & (values <= 0))]  # ~(...) also catches NaN.
  if bad.size:
    raise ValueError(f"{name} must be finite and <= 0 everywhere (it is the log of a forget gate in "
                     f"(0, 1]); found {bad.size} entries violating it, e.g. {float(bad.flat[0])}")


# I - beta k k^T (unit k) has eigenvalues 1 and 1 - beta: no growth exactly for beta in [0, 2].
BETA_RANGE = (0.0, 2.0)


def check_beta_values(beta, name: str = "beta") -> None:
  """Raises if a concrete ``beta`` has an entry that is not finite and in ``[0, 2]``.

  For a unit key the token's state transition ``I - beta k k^T`` has
  eigenvalues 1 and ``1 - beta``; outside ``[0, 2]`` it grows the state
  along that key, geometrically when the key repeats. ``(0, 1)`` (a sigmoid)
  is the usual range and ``(0, 2)`` the negative-eigenvalue variant. Skipped
  for tracers (see the module docstring).
  """
  values = _concrete_values(beta)
  if values is None:
    return
  lo, hi = BETA_RANGE
  bad = values[~((values >= lo) & (values <= hi))]  # ~(...) also catches NaN; inf is out of range.
  if bad.size:
    raise ValueError(f"{name} must be finite and in [{lo:g}, {hi:g}] everywhere (a write strength; "
                     f"outside it the state grows along a repeated key); found {bad.size} entries "
                     f"violating it, e.g. {float(bad.flat[0])}")


def check_scale(scale) -> None:
  """``scale`` must be ``None`` or a finite real number known at trace time."""
  if scale is None:
    return
  if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (numbers.Real, np.ndarray, jax.Array)):
    raise ValueError(f"scale must be None or a real number, got {type(scale).__name__}")
  if isinstance(scale, (np.ndarray, jax.Array)):
    if not is_concrete(scale) or np.ndim(scale) != 0:
      raise ValueError("scale must be a Python number or a concrete 0-d array (it is static), "
                       f"got {type(scale).__name__} of shape {np.shape(scale)}")
  if not np.isfinite(float(scale)):
    raise ValueError(f"scale must be finite, got {float(scale)}")


def check_chunk_size(chunk_size) -> None:
  if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
    raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _check_mixer_inputs(q, k, v, log_alpha, beta, lead: str) -> tuple[int, ...]:
  """Shape checks shared by the sequence and the step: ``lead`` names the leading
  axes (``"B, T, H"`` or ``"B, H"``). Returns the lead sizes, then ``Dk, Dv``."""
  n = len(lead.split(", "))
  qs = _shape_of(q, "q")
  _check_rank(qs, n + 1, "q", f"[{lead}, Dk]")
  if 0 in qs:
    raise ValueError(f"q must have no empty axis ([{lead}, Dk]), got shape {qs}")
  ks = _shape_of(k, "k")
  _check_rank(ks, n + 1, "k", f"[{lead}, Dk]")
  _check_equal(ks, qs, "k", f"[{lead}, Dk]", "q")
  vs = _shape_of(v, "v")
  _check_rank(vs, n + 1, "v", f"[{lead}, Dv]")
  _check_equal(vs[:n], qs[:n], "v", f"[{lead}, :]", "q")
  if vs[n] == 0:
    raise ValueError(f"v must have Dv >= 1, got shape {vs}")
  for name, x in (("log_alpha", log_alpha), ("beta", beta)):
    xs = _shape_of(x, name)
    _check_rank(xs, n, name, f"[{lead}]")
    _check_equal(xs, qs[:n], name, f"[{lead}]", "q")
  return tuple(qs) + (vs[n],)


def check_sequence_inputs(q, k, v, log_alpha, beta, initial_state=None) -> tuple[int, int, int, int, int]:
  """Validates the shapes of ``gated_delta_rule``'s inputs.

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, T, H, Dk]``.
    v: ``[B, T, H, Dv]``.
    log_alpha: ``[B, T, H]``.
    beta: ``[B, T, H]``.
    initial_state: ``None`` or ``[B, H, Dk, Dv]``.

  Returns:
    ``(B, T, H, Dk, Dv)``.

  Raises:
    ValueError: naming the argument whose rank, shape or dtype is wrong, or
      ``q`` when an axis (``T`` included) is empty.
  """
  qs = _shape_of(q, "q")
  _check_rank(qs, 4, "q", "[B, T, H, Dk]")
  if qs[1] == 0:
    raise ValueError(f"q, k, v, log_alpha, beta must have at least one token (T >= 1), got q shape {qs}")
  b, t, h, dk, dv = _check_mixer_inputs(q, k, v, log_alpha, beta, "B, T, H")
  if initial_state is not None:
    ss = _shape_of(initial_state, "initial_state")
    _check_rank(ss, 4, "initial_state", "[B, H, Dk, Dv]")
    _check_equal(ss, (b, h, dk, dv), "initial_state", "[B, H, Dk, Dv]", "q and v")
  return b, t, h, dk, dv


def check_step_inputs(q, k, v, log_alpha, beta, state) -> tuple[int, int, int, int]:
  """Validates the shapes of ``gated_delta_step``'s inputs (no time axis).

  Args:
    q: ``[B, H, Dk]``.
    k: ``[B, H, Dk]``.
    v: ``[B, H, Dv]``.
    log_alpha: ``[B, H]``.
    beta: ``[B, H]``.
    state: ``[B, H, Dk, Dv]``.

  Returns:
    ``(B, H, Dk, Dv)``.

  Raises:
    ValueError: naming the argument whose rank, shape or dtype is wrong.
  """
  b, h, dk, dv = _check_mixer_inputs(q, k, v, log_alpha, beta, "B, H")
  ss = _shape_of(state, "state")
  _check_rank(ss, 4, "state", "[B, H, Dk, Dv]")
  _check_equal(ss, (b, h, dk, dv), "state", "[B, H, Dk, Dv]", "q and v")
  return b, h, dk, dv
