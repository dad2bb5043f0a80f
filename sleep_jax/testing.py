"""Tolerances for numerical comparisons, one table per dtype, in one place.

Tests compare a fast path against a reference with :func:`assert_close` or
:func:`rel_rms_error`. Never loosen a tolerance inside a single test without a
comment saying why.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
  """Closeness thresholds for one dtype.

  Attributes:
    atol: absolute elementwise tolerance.
    rtol: relative elementwise tolerance.
    rel_rms: bound on ``||ref - out|| / ||ref||`` (fla's metric; robust for long
      accumulations such as a recurrence over thousands of tokens).
  """
  atol: float
  rtol: float
  rel_rms: float


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-10, rtol=1e-10, rel_rms=1e-10),
    "float32": Tolerance(atol=1e-4, rtol=1e-4, rel_rms=2e-4),
    # Gradients accumulate over reverse-time recurrences: a looser bound.
    "float32_grad": Tolerance(atol=5e-4, rtol=5e-4, rel_rms=1e-3),
    "bfloat16": Tolerance(atol=3e-2, rtol=3e-2, rel_rms=2e-2),
}


def tolerance(dtype) -> Tolerance:
  """Returns the tolerance row for ``dtype`` (a dtype or a key of TOLERANCES)."""
  key = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if key not in TOLERANCES:
    raise KeyError(f"no tolerance row for dtype {key!r}; known: {sorted(TOLERANCES)}")
  return TOLERANCES[key]


def rel_rms_error(ref, out) -> float:
  """Relative RMS error ``||ref - out|| / max(||ref||, tiny)`` in float64."""
  ref = np.asarray(jax.device_get(ref), dtype=np.float64)
  out = np.asarray(jax.device_get(out), dtype=np.float64)
  if ref.shape != out.shape:
    raise ValueError(f"shape mismatch: ref {ref.shape} vs out {out.shape}")
  denom = max(float(np.linalg.norm(ref)), 1e-30)
  return float(np.linalg.norm(ref - out)) / denom


def assert_close(ref, out, dtype="float32", *, metric: str = "allclose", what: str = ""):
  """Asserts ``out`` matches ``ref`` under the tolerance row for ``dtype``.

  Args:
    ref: reference pytree.
    out: pytree of the same structure.
    dtype: key of TOLERANCES or a dtype.
    metric: "allclose" (elementwise) or "rel_rms".
    what: label for the failure message.
  """
  tol = tolerance(dtype)
  ref_leaves, ref_def = jax.tree.flatten(ref)
  out_leaves, out_def = jax.tree.flatten(out)
  if ref_def != out_def:
    raise AssertionError(f"{what}: tree structure differs: {ref_def} vs {out_def}")
  for i, (r, o) in enumerate(zip(ref_leaves, out_leaves)):
    r64 = np.asarray(jax.device_get(r), dtype=np.float64)
    o64 = np.asarray(jax.device_get(o), dtype=np.float64)
    if not np.all(np.isfinite(o64)):
      raise AssertionError(f"{what}[leaf {i}]: output has NaN/inf")
    if metric == "rel_rms":
      err = rel_rms_error(r64, o64)
      if err > tol.rel_rms:
        raise AssertionError(f"{what}[leaf {i}]: rel RMS error {err:.3e} > {tol.rel_rms:.1e}")
    elif metric == "allclose":
      np.testing.assert_allclose(o64, r64, atol=tol.atol, rtol=tol.rtol, err_msg=f"{what}[leaf {i}]")
    else:
      raise ValueError(f"unknown metric {metric!r}")
