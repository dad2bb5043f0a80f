"""sleep_consolidate against an explicit Python loop of blocks_fn."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sleep_jax.config import ModelConfig
from sleep_jax.consolidate import sleep_consolidate
from sleep_jax.fast_weights import init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.testing import assert_close


def _blocks_fn(params, h, fw):
  """A toy pass: hidden update reads the fast weights, fast weights decay and write."""
  w, u = params
  read = jnp.einsum("bd,bde->be", h, fw["S"])
  h = jnp.tanh(h @ w + read)
  s = 0.9 * fw["S"] + 0.1 * jnp.einsum("bd,be->bde", h, h @ u)
  return h, {"S": s, "count": fw["count"] + 1.0}


def _loop(params, h, fw, n, grad_passes=None):
  for i in range(n):
    if grad_passes is not None and i == n - grad_passes:
      h, fw = jax.lax.stop_gradient((h, fw))
    h, fw = _blocks_fn(params, h, fw)
  return fw, h


def _inputs(b=3, d=5, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  params = (jax.random.normal(ks[0], (d, d)) / np.sqrt(d), jax.random.normal(ks[1], (d, d)) / np.sqrt(d))
  h = jax.random.normal(ks[2], (b, d))
  fw = {"S": 0.1 * jax.random.normal(ks[3], (b, d, d)), "count": jnp.zeros(())}
  return params, h, fw


def _objective(fw, h):
  return jnp.sum(fw["S"] ** 2) + jnp.sum(jnp.sin(h))


@pytest.mark.parametrize("remat", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_values_and_grads_match_loop(n, remat):
  params, h, fw = _inputs()

  def ours(params, h, fw):
    out = sleep_consolidate(functools.partial(_blocks_fn, params), h, fw, n, remat=remat, return_hidden=True)
    return _objective(out.fast_weights, out.hidden)

  def loop(params, h, fw):
    return _objective(*_loop(params, h, fw, n))

  out = sleep_consolidate(functools.partial(_blocks_fn, params), h, fw, n, remat=remat, return_hidden=True)
  out_fw, out_h = out.fast_weights, out.hidden
  assert out.passes is None
  ref_fw, ref_h = _loop(params, h, fw, n)
  assert_close(ref_fw, out_fw, what="fast weights")
  assert_close(ref_h, out_h, what="hidden")
  assert float(out_fw["count"]) == n
  g_ours = jax.grad(ours, argnums=(0, 1, 2))(params, h, fw)
  g_loop = jax.grad(loop, argnums=(0, 1, 2))(params, h, fw)
  assert_close(g_loop, g_ours, "float32_grad", what="grads")


def test_zero_passes_is_identity():
  params, h, fw = _inputs()
  out = sleep_consolidate(functools.partial(_blocks_fn, params), h, fw, 0, return_hidden=True)
  out_fw, out_h = out.fast_weights, out.hidden
  assert out_h is h and out_fw is fw
  assert sleep_consolidate(functools.partial(_blocks_fn, params), h, fw, 0).fast_weights is fw


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_grad_passes_equals_stop_gradient_loop(k):
  params, h, fw = _inputs(seed=1)
  n = 4

  def ours(params, h, fw):
    out = sleep_consolidate(functools.partial(_blocks_fn, params), h, fw, n, grad_passes=k, return_hidden=True)
    return _objective(out.fast_weights, out.hidden)

  def loop(params, h, fw):
    return _objective(*_loop(params, h, fw, n, grad_passes=k if k < n else None))

  g_ours = jax.grad(ours, argnums=(0, 1, 2))(params, h, fw)
  g_loop = jax.grad(loop, argnums=(0, 1, 2))(params, h, fw)
  assert_close(g_loop, g_ours, "float32_grad", what=f"grads k={k}")
  if k < n:  # truncation really cuts the path to the inputs
    assert float(jnp.abs(g_ours[1]).max()) == 0.0
    # and the full-depth gradient differs from the truncated one.
    g_full = jax.grad(lambda hh: _objective(*_loop(params, hh, fw, n)))(h)
    assert float(jnp.abs(g_full).max()) > 0.0


def test_jit_vmap_grad_compose():
  params, h, fw = _inputs(b=4)
  n = 3

  def single(params, h1, s1):
    fw1 = {"S": s1[None], "count": jnp.zeros(())}
    out = sleep_consolidate(functools.partial(_blocks_fn, params), h1[None], fw1, n).fast_weights
    return jnp.sum(out["S"] ** 2)

  batched = jax.jit(jax.vmap(jax.grad(single, argnums=(1, 2)), in_axes=(None, 0, 0)))
  gh, gs = batched(params, h, fw["S"])
  for i in range(h.shape[0]):
    rh, rs = jax.grad(lambda hh, ss: jnp.sum(_loop(params, hh[None], {"S": ss[None], "count": 0.0}, n)[0]["S"] ** 2),
                      argnums=(0, 1))(h[i], fw["S"][i])
    assert_close(rh, gh[i], "float32_grad", what=f"vmap grad h[{i}]")
    assert_close(rs, gs[i], "float32_grad", what=f"vmap grad S[{i}]")


def test_inside_shard_map_two_devices():
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  params, h, fw = _inputs(b=4)
  n = 3

  def local(params, h, s):
    out = sleep_consolidate(functools.partial(_blocks_fn, params), h, {"S": s, "count": jnp.zeros(())}, n)
    return out.fast_weights["S"]

  sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data")))
  out = sharded(params, h, fw["S"])
  ref = _loop(params, h, fw, n)[0]["S"]
  assert_close(ref, out, what="shard_map")

  # Gradient wrt replicated params: pmean of the loss (ENV.md G2), so no extra pmean on the grads.
  def loss_sharded(params, h, s):
    def f(params, h, s):
      return jax.lax.pmean(jnp.mean(local(params, h, s) ** 2), "data")
    return jax.shard_map(f, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())(params, h, s)

  g = jax.jit(jax.grad(loss_sharded))(params, h, fw["S"])
  g_ref = jax.grad(lambda p: jnp.mean(_loop(p, h, fw, n)[0]["S"] ** 2))(params)
  assert_close(g_ref, g, "float32_grad", what="shard_map grad")


@pytest.mark.slow  # the windowed tests also run sleep_consolidate over a merged NNX model
def test_nnx_model_through_split_merge():
  cfg = ModelConfig(vocab_size=7, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_impl="reference")
  model = HybridLM(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(2), (2, 5), 0, 7)
  positions = jnp.arange(5, dtype=jnp.int32)
  fw0 = init_fast_weights(cfg, 2)
  n = 3

  def blocks_fn(state, h, fw):
    h, fw, _ = nnx.merge(graphdef, state).run_blocks(h, fw, positions, window=5)
    return h, fw

  @jax.jit
  def ours(state):
    h = nnx.merge(graphdef, state).embed_tokens(tokens)
    out = sleep_consolidate(functools.partial(blocks_fn, state), h, fw0, n, return_hidden=True)
    return out.fast_weights, out.hidden

  out_fw, out_h = ours(state)
  @jax.jit
  def loop(state):
    m = nnx.merge(graphdef, state)
    h, fw = m.embed_tokens(tokens), fw0
    for _ in range(n):
      h, fw, _ = m.run_blocks(h, fw, positions, window=5)
    return h, fw

  h, fw = loop(state)
  assert_close(fw, out_fw, what="nnx fast weights")
  assert_close(h, out_h, what="nnx hidden")
  assert float(jnp.abs(fw.states[0]).max()) > 0


@pytest.mark.parametrize("bad", [dict(n_sleep_passes=-1), dict(n_sleep_passes=1.5), dict(n_sleep_passes=True),
                                 dict(n_sleep_passes=2, grad_passes=0), dict(n_sleep_passes=2, blocks_fn=3)])
def test_bad_arguments(bad):
  params, h, fw = _inputs()
  kwargs = dict(blocks_fn=functools.partial(_blocks_fn, params), h=h, fast_weights=fw)
  kwargs.update(bad)
  with pytest.raises(ValueError, match="n_sleep_passes|grad_passes|blocks_fn"):
    sleep_consolidate(**kwargs)


class _DropoutPass(nnx.Module):
  """A toy pass with an RNG stream: dropout on the hidden update, a fast-weight write."""

  def __init__(self, d, *, rngs):
    self.proj = nnx.Linear(d, d, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, h, fw):
    h = jnp.tanh(self.drop(self.proj(h)) + jnp.einsum("bd,bde->be", h, fw["S"]))
    return h, {"S": 0.9 * fw["S"] + 0.1 * jnp.einsum("bd,be->bde", h, h), "count": fw["count"] + 1.0}


@pytest.mark.parametrize("remat", [True, False])
def test_nnx_module_with_dropout_runs_inside_the_scan(remat):
  # A plain lax.scan over the bound method raised "Cannot mutate RngCount from a different trace level".
  _, h, fw = _inputs()
  n = 3

  def ours(layer, h, fw):
    out = sleep_consolidate(layer.__call__, h, fw, n, remat=remat, return_hidden=True)
    return _objective(out.fast_weights, out.hidden), out

  def loop(layer, h, fw):
    for _ in range(n):
      h, fw = layer(h, fw)
    return _objective(fw, h), (fw, h)

  layer, ref_layer = _DropoutPass(5, rngs=nnx.Rngs(0)), _DropoutPass(5, rngs=nnx.Rngs(0))
  (value, out), grads = nnx.jit(nnx.value_and_grad(ours, has_aux=True))(layer, h, fw)
  (ref_value, (ref_fw, ref_h)), ref_grads = nnx.value_and_grad(loop, has_aux=True)(ref_layer, h, fw)
  assert_close(ref_fw, out.fast_weights, what="fast weights")
  assert_close(ref_h, out.hidden, what="hidden")
  assert_close(ref_grads, grads, "float32_grad", what="parameter grads")
  # The passes drew three different masks, and the module's RNG count advanced as the loop's did.
  assert int(layer.drop.rngs.count[...]) == int(ref_layer.drop.rngs.count[...]) == n
  again = nnx.jit(ours)(_DropoutPass(5, rngs=nnx.Rngs(0)), h, fw)[1]
  np.testing.assert_array_equal(np.asarray(again.hidden), np.asarray(out.hidden))  # deterministic per seed
