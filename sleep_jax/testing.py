"""Tolerances for numerical comparisons, one table per dtype, in one place.

Tests compare a fast path against a reference with :func:`assert_close` or
:func:`rel_rms_error`. Never loosen a tolerance inside a single test without a
comment saying why. :func:`gated_delta_oracle_float64` is the float64 oracle
(values and gradients) that every gated delta rule implementation is tested
against, on the inputs of :func:`gated_delta_regime_case`: the numerical
failure regimes of chunked delta-rule kernels, one per batch element
(:data:`GATED_DELTA_REGIMES`). The kernel tests and the accelerator go/no-go
check (``python -m launch.bench gpu``) share them.
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


# ---------------------------------------------------------------------------
# The regime grid: every gated delta rule implementation against the float64
# oracle on the inputs that break chunked kernels.

# One regime per batch element of gated_delta_regime_batch.
GATED_DELTA_REGIMES = (
    "random",         # unit normal keys, moderate gates: the easy baseline
    "two_keys",       # keys drawn from two distinct unit vectors, beta 0.9-1, log_alpha -0.01
    "near_parallel",  # one direction + 1e-3 noise, beta 0.9-1, log_alpha -0.01
    "alphabet",       # keys from 4 embeddings (repeated tokens), beta 0.9-1, log_alpha -0.01
    "beta1_gate1",    # two keys with beta = 1 and log_alpha = 0 exactly (fla #389)
    "gate1",          # random keys, log_alpha = 0 exactly, beta in (0, 1)
    "strong_decay",   # alphabet keys, log_alpha in [-8, -3] with exact zeros: > 88 per chunk
)
# (T, H, Dk, Dv, chunk) of the regime grid: odd T not a multiple of the chunk,
# non-power-of-two head dims (padded by both Pallas backends), and a full
# 64-token chunk, where the product-form inverse the Pallas kernels once used
# put them off by 6e2 (two keys) to 7e9 (near-parallel keys) on these inputs.
GATED_DELTA_REGIME_SHAPES = ((75, 1, 60, 100, 32), (63, 2, 100, 20, 64))
# The outputs compared, in the order gated_delta_oracle_float64 returns them.
GATED_DELTA_OUTPUTS = ("o", "final_state", "dq", "dk", "dv", "dlog_alpha", "dbeta", "dinitial_state")
# Outputs in q/k/v's dtype (rounded once when that is bfloat16); the rest are float32.
_ROUNDED_OUTPUTS = ("o", "dq", "dk", "dv")


def gated_delta_regime_batch(seed: int, t: int, h: int, dk: int, dv: int):
  """float64 numpy ``(q, k, v, log_alpha, beta, s0, do, ds)``, one regime per batch element.

  Batch element ``i`` holds regime ``GATED_DELTA_REGIMES[i]`` (so ``B = 7``);
  outputs and gradients of the gated delta rule are separable over the batch,
  so each regime gets its own error from one call.

  Args:
    seed: numpy random seed.
    t, h, dk, dv: sequence length, heads, key and value head dims.

  Returns:
    ``q, k`` ``[B, T, H, Dk]`` (unit norm), ``v`` ``[B, T, H, Dv]``,
    ``log_alpha, beta`` ``[B, T, H]``, ``s0`` ``[B, H, Dk, Dv]`` and the
    cotangents ``do`` ``[B, T, H, Dv]``, ``ds`` ``[B, H, Dk, Dv]``.
  """
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # pylint: disable=unnecessary-lambda-assignment
  heads = np.arange(h)[None, :]
  cols = []
  for regime in GATED_DELTA_REGIMES:
    emb = unit(rng.normal(size=(4, h, dk)))  # per head: 4 embeddings, the first two for "two keys"
    if regime in ("random", "gate1"):
      k = unit(rng.normal(size=(t, h, dk)))
    elif regime == "near_parallel":
      k = unit(emb[0] + 1e-3 * rng.normal(size=(t, h, dk)))
    else:
      k = emb[rng.integers(0, 2 if regime in ("two_keys", "beta1_gate1") else 4, (t, h)), heads]
    beta = rng.uniform(0.9, 1.0, (t, h))
    la = np.full((t, h), -0.01)
    if regime == "random":
      beta, la = rng.uniform(0.0, 1.0, (t, h)), -rng.uniform(0.0, 0.5, (t, h))
    elif regime == "beta1_gate1":
      beta, la = np.ones((t, h)), np.zeros((t, h))
    elif regime == "gate1":
      beta, la = rng.uniform(0.0, 1.0, (t, h)), np.zeros((t, h))
    elif regime == "strong_decay":
      la = np.where(rng.uniform(size=(t, h)) < 0.25, 0.0, -rng.uniform(3.0, 8.0, (t, h)))
    q = unit(rng.normal(size=(t, h, dk)))
    cols.append((q, k, rng.normal(size=(t, h, dv)), la, beta))
  q, k, v, la, beta = (np.stack(x) for x in zip(*cols))
  b = len(GATED_DELTA_REGIMES)
  s0 = rng.normal(size=(b, h, dk, dv))
  do = rng.normal(size=(b, t, h, dv))
  ds = rng.normal(size=(b, h, dk, dv))
  return q, k, v, la, beta, s0, do, ds


def gated_delta_regime_case(seed: int, t: int, h: int, dk: int, dv: int, dtype=jnp.float32):
  """Regime inputs as JAX arrays, their cotangents and the float64 oracle on exactly those values.

  Args:
    seed, t, h, dk, dv: as for :func:`gated_delta_regime_batch`.
    dtype: dtype of ``q``, ``k`` and ``v``; ``log_alpha``, ``beta`` and the
      initial state are float32.

  Returns:
    ``(args, cts, oracle)``: ``args = (q, k, v, log_alpha, beta,
    initial_state)``, ``cts = (do, ds_final)`` (float32) and ``oracle`` the
    result of :func:`gated_delta_oracle_float64` on them.
  """
  q, k, v, la, beta, s0, do, ds = gated_delta_regime_batch(seed, t, h, dk, dv)
  args = tuple(jnp.asarray(x, dtype) for x in (q, k, v)) + tuple(jnp.asarray(x, jnp.float32) for x in (la, beta, s0))
  # The cotangent of o is rounded to o's dtype on its way back; pick values
  # that survive it, so the oracle sees the same cotangent as the kernels.
  cts = (jnp.asarray(jnp.asarray(do, dtype), jnp.float32), jnp.asarray(ds, jnp.float32))
  return args, cts, gated_delta_oracle_float64(*args, *cts)


def gated_delta_regime_errors(outputs, oracle) -> dict[tuple[str, str], float]:
  """Relative RMS error of each output, per regime, against the oracle.

  Args:
    outputs: ``(o, final_state, grads)`` of an implementation on the inputs of
      :func:`gated_delta_regime_case`, ``grads`` the six input gradients in
      argument order.
    oracle: that case's ``oracle``.

  Returns:
    ``{(regime, output name): error}``; ``inf`` where the output is not finite.

  Raises:
    ValueError: if an output's shape differs from the oracle's.
  """
  o, s, grads = outputs
  want_all = (oracle[0], oracle[1]) + tuple(oracle[2])
  got_all = (o, s) + tuple(grads)
  errors = {}
  for name, want, got in zip(GATED_DELTA_OUTPUTS, want_all, got_all):
    got = np.asarray(jax.device_get(got), np.float64)
    if got.shape != want.shape:
      raise ValueError(f"{name}: shape {got.shape}, the oracle's is {want.shape}")
    for i, regime in enumerate(GATED_DELTA_REGIMES):
      finite = np.all(np.isfinite(got[i]))
      errors[(regime, name)] = rel_rms_error(want[i], got[i]) if finite else np.inf
  return errors


def gated_delta_regime_bound(name: str, dtype=jnp.float32) -> float:
  """The relative RMS bound for output ``name`` of a float32 implementation against the float64 oracle.

  Every implementation computes in float32; with bfloat16 q, k, v the outputs
  in that dtype (o, dq, dk, dv) differ by their one rounding to bfloat16 (the
  bfloat16 row) and the float32 ones keep the float32_vs_float64 row.
  """
  if jnp.dtype(dtype) == jnp.bfloat16 and name in _ROUNDED_OUTPUTS:
    return tolerance("bfloat16").rel_rms
  return tolerance("float32_vs_float64").rel_rms


def separating_halt_tol(changes, n_max: int, *, gap: float = 1.01):
  """A halting tolerance that splits examples, and the pass counts it gives.

  Args:
    changes: ``[B, n_max - 1]`` a halting measure after each sleep pass (by
      hand, in float), example by example.
    n_max: the pass cap (wake pass included).
    gap: only tolerances between two sorted measure values at least this
      ratio apart are considered: well away from every value, so float noise
      in the program under test cannot flip a decision.

  Returns:
    ``(tol, passes [B])``: the first such tolerance under which the examples
    halt after at least two different numbers of passes, and each example's
    passes (the first pass whose measure is below ``tol``, else ``n_max``).

  Raises:
    StopIteration: no tolerance separates the examples.
  """
  changes = np.asarray(changes)

  def passes_for(tol):
    below = changes < tol
    return np.where(below.any(1), below.argmax(1) + 2, n_max)

  v = np.sort(changes.ravel())
  cands = [np.sqrt(x * y) for x, y in zip(v[:-1], v[1:]) if y > x * gap]  # midpoints of clear gaps
  tol = next(c for c in cands if len(set(passes_for(c).tolist())) >= 2)
  return float(tol), passes_for(tol)
