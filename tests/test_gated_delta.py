"""The gated delta rule: every implementation against the per-token oracle.

Forward and backward (gradients with respect to q, k, v, log_alpha, beta and
initial_state, with random cotangents on both o and final_state) over a
covering design of the grid T in {1, 63, 64, 75, 500}, Dk, Dv in
{16, 60, 64, 100}, H in {1, 4}, gates from log_alpha == 0 to a cumulative
log-decay far beyond 100 inside one chunk, beta across (0, 1); plus an
independent float64 numpy recurrence, chunk-size invariance, decoding steps,
jit / vmap / grad composition, bf16 inputs and every bad input.
"""
from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.ops import gated_delta_rule, gated_delta_step
from sleep_jax.ops.gated_delta import api, chunked
from sleep_jax.testing import assert_close, rel_rms_error, tolerance

_HAS_PALLAS = importlib.util.find_spec("sleep_jax.ops.gated_delta.pallas") is not None
pallas_required = pytest.mark.skipif(not _HAS_PALLAS, reason="sleep_jax/ops/gated_delta/pallas.py absent")
FAST_IMPLS = ["chunked", pytest.param("pallas", marks=pallas_required)]
# The Pallas interpreter is slow to trace and run on CPU: its secondary checks
# (the grid and the extreme regimes stay in the default run) are marked slow.
SLOW_PALLAS = ["chunked", pytest.param("pallas", marks=[pallas_required, pytest.mark.slow])]
ARG_NAMES = ("q", "k", "v", "log_alpha", "beta", "initial_state")


# ---------------------------------------------------------------------------
# Inputs.


def _gates(rng, shape, regime):
  """log_alpha for a named regime; all <= 0."""
  if regime == "zero":  # Gate exactly 1 (fla #389).
    return np.zeros(shape)
  if regime == "moderate":
    return -rng.uniform(0.0, 0.5, shape)
  if regime == "strong":  # Cumulative log-decay ~190 over a 64-token chunk (exp overflow regime).
    return -rng.uniform(1.0, 5.0, shape)
  if regime == "extreme":  # A run of exact zeros, then -1e4 decays between ordinary gates.
    pos = np.arange(shape[1])[None, :, None]
    small = -rng.uniform(0.0, 1.0, shape)
    return np.broadcast_to(np.where(pos < 8, 0.0, np.where(pos % 4 == 0, -1e4, small)), shape)
  if regime == "mixed":  # Mostly 0, a few tokens of -60 each: > 100 inside one chunk.
    return np.where(rng.uniform(size=shape) < 0.05, -60.0, 0.0)
  raise ValueError(regime)


def _betas(rng, shape, regime):
  lo, hi = {"uniform": (0.0, 1.0), "low": (0.0, 0.1), "high": (0.9, 1.0)}[regime]
  return rng.uniform(lo, hi, shape)


def make_inputs(seed, b, t, h, dk, dv, gate="moderate", beta="uniform", dtype=jnp.float32):
  """Normalised q, k; gates and betas of a regime; a random initial state."""
  rng = np.random.default_rng(seed)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  q = unit(rng.normal(size=(b, t, h, dk)))
  k = unit(rng.normal(size=(b, t, h, dk)))
  v = rng.normal(size=(b, t, h, dv))
  la = _gates(rng, (b, t, h), gate)
  be = _betas(rng, (b, t, h), beta)
  s0 = rng.normal(size=(b, h, dk, dv))
  args = [jnp.asarray(x, dtype) for x in (q, k, v, la, be)]
  return args + [jnp.asarray(s0, jnp.float32)]


def cotangents(seed, b, t, h, dk, dv):
  rng = np.random.default_rng(seed + 1000)
  return (jnp.asarray(rng.normal(size=(b, t, h, dv)), jnp.float32),
          jnp.asarray(rng.normal(size=(b, h, dk, dv)), jnp.float32))


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def fwd_bwd(args, cts, impl, chunk_size=64):
  """``(o, final_state, grads)`` of one implementation, one compiled program."""
  q, k, v, la, be, s0 = args

  def run(q, k, v, la, be, s0):
    return gated_delta_rule(q, k, v, la, be, initial_state=s0, impl=impl, chunk_size=chunk_size)

  (o, final), vjp = jax.vjp(run, q, k, v, la, be, s0)
  return o, final, vjp(cts)


