"""Layers and HybridLM against brute-force references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig
from sleep_jax.fast_weights import FastWeights, init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.nn.attention import attention_mask
from sleep_jax.nn.gated_deltanet import causal_conv
from sleep_jax.nn.rope import apply_rope
from sleep_jax.testing import assert_close


def _config(**kw):
  base = dict(vocab_size=7, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
              gdn_impl="reference")
  base.update(kw)
  return ModelConfig(**base)


def test_attention_mask_brute_force():
  q_pos = np.arange(5, 9)
  k_pos = np.array([-1, 2, 3, 4, 5, 6, 7, 8])
  for window in (None, 1, 3):
    ref = np.array([[k >= 0 and k <= q and (window is None or k > q - window) for k in k_pos] for q in q_pos])
    np.testing.assert_array_equal(np.asarray(attention_mask(jnp.asarray(q_pos), jnp.asarray(k_pos), window)), ref)


def test_causal_conv_brute_force():
  rng = np.random.default_rng(0)
  x, w, hist = rng.normal(size=(2, 5, 3)), rng.normal(size=(4, 3)), rng.normal(size=(2, 3, 3))
  xp = np.concatenate([hist, x], axis=1)
  ref = np.stack([sum(w[j] * xp[:, t + j] for j in range(4)) for t in range(5)], axis=1)
  assert_close(ref, causal_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(hist)), what="conv with history")
  xp0 = np.concatenate([np.zeros((2, 3, 3)), x], axis=1)
  ref0 = np.stack([sum(w[j] * xp0[:, t + j] for j in range(4)) for t in range(5)], axis=1)
  assert_close(ref0, causal_conv(jnp.asarray(x), jnp.asarray(w)), what="conv from zeros")


def test_rope_scores_depend_on_offsets_only():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 3, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 3, 2, 8)), jnp.float32)
  pos = jnp.arange(3)

  def scores(shift):
    return jnp.einsum("bthk,bshk->bhts", apply_rope(q, pos + shift, theta=1e4), apply_rope(k, pos + shift, theta=1e4))

  assert_close(scores(0), scores(1000), what="rope shift invariance")
  assert float(jnp.abs(apply_rope(q, pos, theta=1e4) - q).max()) > 1e-3


def test_decode_steps_match_full_forward():
  # A core invariant, so in the default run: tiny shapes keep its compile short (decoding with eviction is
  # compared to the batched forward in test_session.py).
  cfg = _config()
  model = HybridLM(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, 7, dtype=jnp.int32)

  @jax.jit
  def both(state):
    m = nnx.merge(graphdef, state)
    full, fw_full = m(tokens)
    fw, kv, conv = m.init_fast_weights(2), m.init_kv_caches(2, 6), m.init_conv_histories(2)
    steps = []
    for t in range(6):
      lg, fw, kv, conv = m.decode_step(tokens[:, t], jnp.int32(t), fw, kv, conv, window=None)
      steps.append(lg)
    return full, fw_full, jnp.stack(steps, 1), fw

  full, fw_full, steps, fw = both(state)
  assert full.dtype == jnp.float32 and full.shape == (2, 6, 7)
  assert_close(full, steps, what="decoded logits")
  assert_close(fw_full, fw, what="fast weights")


def test_parameters_dtypes_and_init():
  cfg = _config(d_model=64, dtype="bfloat16", embed_init_std=1.0, tie_embeddings=True, layout=("gdn", "attn"))
  model = HybridLM(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  emb = np.asarray(model.embed.embedding[...])
  assert abs(emb.std() - 1.0) < 0.15
  assert not hasattr(model, "lm_head")
  # Shapes and dtypes only: abstract evaluation, no compile.
  logits, fw = jax.eval_shape(lambda: model(jnp.zeros((1, 3), jnp.int32)))
  assert logits.dtype == jnp.float32 and logits.shape == (1, 3, 7)
  assert isinstance(fw, FastWeights) and fw.states[0].dtype == jnp.float32
  h = jax.eval_shape(lambda: model.run_blocks(model.embed_tokens(jnp.zeros((1, 3), jnp.int32)),
                                              model.init_fast_weights(1), jnp.arange(3))[0])
  assert h.dtype == jnp.bfloat16
  assert fw.states[0].shape == (1, cfg.num_gdn_heads, cfg.gdn_head_dim, cfg.gdn_v_dim)
  small = HybridLM(_config(embed_init_std=0.02), rngs=nnx.Rngs(0))
  assert abs(np.asarray(small.embed.embedding[...]).std() - 0.02) < 0.005


def test_gdn_decay_init_sets_the_range_of_the_decay_rates():
  cfg = ModelConfig(vocab_size=7, d_model=16, layout=("gdn",) * 8, n_heads=4, head_dim=8, gdn_head_dim=8)
  slow = dataclasses.replace(cfg, gdn_decay_init=(0.02, 0.2))
  rates = lambda c: np.concatenate([np.exp(np.asarray(b.mixer.A_log[...]))
                                    for b in HybridLM(c, rngs=nnx.Rngs(0)).blocks])
  default, low = rates(cfg), rates(slow)
  assert cfg.gdn_decay_init == (1.0, 16.0) and default.min() >= 1.0 and default.max() <= 16.0
  assert low.min() >= 0.02 and low.max() <= 0.2 and default.max() - default.min() > 5  # spread, not a constant
  for bad in ((0.0, 1.0), (2.0, 1.0), (1.0,), (1.0, float("inf"))):
    with pytest.raises(ValueError, match="gdn_decay_init"):
      dataclasses.replace(cfg, gdn_decay_init=bad)


def test_fast_weights_pytree_and_init():
  cfg = _config(layout=("attn", "gdn", "gdn", "attn"))
  fw = init_fast_weights(cfg, 3)
  assert fw.n_layers == 2 and all(float(jnp.abs(s).max()) == 0 for s in fw.states)
  doubled = jax.tree.map(lambda s: s + 2, fw)
  assert isinstance(doubled, FastWeights) and float(doubled.states[1][0, 0, 0, 0]) == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    fw.states = ()
  with pytest.raises(ValueError, match="batch_size"):
    init_fast_weights(cfg, 0)


def test_unknown_block_type():
  with pytest.raises(ValueError, match="block type"):
    _config(layout=("attn", "rnn"))
  cfg = _config()
  object.__setattr__(cfg, "layout", ("attn", "rnn"))  # bypass the config's own check
  with pytest.raises(ValueError, match="block type"):
    HybridLM(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ModelConfig"):
    HybridLM({"vocab_size": 7}, rngs=nnx.Rngs(0))


def test_inserted_gdn_blocks_leave_logits_unchanged():
  from sleep_jax.config import SleepConfig
  from sleep_jax.retrofit import insert_gdn_blocks, with_passes
  from sleep_jax.windowed import windowed_forward

  cfg = _config(layout=("attn", "attn"), prelude=1)
  old = HybridLM(cfg, rngs=nnx.Rngs(0))
  new = insert_gdn_blocks(old, [1], rngs=nnx.Rngs(1))
  assert new.config.block_types == ("attn", "gdn", "attn")
  assert new.config.core_range == (1, 3)
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 7, dtype=jnp.int32)
  sleep = with_passes(SleepConfig(window=3), 2)
  assert sleep.n_passes == 2

  def logits(model):
    graphdef, state = nnx.split(model)
    fn = lambda st: windowed_forward(nnx.merge(graphdef, st), tokens, None, sleep).logits
    return jax.jit(fn)(state)

  assert_close(logits(old), logits(new), what="logits after insertion")
  # The new block can learn: its zeroed output projection gets gradients.
  graphdef, state = nnx.split(new)
  grads = jax.jit(jax.grad(lambda st: jnp.sum(jnp.sin(nnx.merge(graphdef, st)(tokens)[0]))))(state)
  assert float(jnp.abs(grads["blocks"][1]["mixer"]["o_proj"]["kernel"][...]).max()) > 0
  with pytest.raises(ValueError, match="distinct"):
    insert_gdn_blocks(old, [1, 1], rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match="positions"):
    insert_gdn_blocks(old, [9], rngs=nnx.Rngs(1))


def test_inserted_gdn_blocks_keep_a_trained_sleep_adapter():
  """A model with input re-injection keeps its adapter through insertion: the sleeping logits are unchanged."""
  from sleep_jax.config import SleepConfig
  from sleep_jax.retrofit import insert_gdn_blocks
  from sleep_jax.windowed import windowed_forward

  old = HybridLM(_config(layout=("attn", "gdn"), sleep_reinject="embedding"), rngs=nnx.Rngs(0))
  kernel = old.sleep_adapter.kernel
  kernel[...] = 0.3 * jax.random.normal(jax.random.key(5), kernel[...].shape)  # a "trained", nonzero adapter
  new = insert_gdn_blocks(old, [2], rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(np.asarray(new.sleep_adapter.kernel[...]), np.asarray(kernel[...]))
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 7, dtype=jnp.int32)
  sleep = SleepConfig(window=3, n_passes=3)
  assert_close(windowed_forward(old, tokens, None, sleep).logits, windowed_forward(new, tokens, None, sleep).logits,
               what="sleeping logits after insertion with a trained adapter")


def test_fused_gdn_projections_equal_one_matmul_per_layer_in_values_and_gradients():
  """GatedDeltaNet runs its six input projections as one matmul; the numbers are the per-layer ones."""
  from sleep_jax.nn import gated_deltanet
  gdn = gated_deltanet.GatedDeltaNet(d_model=24, n_heads=2, head_dim=8, value_dim=12, n_key_heads=1,
                                     rngs=nnx.Rngs(3))
  layers = [gdn.q_proj, gdn.k_proj, gdn.v_proj, gdn.a_proj, gdn.b_proj, gdn.g_proj]
  x = jax.random.normal(jax.random.key(0), (2, 5, 24))
  fused = gated_deltanet.fused_linear(x, layers, jnp.float32)
  assert [f.shape[-1] for f in fused] == [8, 8, 24, 2, 2, 24]
  for f, layer in zip(fused, layers):
    np.testing.assert_allclose(f, layer(x), rtol=1e-6, atol=1e-6)

  graphdef, params = nnx.split(gdn)

  def loss(params, x, separate):
    m = nnx.merge(graphdef, params)
    ls = [m.q_proj, m.k_proj, m.v_proj, m.a_proj, m.b_proj, m.g_proj]
    outs = [layer(x) for layer in ls] if separate else gated_deltanet.fused_linear(x, ls, jnp.float32)
    return sum(jnp.sum(jnp.sin(o) * (i + 1)) for i, o in enumerate(outs))

  g_fused = jax.grad(loss, argnums=(0, 1))(params, x, False)
  g_sep = jax.grad(loss, argnums=(0, 1))(params, x, True)
  # The input's gradient sums the six layers' contributions in another order: float32 rounding of sums of
  # magnitude ~10 (1e-5 absolute).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_fused, g_sep)
  assert float(jnp.abs(g_fused[0]["q_proj"]["kernel"][...]).sum()) > 0
