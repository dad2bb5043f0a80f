"""Pallas gated delta rule kernels (Triton and Mosaic) against the per-token oracle.

The float64 grid at the end checks every implementation (reference, chunked,
both Pallas backends) against a float64 oracle on the numerical failure
regimes of chunked delta-rule kernels: repeated, near-parallel and
small-alphabet keys, beta = 1, log_alpha = 0, very strong decay.

On CPU every kernel runs in Pallas interpret mode. On a GPU or TPU host,
``SLEEP_JAX_PALLAS_INTERPRET=0`` (with ``JAX_PLATFORMS`` set to that platform)
compiles the kernels of the host's own backend; the other backend still runs
interpreted.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax import testing
from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.gated_delta import pallas as pallas_mod
from sleep_jax.ops.gated_delta.pallas import gated_delta_rule_pallas
from sleep_jax.ops.gated_delta.reference import gated_delta_rule_reference

BACKENDS = ("triton", "mosaic")
# "0" compiles the kernels of the host's own backend (GPU: triton, TPU: mosaic).
INTERPRET_ENV = "SLEEP_JAX_PALLAS_INTERPRET"
_PLATFORM_OF = {"triton": ("gpu", "cuda", "rocm"), "mosaic": ("tpu",)}


def _interpret(backend):
  """Interpret unless asked to compile and the host can compile this backend."""
  compiled = os.environ.get(INTERPRET_ENV) == "0"
  return not (compiled and jax.default_backend() in _PLATFORM_OF[backend])


def _gates(key, shape, mode):
  """log_alpha for a gate regime.

  "zero": log_alpha exactly 0 (gate at 1, fla #389); "strong": cumulative
  log-decay far beyond 100 inside one chunk (exp overflow regime); "mixed":
  exact zeros, ordinary gates and -40 spikes (also beyond 100 per chunk).
  """
  k1, k2 = jax.random.split(key)
  if mode == "zero":
    return jnp.zeros(shape, jnp.float32)
  if mode == "strong":
    return -jax.random.uniform(k1, shape, minval=3.0, maxval=8.0)
  la = -jax.random.uniform(k1, shape, maxval=3.0)
  pick = jax.random.randint(k2, shape, 0, 8)
  return jnp.where(pick < 2, 0.0, jnp.where(pick == 7, -40.0, la))


def _inputs(seed, b, t, h, dk, dv, gates="mixed", dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 8)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(jax.random.normal(ks[0], (b, t, h, dk)))
  k = unit(jax.random.normal(ks[1], (b, t, h, dk)))
  v = jax.random.normal(ks[2], (b, t, h, dv))
  la = _gates(ks[3], (b, t, h), gates)
  beta = jax.random.uniform(ks[4], (b, t, h), minval=0.01, maxval=0.99)
  s0 = jax.random.normal(ks[5], (b, h, dk, dv))
  co = jax.random.normal(ks[6], (b, t, h, dv))          # cotangent of o
  cs = jax.random.normal(ks[7], (b, h, dk, dv))         # cotangent of the final state
  args = tuple(x.astype(dtype) for x in (q, k, v, la, beta)) + (s0,)
  return args, (co, cs)


def _value_and_grads(fn, args, cts):
  co, cs = cts

  def loss(q, k, v, la, beta, s0):
    o, s = fn(q, k, v, la, beta, initial_state=s0)
    return jnp.sum(o.astype(jnp.float32) * co) + jnp.sum(s * cs), (o, s)

  (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))(*args)
  return outs, grads


_ORACLE_CACHE = {}


def _oracle(case, args, cts):
  """Oracle outputs and gradients, computed once per case and shared by both backends."""
  if case not in _ORACLE_CACHE:
    _ORACLE_CACHE[case] = _value_and_grads(gated_delta_rule_reference, args, cts)
  return _ORACLE_CACHE[case]


def _check_against_oracle(backend, case, args, cts, chunk_size, dtype="float32"):
  kernel = lambda *a, **kw: gated_delta_rule_pallas(*a, chunk_size=chunk_size, backend=backend,
                                                    interpret=_interpret(backend), **kw)
  outs, grads = _value_and_grads(kernel, args, cts)
  for x in jax.tree.leaves((outs, grads)):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), f"{backend}: NaN/inf"
  ref_outs, ref_grads = _oracle(case, args, cts)
  assert outs[0].dtype == args[2].dtype and outs[1].dtype == jnp.float32
  grad_row = "float32_grad" if dtype == "float32" else dtype
  testing.assert_close(ref_outs, outs, dtype, metric="rel_rms", what=f"{backend} outputs")
  names = ("dq", "dk", "dv", "dlog_alpha", "dbeta", "dinitial_state")
  for name, r, g in zip(names, ref_grads, grads):
    assert g.shape == r.shape and g.dtype == r.dtype, name
    testing.assert_close(r, g, grad_row, metric="rel_rms", what=f"{backend} {name}")


# Covering set for the default run: every T, head dim, H and gate regime of the
# grid appears at least once per backend. The full product is slow-marked below.
# T = 64 with cumulative decay > 100 in one chunk is test_extreme_gates.
_FAST_CASES = [
    # b, t, h, dk, dv, gates, chunk
    (2, 1, 1, 16, 16, "mixed", 16),
    (1, 75, 4, 60, 100, "mixed", 32),
    (1, 63, 1, 100, 64, "zero", 16),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,t,h,dk,dv,gates,chunk", _FAST_CASES)
def test_matches_oracle(backend, b, t, h, dk, dv, gates, chunk):
  case = (b, t, h, dk, dv, gates)
  args, cts = _inputs(0, *case)
  _check_against_oracle(backend, case, args, cts, chunk)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [1, 63, 64, 75])
@pytest.mark.parametrize("dk,dv", [(16, 16), (60, 100), (64, 64), (100, 60)])
@pytest.mark.parametrize("h", [1, 4])
@pytest.mark.parametrize("gates", ["zero", "mixed", "strong"])
def test_matches_oracle_grid(backend, t, dk, dv, h, gates):
  case = (1, t, h, dk, dv, gates)
  args, cts = _inputs(1, *case)
  _check_against_oracle(backend, ("grid",) + case, args, cts, 16 if backend == "mosaic" else 32)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle_long(backend):
  args, cts = _inputs(2, 2, 500, 2, 64, 64, "mixed")
  _check_against_oracle(backend, "long", args, cts, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_inputs(backend):
  # The oracle runs on the same bf16 inputs (it computes in float32 too), so the
  # only differences come from rounding o and the gradients to bf16.
  args, cts = _inputs(3, 1, 40, 2, 32, 48, "mixed", dtype=jnp.bfloat16)
  _check_against_oracle(backend, "bf16", args, cts, 16, dtype="bfloat16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_gates(backend):
  # One 64-token chunk holding a run of log_alpha exactly 0 (fla #389), then
  # decays of -1e4 (cumulative log-decay ~1e5: exp overflow if not masked, and
  # small gates lost if decays are formed as differences of cumulative sums)
  # between ordinary gates, with beta near 0 and near 1. Outputs and every
  # gradient must be finite and match the oracle.
  args, cts = _inputs(4, 1, 64, 1, 64, 16, "zero")
  pos = jnp.arange(64)[None, :, None]
  small = -jax.random.uniform(jax.random.PRNGKey(40), pos.shape, maxval=1.0)
  la = jnp.where(pos < 8, 0.0, jnp.where(pos % 4 == 0, -1e4, small))
  beta = jnp.where(pos % 2 == 0, 1e-6, 1.0 - 1e-6)
  args = args[:3] + (la, beta) + args[5:]
  _check_against_oracle(backend, "extreme", args, cts, 64)


def test_chunk_count_changes_between_calls():
  # The same kernel at the same block shapes with 1, then 3 chunks: jax 0.11.2
  # served a kernel's jaxpr traced for one grid to a call with another, and a
  # last-chunk test read from pl.num_programs then fired at the wrong step (the
  # Mosaic final state and ds0 came back stale or NaN). Mosaic only: the Triton
  # kernels loop over chunks inside one program and never asked for the grid.
  backend = "mosaic"
  kernel = functools.partial(gated_delta_rule_pallas, chunk_size=16, backend=backend,
                             interpret=_interpret(backend))
  for t in (16, 48):
    args, cts = _inputs(10, 1, t, 1, 16, 16)
    (o, s), grads = _value_and_grads(kernel, args, cts)
    o64, s64, g64 = testing.gated_delta_oracle_float64(*args, *cts)
    # The float32 rows of the table, as in the oracle tests above (not the tighter
    # float64 row: these gates include -40 spikes, outside what that row measured).
    testing.assert_close((o64, s64), (o, s), "float32", metric="rel_rms", what=f"{backend} T={t}")
    testing.assert_close(g64, grads, "float32_grad", metric="rel_rms", what=f"{backend} T={t} grads")


def test_jit_vmap_grad_compose():
  args, cts = _inputs(5, 1, 20, 1, 16, 16, "mixed")
  stacked = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), args)

  def loss(fn, q, k, v, la, beta, s0):
    o, s = fn(q, k, v, la, beta, initial_state=s0)
    return jnp.sum(o * cts[0]) + jnp.sum(s * cts[1])

  kernel = lambda *a, **kw: gated_delta_rule_pallas(*a, chunk_size=16, backend="triton",
                                                    interpret=_interpret("triton"), **kw)
  grad_of = lambda fn: jax.grad(lambda *a: loss(fn, *a), argnums=tuple(range(6)))
  got = jax.jit(jax.vmap(grad_of(kernel)))(*stacked)
  want = jax.vmap(grad_of(gated_delta_rule_reference))(*stacked)
  testing.assert_close(want, got, "float32_grad", metric="rel_rms", what="vmap(grad)")


@pytest.mark.slow
def test_inside_shard_map():
  # Pallas calls are not partitioned by XLA; multi-device callers run them per
  # shard inside jax.shard_map (batch-sharded here over the fake CPU devices).
  # Numbers: interpreted, with check_vma=False, because jax's Pallas
  # interpreter itself rejects varying manual axes in its grid loop ("Scan
  # carry input and output got mismatched varying manual axes"). Compiled
  # kernels with check_vma=True: lowered for both platforms below.
  n = len(jax.devices())
  args, cts = _inputs(9, n, 20, 2, 16, 16, "mixed")
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec("data")

  def rule(q, k, v, la, beta, s0):
    return gated_delta_rule_pallas(q, k, v, la, beta, initial_state=s0, chunk_size=16,
                                   backend="triton", interpret=_interpret("triton"))

  sharded = jax.shard_map(rule, mesh=mesh, in_specs=(spec,) * 6, out_specs=(spec, spec),
                          check_vma=False)
  got = _value_and_grads(lambda *a, initial_state: sharded(*a, initial_state), args, cts)
  want = _value_and_grads(gated_delta_rule_reference, args, cts)
  testing.assert_close(want, got, "float32_grad", metric="rel_rms", what="shard_map")

  for backend, platform in (("triton", "cuda"), ("mosaic", "tpu")):
    compiled = jax.shard_map(
        lambda *a, backend=backend: pallas_mod._padded_rule(*a, None, 16, backend, False),
        mesh=mesh, in_specs=(spec,) * 6, out_specs=(spec, spec))
    loss = lambda *a, compiled=compiled: jnp.sum(compiled(*a)[0]) + jnp.sum(compiled(*a)[1])
    try:
      text = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*args).lower(
          lowering_platforms=(platform,)).as_text()
    except RuntimeError as err:
      # jax 0.11's Triton lowering asks for a real (or abstract) GPU device, as in test_lowers_for_hardware.
      if backend == "triton" and "No supported GPU devices found" in str(err):
        continue
      raise
    assert ("triton" if backend == "triton" else "tpu_custom_call") in text


def test_defaults_resolve_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU defaults")
  assert pallas_mod.resolve_backend(None) == "triton"
  assert pallas_mod.resolve_interpret(None, "triton") is True
  assert pallas_mod.resolve_interpret(None, "mosaic") is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_lowers_for_hardware(backend):
  # Runs the real Triton / Mosaic lowering (kernel -> Triton IR / Mosaic MLIR)
  # on this host for forward and backward. Compilation itself (ptxas / libtpu
  # layout passes) needs the hardware and is not covered.
  platform = "cuda" if backend == "triton" else "tpu"
  args, _ = _inputs(7, 1, 40, 2, 60, 100)
  chunk = 32 if backend == "triton" else 16

  def loss(q, k, v, la, beta, s0):
    o, s = pallas_mod._padded_rule(q, k, v, la, beta, s0, None, chunk, backend, False)
    return jnp.sum(o) + jnp.sum(s)

  try:
    fwd = jax.jit(loss).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  except RuntimeError as err:
    # jax 0.11's Triton lowering asks for a real (or abstract) GPU device.
    if "No supported GPU devices found" in str(err):
      pytest.skip(f"this jax cannot lower Triton without a GPU: {err}"[:200])
    raise
  bwd = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*args).lower(
      lowering_platforms=(platform,)).as_text()
  target = "__gpu$xla.gpu.triton" if backend == "triton" else "tpu_custom_call"
  assert target in fwd and target in bwd
  assert bwd.count(target) >= 2  # forward (residuals) and backward kernels


def _bad(**overrides):
  args, _ = _inputs(8, 1, 4, 1, 16, 16)
  kw = dict(zip(("q", "k", "v", "log_alpha", "beta"), args[:5]))
  kw.update(overrides)
  q, k, v, la, beta = (kw.pop(n) for n in ("q", "k", "v", "log_alpha", "beta"))
  return gated_delta_rule_pallas(q, k, v, la, beta, **kw)


@pytest.mark.parametrize("overrides,match", [
    (dict(backend="cuda"), "backend must be one of"),
    (dict(backend="triton", chunk_size=24), "chunk_size must be a power of two"),
    (dict(backend="mosaic", chunk_size=12), "chunk_size must be a positive multiple of 8"),
    (dict(k=jnp.zeros((1, 4, 1, 8))), "k must have q's shape"),
    (dict(q=jnp.zeros((4, 1, 16)), k=jnp.zeros((4, 1, 16))), "q must be"),
    (dict(v=jnp.zeros((1, 5, 1, 16))), "v must be"),
    (dict(beta=jnp.zeros((1, 4))), "beta must be"),
    (dict(log_alpha=jnp.zeros((1, 4, 2))), "log_alpha must be"),
    (dict(initial_state=jnp.zeros((1, 1, 16, 8))), "initial_state must be"),
    (dict(q=jnp.zeros((1, 0, 1, 16)), k=jnp.zeros((1, 0, 1, 16)), v=jnp.zeros((1, 0, 1, 16)),
          log_alpha=jnp.zeros((1, 0, 1)), beta=jnp.zeros((1, 0, 1))), "T = 0"),
])
def test_bad_arguments(overrides, match):
  with pytest.raises(ValueError, match=match):
    _bad(**overrides)


def test_interpret_false_on_cpu_is_an_error():
  if jax.default_backend() != "cpu":
    pytest.skip("only meaningful on CPU")
  for backend in BACKENDS:
    with pytest.raises(ValueError, match="interpret=False"):
      _bad(backend=backend, interpret=False)


# ---------------------------------------------------------------------------
# Every implementation against a float64 oracle, on the regimes that break
# chunked kernels. Each regime is one batch element of a single call (one
# compilation per implementation and shape); outputs and every gradient are
# separable over the batch, so each regime gets its own relative RMS error.

# The regimes, shapes and oracle live in sleep_jax.testing, shared with the
# accelerator go/no-go check (launch/benchmarks/gpu.py).
REGIMES = testing.GATED_DELTA_REGIMES
ORACLE64_SHAPES = list(testing.GATED_DELTA_REGIME_SHAPES)
ORACLE64_IMPLS = ["reference", "chunked", "triton", "mosaic"]
_ORACLE64 = {}


def _oracle64_case(shape, dtype):
  """``(args, cts, oracle)`` of the regime grid at ``shape``, q/k/v in ``dtype``.
  Cached per case: shared by every impl."""
  key = (shape, jnp.dtype(dtype).name)
  if key not in _ORACLE64:
    t, h, dk, dv, _ = shape
    _ORACLE64[key] = testing.gated_delta_regime_case(t + dk + dv, t, h, dk, dv, dtype)
  return _ORACLE64[key]


def _run_impl(impl, args, cts, chunk):
  if impl in BACKENDS:
    fn = functools.partial(gated_delta_rule_pallas, chunk_size=chunk, backend=impl,
                           interpret=_interpret(impl))
  else:
    fn = functools.partial(gated_delta_rule, impl=impl, chunk_size=chunk)
  return _value_and_grads(fn, args, cts)


def _regime_errors(impl, shape, dtype):
  """``{(regime, output): relative RMS error against the float64 oracle}``."""
  args, cts, oracle = _oracle64_case(shape, dtype)
  (o, s), grads = _run_impl(impl, args, cts, shape[-1])
  return testing.gated_delta_regime_errors((o, s, grads), oracle)


def _assert_within(errors, bound_of, what):
  bad = [f"{regime} {name}: {err:.2e} > {bound_of(name):.0e}"
         for (regime, name), err in errors.items() if not err <= bound_of(name)]
  assert not bad, f"{what}:\n  " + "\n  ".join(bad)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("impl", ORACLE64_IMPLS)
@pytest.mark.parametrize("shape", ORACLE64_SHAPES, ids=lambda s: "T{}-H{}-Dk{}-Dv{}-C{}".format(*s))
def test_every_impl_matches_float64_oracle(impl, shape):
  # float32 throughout, against float64: the table's float32_vs_float64 row
  # (3e-5) for values and gradients. Correct implementations measured <= 3e-6
  # on every regime (largest: dbeta with near-parallel keys); the product-form
  # inverse measured 3e-4 (two keys, C = 32) to 7e9 (near-parallel, C = 64).
  errors = _regime_errors(impl, shape, jnp.float32)
  _assert_within(errors, testing.gated_delta_regime_bound, f"{impl} {shape}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("impl", ORACLE64_IMPLS)
def test_every_impl_matches_float64_oracle_bf16_qkv(impl):
  # bf16 q, k, v with float32 gates, beta and state. Every implementation
  # computes in float32 on the bf16 values (which the oracle sees too), so o
  # and dq, dk, dv differ only by their one rounding to bf16 (~2^-9 relative:
  # the bfloat16 row), and the float32 outputs (final state, dlog_alpha, dbeta,
  # dinitial_state) keep the float32_vs_float64 row.
  errors = _regime_errors(impl, ORACLE64_SHAPES[0], jnp.bfloat16)
  _assert_within(errors, lambda name: testing.gated_delta_regime_bound(name, jnp.bfloat16), f"{impl} bf16 q/k/v")


def _product_form_inverse(a):
  """``(I - a)(I + a^2)(I + a^4)...``: the inverse the Pallas kernels used to
  build, kept here to show that the matrices below defeat it."""
  x, p, n = np.eye(a.shape[0], dtype=a.dtype) - a, a, 1
  while 2 * n < a.shape[0]:
    p = p @ p
    x = x + x @ p
    n *= 2
  return x


@pytest.mark.parametrize("c", [16, 24, 64])  # 24: a Mosaic chunk that is not a power of two
def test_unit_lower_inverse_on_repeated_keys(c):
  # The kernels' (I + A)^{-1} on A = strict_lower(diag(beta) (K K^T o Gam)) of the
  # grid's repeated-key regimes, against the float64 inverse of the same float32 A.
  _, k, _, la, beta, *_ = testing.gated_delta_regime_batch(c, c, 1, 32, 8)
  inverse = jax.jit(lambda a: pallas_mod._inv_unit_lower(a, jnp.eye(c, dtype=jnp.float32)))  # pylint: disable=protected-access
  for i, regime in enumerate(REGIMES):
    kk, g = k[i, :, 0], np.cumsum(la[i, :, 0])
    gam = np.exp(np.tril(g[:, None] - g[None, :]))  # masked before exp, as the kernels do
    a = np.tril(beta[i, :, 0, None] * (kk @ kk.T) * gam, -1).astype(np.float32)
    want = np.linalg.inv(np.eye(c) + a.astype(np.float64))
    # Measured ~1e-7 (the error of plain forward substitution); 1e-5 leaves room.
    assert testing.rel_rms_error(want, inverse(jnp.asarray(a))) < 1e-5, regime
    if regime in ("two_keys", "beta1_gate1") and c == 64:
      # The same A breaks the product identity: the inputs do exercise the failure.
      assert testing.rel_rms_error(want, _product_form_inverse(a)) > 1.0, regime