def assert_matches(ref, out, what, dtype="float32"):
  """Compares ``(o, final, grads)`` triples by rel-RMS (fla's metric)."""
  o_r, s_r, g_r = ref
  o_o, s_o, g_o = out
  assert o_o.dtype == o_r.dtype and s_o.dtype == jnp.float32
  assert_close(o_r, o_o, dtype, metric="rel_rms", what=f"{what} o")
  assert_close(s_r, s_o, dtype, metric="rel_rms", what=f"{what} final_state")
  grad_dtype = "float32_grad" if dtype == "float32" else dtype
  for name, gr, go in zip(ARG_NAMES, g_r, g_o):
    assert go.shape == gr.shape, name
    assert_close(gr, go, grad_dtype, metric="rel_rms", what=f"{what} d{name}")


# ---------------------------------------------------------------------------
# The grid: a covering design. Every value of every axis appears at least once,
# each gate regime with a full 64-token chunk, and the odd T with odd head dims.
#          T    Dk   Dv   H  gate        beta       chunk
GRID = [
    (1, 16, 100, 4, "zero", "uniform", 64),
    (63, 60, 16, 1, "strong", "high", 64),
    (64, 64, 60, 4, "mixed", "low", 64),
    (75, 100, 64, 1, "zero", "high", 64),
    (75, 16, 16, 4, "strong", "uniform", 32),
    (500, 64, 64, 1, "moderate", "uniform", 64),
]
# Other tests reuse these shapes so that the jitted programs are compiled once.


@pytest.mark.timeout(300)
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("t,dk,dv,h,gate,beta,chunk", GRID)
def test_matches_oracle_forward_and_backward(impl, t, dk, dv, h, gate, beta, chunk):
  args = make_inputs(t + dk + dv + h, 2, t, h, dk, dv, gate, beta)
  cts = cotangents(t + dk + dv + h, 2, t, h, dk, dv)
  ref = fwd_bwd(args, cts, "reference")
  out = fwd_bwd(args, cts, impl, chunk)
  assert_matches(ref, out, f"{impl} T={t} Dk={dk} Dv={dv} H={h} {gate}/{beta}")


# ---------------------------------------------------------------------------
# An independent float64 oracle (numpy, not reference.py).


def numpy_recurrence(q, k, v, la, be, s0, scale=None):
  """Per-token float64 recurrence with explicit loops over batch and heads."""
  q, k, v, la, be, s0 = (np.asarray(x, np.float64) for x in (q, k, v, la, be, s0))
  b, t, h, dk = q.shape
  scale = dk ** -0.5 if scale is None else scale
  o = np.zeros(v.shape)
  s = s0.copy()
  for bi in range(b):
    for hi in range(h):
      st = s[bi, hi]
      for ti in range(t):
        st = np.exp(la[bi, ti, hi]) * st
        err = be[bi, ti, hi] * (v[bi, ti, hi] - st.T @ k[bi, ti, hi])
        st = st + np.outer(k[bi, ti, hi], err)
        o[bi, ti, hi] = st.T @ (scale * q[bi, ti, hi])
      s[bi, hi] = st
  return o, s


def test_chunked_matches_float64_numpy():
  args = make_inputs(7, 2, 75, 2, 60, 100, "mixed", "uniform")
  o64, s64 = numpy_recurrence(*args)
  o, s = gated_delta_rule(*args[:5], initial_state=args[5], impl="chunked")
  assert rel_rms_error(o64, o) <= tolerance("float32").rel_rms
  assert rel_rms_error(s64, s) <= tolerance("float32").rel_rms


