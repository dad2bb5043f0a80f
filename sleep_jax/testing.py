"""Tolerances for numerical comparisons, one table per dtype, in one place.

Tests compare a fast path against a reference with :func:`assert_close` or
:func:`rel_rms_error`. Never loosen a tolerance inside a single test without a
comment saying why. :func:`gated_delta_oracle_float64` is the float64 oracle
(values and gradients) that every gated delta rule implementation is tested
against.
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
    # A float32 implementation against the float64 oracle (gated_delta_oracle_float64), values and
    # gradients alike, unit-norm keys and O(1) values over < 100 tokens: every implementation measured
    # <= 3e-6 on every regime of the float64 grid (repeated and near-parallel keys included); 10x that.
    "float32_vs_float64": Tolerance(atol=3e-5, rtol=3e-5, rel_rms=3e-5),
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


def gated_delta_oracle_float64(q, k, v, log_alpha, beta, initial_state, do, ds_final, scale=None):
  """Per-token gated delta rule and its VJP in float64 numpy (the test oracle).

  Independent of JAX and of ``sleep_jax.ops`` (whose per-token reference
  computes in float32): the recurrence of
  ``sleep_jax.ops.gated_delta.reference`` written out in numpy, per token
  ``S <- exp(la) S;  u = beta (v - S^T k);  S <- S + k u^T;  o = S^T (scale q)``,
  and its reverse-mode derivative written out by hand, vectorised over batch
  and heads. Inputs of any float dtype are upcast exactly (a bfloat16 input is
  compared on its rounded values).

  Args:
    q, k: ``[B, T, H, Dk]``.
    v: ``[B, T, H, Dv]``.
    log_alpha, beta: ``[B, T, H]``.
    initial_state: ``[B, H, Dk, Dv]``.
    do: ``[B, T, H, Dv]`` cotangent of ``o``.
    ds_final: ``[B, H, Dk, Dv]`` cotangent of the final state.
    scale: query scale; ``None`` means ``Dk ** -0.5``.

  Returns:
    ``(o, final_state, (dq, dk, dv, dlog_alpha, dbeta, dinitial_state))``,
    float64 numpy arrays.
  """
  f64 = lambda x: np.asarray(jax.device_get(x), dtype=np.float64)  # pylint: disable=unnecessary-lambda-assignment
  # Time-major [T, B, H, ...] so that every step is a batched einsum over (B, H).
  q, k, v, do = (np.moveaxis(f64(x), 1, 0) for x in (q, k, v, do))
  la, be = (np.moveaxis(f64(x), 1, 0) for x in (log_alpha, beta))
  s, ds = f64(initial_state), f64(ds_final)
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  alpha = np.exp(la)
  n = q.shape[0]
  starts, errs, outs = [], [], []
  for t in range(n):
    starts.append(s)
    sa = alpha[t][..., None, None] * s
    err = v[t] - np.einsum("bhkv,bhk->bhv", sa, k[t])
    s = sa + np.einsum("bhk,bhv->bhkv", k[t], be[t][..., None] * err)
    errs.append(err)
    outs.append(np.einsum("bhkv,bhk->bhv", s, scale * q[t]))
  final = s
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  dla, dbe = np.zeros_like(la), np.zeros_like(be)
  for t in range(n - 1, -1, -1):
    s_prev, err = starts[t], errs[t]
    sa = alpha[t][..., None, None] * s_prev
    s_t = sa + np.einsum("bhk,bhv->bhkv", k[t], be[t][..., None] * err)
    ds = ds + np.einsum("bhk,bhv->bhkv", scale * q[t], do[t])         # o = S^T (scale q)
    dq[t] = scale * np.einsum("bhkv,bhv->bhk", s_t, do[t])
    du = np.einsum("bhkv,bhk->bhv", ds, k[t])                        # S = Sa + k u^T
    dk[t] = np.einsum("bhkv,bhv->bhk", ds, be[t][..., None] * err)
    dbe[t] = np.sum(du * err, axis=-1)                              # u = beta (v - Sa^T k)
    dv[t] = be[t][..., None] * du
    dvhat = -be[t][..., None] * du
    dsa = ds + np.einsum("bhk,bhv->bhkv", k[t], dvhat)
    dk[t] += np.einsum("bhkv,bhv->bhk", sa, dvhat)
    dla[t] = alpha[t] * np.sum(s_prev * dsa, axis=(-2, -1))        # Sa = exp(la) S
    ds = alpha[t][..., None, None] * dsa
  o = np.moveaxis(np.stack(outs), 0, 1)
  grads = tuple(np.moveaxis(g, 0, 1) for g in (dq, dk, dv, dla, dbe)) + (ds,)
  return o, final, grads