def test_unit_lower_inverse_matches_numpy_and_autodiff():
  rng = np.random.default_rng(0)
  inverse = jax.jit(chunked.unit_lower_inverse)
  for c in (5, 64):
    a = jnp.asarray(np.tril(rng.normal(size=(3, c, c)) * 0.3, -1), jnp.float32)
    want = np.linalg.inv(np.eye(c) + np.asarray(a, np.float64))
    assert_close(want, inverse(a), "float32", what=f"inverse C={c}")
  # The closed-form VJP against autodiff of the block substitution itself.
  cot = jnp.asarray(rng.normal(size=(3, 24, 24)), jnp.float32)
  a = jnp.asarray(np.tril(rng.normal(size=(3, 24, 24)) * 0.3, -1), jnp.float32)
  vjp_of = lambda f: jax.jit(lambda a, ct: jax.vjp(f, a)[1](ct)[0])  # pylint: disable=unnecessary-lambda-assignment
  g_closed = vjp_of(chunked.unit_lower_inverse)(a, cot)
  g_auto = vjp_of(chunked._unit_lower_inverse_impl)(a, cot)  # pylint: disable=protected-access
  assert_close(g_auto, g_closed, "float32_grad", what="inverse vjp")


@pytest.mark.slow  # Not the default path (autodiff is faster here); see kernels benchmark.
def test_custom_vjp_variant_matches_oracle():
  args = make_inputs(3, 2, 75, 2, 16, 60, "moderate", "uniform")
  cts = cotangents(3, 2, 75, 2, 16, 60)
  ref = fwd_bwd(args, cts, "reference")

  def run(*a):
    return chunked.gated_delta_rule_chunked(*a[:5], initial_state=a[5], chunk_size=32, use_custom_vjp=True,
                                            form="parallel")

  (o, s), vjp = jax.vjp(run, *args)
  assert_matches(ref, (o, s, vjp(cts)), "custom_vjp")


@pytest.mark.timeout(300)
def test_parallel_form_matches_oracle():
  # The chunk-parallel form (no longer the default) at a grid shape with
  # strong decay and an odd length.
  args = make_inputs(12, 2, 75, 4, 16, 16, "strong", "uniform")
  cts = cotangents(12, 2, 75, 4, 16, 16)

  def run(*a):
    return chunked.gated_delta_rule_chunked(*a[:5], initial_state=a[5], chunk_size=32, form="parallel")

  (o, s), vjp = jax.jit(lambda *a: jax.vjp(run, *a))(*args)
  assert_matches(fwd_bwd(args, cts, "reference"), (o, s, vjp(cts)), "parallel form")


def test_unknown_form_raises():
  args = make_inputs(1, 1, 4, 1, 4, 4)
  with pytest.raises(ValueError, match="form"):
    chunked.gated_delta_rule_chunked(*args[:5], form="blocked")


# ---------------------------------------------------------------------------
# Numerical regimes.


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_no_nan_or_inf_in_extreme_regimes(impl):
  # log_alpha = -1000 per token: exp(G) underflows, exp(-G) would overflow.
  # log_alpha = 0 with beta in {0, 1}: the gate-at-one regime of fla #389.
  b, t, h, dk, dv = 2, 64, 4, 64, 60  # A grid shape (compiled once).
  args = make_inputs(11, b, t, h, dk, dv, "zero", "uniform")
  la = jnp.concatenate([jnp.full((b, t // 2, h), -1000.0, jnp.float32), jnp.zeros((b, t // 2, h))], axis=1)
  be = jnp.asarray(np.tile([0.0, 1.0], t // 2)[None, :, None].repeat(h, 2).repeat(b, 0), jnp.float32)
  args = args[:3] + [la, be, args[5]]
  cts = cotangents(11, b, t, h, dk, dv)
  o, s, grads = fwd_bwd(args, cts, impl)
  for x in (o, s) + tuple(grads):
    assert np.all(np.isfinite(np.asarray(x)))
  assert_matches(fwd_bwd(args, cts, "reference"), (o, s, grads), f"{impl} extreme")


@pytest.mark.parametrize("impl", SLOW_PALLAS)
def test_chunk_size_invariance(impl):
  # Same shape as a grid case run at chunk 32 (compiled once); 24 is not a
  # power of two (the inverse pads it to 32).
  args = make_inputs(5, 2, 75, 4, 16, 16, "moderate", "uniform")
  cts = cotangents(5, 2, 75, 4, 16, 16)
  base = fwd_bwd(args, cts, impl, 32)
  for chunk in (16, 64):
    assert_matches(base, fwd_bwd(args, cts, impl, chunk), f"{impl} chunk {chunk} vs 32")


@pytest.mark.slow
def test_chunk_size_not_power_of_two():
  args = make_inputs(5, 2, 75, 4, 16, 16, "moderate", "uniform")
  cts = cotangents(5, 2, 75, 4, 16, 16)
  assert_matches(fwd_bwd(args, cts, "reference"), fwd_bwd(args, cts, "chunked", 24), "chunk 24")


# ---------------------------------------------------------------------------
# Decoding, composition, dtypes.


@pytest.mark.parametrize("impl", ["chunked", pytest.param("reference", marks=pytest.mark.slow)])
def test_steps_equal_sequence(impl):
  q, k, v, la, be, s0 = make_inputs(8, 2, 20, 3, 16, 60, "moderate", "uniform")
  o_seq, s_seq = gated_delta_rule(q, k, v, la, be, initial_state=s0, impl=impl, chunk_size=16)
  step = jax.jit(gated_delta_step)
  s, outs = s0, []
  for t in range(q.shape[1]):
    o_t, s = step(q[:, t], k[:, t], v[:, t], la[:, t], be[:, t], s)
    outs.append(o_t)
  assert_close(o_seq, jnp.stack(outs, axis=1), "float32", what="o")
  assert_close(s_seq, s, "float32", what="state")


def test_jit_vmap_grad_compose():
  # An extra leading axis mapped by vmap over the whole gradient, under jit,
  # against per-example oracle gradients.
  argsets = [make_inputs(20 + i, 1, 40, 2, 16, 16, "moderate", "uniform") for i in range(2)]
  stacked = [jnp.stack(xs) for xs in zip(*argsets)]

  def loss(q, k, v, la, be, s0, impl):
    o, s = gated_delta_rule(q, k, v, la, be, initial_state=s0, impl=impl, chunk_size=16)
    return jnp.sum(o * o) + jnp.sum(jnp.sin(s))

  grad = jax.grad(functools.partial(loss, impl="chunked"), argnums=tuple(range(6)))
  batched = jax.jit(jax.vmap(grad))(*stacked)
  ref_grad = jax.jit(jax.grad(functools.partial(loss, impl="reference"), argnums=tuple(range(6))))
  for i, args in enumerate(argsets):
    want = ref_grad(*args)
    for name, w, g in zip(ARG_NAMES, want, [g[i] for g in batched]):
      assert_close(w, g, "float32_grad", metric="rel_rms", what=f"vmap d{name}")


@pytest.mark.parametrize("impl", SLOW_PALLAS)
def test_bfloat16_inputs_float32_state(impl):
  args = make_inputs(9, 2, 70, 2, 64, 64, "moderate", "uniform", dtype=jnp.bfloat16)

  @jax.jit
  def run(args):
    (o, s), vjp = jax.vjp(lambda q, v: gated_delta_rule(q, args[1], v, *args[3:5], initial_state=args[5],
                                                         impl=impl), args[0], args[2])
    return o, s, vjp((jnp.ones_like(o), jnp.ones_like(s)))

  o, s, grads = run(args)
  assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
  # The oracle on the same (bf16-rounded) values in float32.
  up = [x.astype(jnp.float32) for x in args]
  o_ref, s_ref = gated_delta_rule(*up[:5], initial_state=up[5], impl="reference")
  assert_close(o_ref, o, "bfloat16", metric="rel_rms", what="o")
  assert_close(s_ref, s, "float32", metric="rel_rms", what="state")


# ---------------------------------------------------------------------------
# Implementation choice.


def test_resolve_impl():
  assert api.resolve_impl("auto", backend="cpu") is api.Impl.CHUNKED
  assert api.resolve_impl(api.Impl.AUTO, backend="gpu") is api.Impl.PALLAS
  assert api.resolve_impl("auto", backend="tpu") is api.Impl.PALLAS
  assert api.resolve_impl(api.Impl.REFERENCE) is api.Impl.REFERENCE
  assert api.resolve_impl("pallas") is api.Impl.PALLAS
  assert api.resolve_impl("auto") is (api.Impl.CHUNKED if jax.default_backend() == "cpu"
                                      else api.Impl.PALLAS)


def test_auto_and_enum_run_the_resolved_impl():
  args = make_inputs(4, 1, 33, 1, 16, 16)
  impl, chunk = api.auto_choice(33)
  assert api.resolve_impl("auto", t=33) is impl
  want = gated_delta_rule(*args[:5], initial_state=args[5], impl=impl, chunk_size=chunk)
  for auto in ("auto", api.Impl.AUTO):
    # The caller's chunk size is not read by "auto" on cpu (the table's is used).
    got = gated_delta_rule(*args[:5], initial_state=args[5], impl=auto, chunk_size=7)
    np.testing.assert_array_equal(np.asarray(want[0]), np.asarray(got[0]))


def test_auto_table_is_well_formed():
  # Buckets ascending from the shortest training window; every row exact and runnable.
  keys = list(api.AUTO_TABLE_CPU)
  assert keys == sorted(keys) and keys[0] >= 1
  for name, chunk in api.AUTO_TABLE_CPU.values():
    assert name in ("reference", "chunked")
    assert (chunk is None) == (name == "reference")
  assert api.auto_choice(keys[0], "cpu") == (api.Impl(api.AUTO_TABLE_CPU[keys[0]][0]), api.AUTO_TABLE_CPU[keys[0]][1])
  assert api.auto_choice(keys[-1] + 1, "cpu") == (api.Impl.CHUNKED, api.LONG_CHUNK_CPU)
  assert api.auto_choice(None, "cpu") == (api.Impl.CHUNKED, api.LONG_CHUNK_CPU)
  assert api.auto_choice(16, "gpu") == (api.Impl.PALLAS, None)
  assert api.auto_choice(16, "tpu")[0] is api.Impl.PALLAS


def test_auto_matches_oracle_at_training_windows():
  # The short windows the table chooses for, forward and backward, vs the oracle.
  for t in (16, 24):
    args = make_inputs(30 + t, 4, t, 2, 16, 16, "moderate", "uniform")
    cts = cotangents(30 + t, 4, t, 2, 16, 16)
    assert_matches(fwd_bwd(args, cts, "reference"), fwd_bwd(args, cts, "auto"), f"auto T={t}")


# ---------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, never a silent broadcast.

_B, _T, _H, _DK, _DV = 2, 5, 3, 4, 6


def _good():
  z = lambda *s: jnp.zeros(s, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
  return dict(q=z(_B, _T, _H, _DK), k=z(_B, _T, _H, _DK), v=z(_B, _T, _H, _DV),
              log_alpha=z(_B, _T, _H), beta=z(_B, _T, _H), initial_state=z(_B, _H, _DK, _DV))


BAD_SEQUENCE = [
    ("k", dict(k=jnp.zeros((_B, _T, _H, _DK + 1))), "k"),
    ("k_broadcastable", dict(k=jnp.zeros((1, _T, _H, _DK))), "k"),
    ("v_time", dict(v=jnp.zeros((_B, _T + 1, _H, _DV))), "v"),
    ("q_rank", dict(q=jnp.zeros((_B, _T, _H * _DK))), "q"),
    ("v_rank", dict(v=jnp.zeros((_B, _T, _H, _DV, 1))), "v"),
    ("log_alpha_shape", dict(log_alpha=jnp.zeros((_B, _T, 1))), "log_alpha"),
    ("log_alpha_rank", dict(log_alpha=jnp.zeros((_B, _T, _H, 1))), "log_alpha"),
    ("beta_shape", dict(beta=jnp.zeros((_B, _T))), "beta"),
    ("log_alpha_positive", dict(log_alpha=jnp.full((_B, _T, _H), 0.1)), "log_alpha"),
    ("log_alpha_nan", dict(log_alpha=jnp.full((_B, _T, _H), jnp.nan)), "log_alpha"),
    # -inf (a gate of exactly 0) is NaN in the chunked forms' masked sums of log-gates.
    ("log_alpha_neg_inf", dict(log_alpha=jnp.zeros((_B, _T, _H)).at[1, 2, 0].set(-jnp.inf)), "log_alpha"),
    ("beta_nan", dict(beta=jnp.zeros((_B, _T, _H)).at[0, 0, 0].set(jnp.nan)), "beta"),
    ("beta_inf", dict(beta=jnp.zeros((_B, _T, _H)).at[0, 4, 2].set(jnp.inf)), "beta"),
    ("beta_negative", dict(beta=jnp.full((_B, _T, _H), -1e-3)), "beta"),
    ("beta_above_two", dict(beta=jnp.full((_B, _T, _H), 2.5)), "beta"),
    ("state_shape", dict(initial_state=jnp.zeros((_B, _H, _DV, _DK))), "initial_state"),
    ("state_rank", dict(initial_state=jnp.zeros((_H, _DK, _DV))), "initial_state"),
    ("q_int", dict(q=jnp.zeros((_B, _T, _H, _DK), jnp.int32)), "q"),
    ("empty_t", dict(q=jnp.zeros((_B, 0, _H, _DK)), k=jnp.zeros((_B, 0, _H, _DK)),
                     v=jnp.zeros((_B, 0, _H, _DV)), log_alpha=jnp.zeros((_B, 0, _H)),
                     beta=jnp.zeros((_B, 0, _H))), "T >= 1"),
    ("not_array", dict(q=[[0.0]]), "q"),
]


@pytest.mark.parametrize("impl", ["reference", "chunked", "pallas"])
@pytest.mark.parametrize("label,override,needle", BAD_SEQUENCE, ids=[c[0] for c in BAD_SEQUENCE])
def test_bad_sequence_inputs(label, override, needle, impl):
  del label
  kw = _good() | override
  pos = [kw.pop(n) for n in ("q", "k", "v", "log_alpha", "beta")]
  with pytest.raises(ValueError, match=needle):
    gated_delta_rule(*pos, **kw, impl=impl)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(impl="triton"), "impl"), (dict(impl=None), "impl"), (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=16.0), "chunk_size"), (dict(chunk_size=True), "chunk_size"),
    (dict(scale=float("nan")), "scale"), (dict(scale="1"), "scale"),
    (dict(scale=jnp.ones(2)), "scale"),
])
def test_bad_options(kwargs, needle):
  kw = _good()
  pos = [kw.pop(n) for n in ("q", "k", "v", "log_alpha", "beta")]
  with pytest.raises(ValueError, match=needle):
    gated_delta_rule(*pos, **kw, **kwargs)


@pytest.mark.parametrize("name,bad", [
    ("q", jnp.zeros((_B, _H))), ("k", jnp.zeros((_B, _H, _DK + 1))), ("v", jnp.zeros((_B, _H + 1, _DV))),
    ("log_alpha", jnp.zeros((_B, _H, 1))), ("log_alpha", jnp.ones((_B, _H))), ("beta", jnp.zeros((_B,))),
    ("log_alpha", jnp.full((_B, _H), -jnp.inf)), ("beta", jnp.full((_B, _H), jnp.nan)),
    ("beta", jnp.full((_B, _H), 3.0)),
    ("state", jnp.zeros((_B, _H, _DK, _DV + 1))), ("state", jnp.zeros((_B, _H, _DK))),
])
def test_bad_step_inputs(name, bad):
  kw = {n: x[:, 0] for n, x in _good().items() if n != "initial_state"}
  kw["state"] = _good()["initial_state"]
  kw[name] = bad
  with pytest.raises(ValueError, match=name):
    gated_delta_step(kw["q"], kw["k"], kw["v"], kw["log_alpha"], kw["beta"], kw["state"])


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_value_checks_accept_the_range_ends(impl):
  # beta in [0, 2] and log_alpha <= 0 are closed ranges: 0, 2, a huge finite decay pass.
  kw = _good()
  kw["beta"] = jnp.zeros((_B, _T, _H)).at[:, ::2].set(2.0)
  kw["log_alpha"] = jnp.zeros((_B, _T, _H)).at[:, 1].set(-1e30)
  pos = [kw.pop(n) for n in ("q", "k", "v", "log_alpha", "beta")]
  o, s = gated_delta_rule(*pos, **kw, impl=impl)
  assert np.all(np.isfinite(np.asarray(o))) and np.all(np.isfinite(np.asarray(s)))


def test_traced_beta_is_not_value_checked():
  # Documented: under jit the beta check cannot run; values pass unchanged
  # (not clipped). beta = 3 on a repeated unit key overshoots: writing v = 1
  # twice from S = 0 gives S = 3, then 3 + 3 (1 - 3) = -3.
  k = jnp.zeros((1, 2, 1, 2)).at[..., 0].set(1.0)
  v = jnp.ones((1, 2, 1, 1))
  la = jnp.zeros((1, 2, 1))
  with pytest.raises(ValueError, match="beta"):
    gated_delta_rule(k, k, v, la, jnp.full((1, 2, 1), 3.0), impl="chunked")
  _, s = jax.jit(lambda be: gated_delta_rule(k, k, v, la, be, impl="chunked"))(jnp.full((1, 2, 1), 3.0))
  np.testing.assert_allclose(np.asarray(s)[0, 0, 0, 0], -3.0, rtol=1e-6)


def test_traced_log_alpha_is_not_value_checked():
  # Documented: under jit the value check cannot run; values pass unchanged
  # (not clipped), so a positive gate grows the state exactly as the math says.
  q = jnp.zeros((1, 2, 1, 2)).at[..., 0].set(1.0)
  v = jnp.ones((1, 2, 1, 1))
  la = jnp.full((1, 2, 1), 0.5)
  be = jnp.array([[[1.0], [0.0]]])
  _, s = jax.jit(lambda la: gated_delta_rule(q, q, v, la, be, impl="chunked"))(la)
  np.testing.assert_allclose(np.asarray(s)[0, 0, 0, 0], np.exp(0.5), rtol=1e-6)


@pytest.mark.timeout(300)
def test_huge_decays_among_small_gates_match_oracle():
  # Decays of -1e4 between ordinary gates inside one chunk: forming G_i - G_j as a
  # difference of cumulative sums loses the small gates (float32 ulp ~1e-3 at 1e4),
  # a 1e-2 rel-RMS error in dbeta before the chunked form summed decays directly.
  args = make_inputs(7, 1, 64, 1, 64, 16, gate="extreme", beta="uniform")
  cts = cotangents(7, 1, 64, 1, 64, 16)
  ref = fwd_bwd(args, cts, "reference")
  assert_matches(ref, fwd_bwd(args, cts, "chunked"), "chunked extreme")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_inside_shard_map_with_vma_checks(impl):
  # Data-parallel callers run the rule per shard under jax.shard_map with the
  # default check_vma=True: every loop carry must take the inputs' varying axes.
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  args = make_inputs(11, 4, 40, 2, 16, 16)[:5]

  def loss(q, k, v, la, be):
    o, s = gated_delta_rule(q, k, v, la, be, impl=impl, chunk_size=16)
    return jnp.sum(o ** 2) + jnp.sum(s ** 2)

  sharded = jax.jit(jax.shard_map(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), mesh=mesh, in_specs=P("data"),
                                  out_specs=P("data")))(*args)
  plain = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*args)
  assert_close(plain, sharded, "float32", metric="rel_rms", what=f"{impl} under shard_map")
