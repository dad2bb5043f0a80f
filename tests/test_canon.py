"""Canon layers (ModelConfig.canon_size): zero-init identity, restarts, decoding, gradients, validation.

Streaming with Canon layers against the windowed forward (hard and sliding eviction, N = 1 and 2) is in
tests/test_session.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.testing import assert_close
from sleep_jax.train.config import OptimizerConfig
from sleep_jax.train.optimizer import ADAMW, describe_param_groups
from sleep_jax.windowed import windowed_forward

VOCAB = 7


def _config(**kw):
  base = dict(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
              gdn_impl="reference")
  base.update(kw)
  return ModelConfig(**base)


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)


def set_random_canon(model, seed=0, scale=0.5):
  """Draws nonzero Canon weights into every block of ``model`` (in place) and returns it."""
  rng = np.random.default_rng(seed)
  for block in model.blocks:
    for param in (block.canon_conv_a, block.canon_conv_c):
      param[...] = jnp.asarray(scale * rng.normal(size=param[...].shape), jnp.float32)
  return model


def _jit(model, fn):
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda st, *args: fn(nnx.merge(graphdef, st), *args))
  return lambda *args: jitted(state, *args)


def canon_reference(x, w, segment=None):
  """``x + conv(x)`` by loops: ``out[t] = x[t] + sum_j w[j] x[t - c + 1 + j]``, reading only from the
  current segment (the conv restarts from zeros every ``segment`` positions)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  c, t_len = w.shape[0], x.shape[1]
  out = x.copy()
  for t in range(t_len):
    start = 0 if segment is None else t // segment * segment
    for j in range(c):
      s = t - (c - 1) + j
      if s >= start:
        out[:, t] += w[j] * x[:, s]
  return out


def test_zero_initialised_canon_layers_compute_the_model_without_them():
  plain = HybridLM(_config(), rngs=nnx.Rngs(0))
  canon = HybridLM(_config(canon_size=4), rngs=nnx.Rngs(0))
  # The Canon weights are zeros and draw nothing: every other parameter is the plain model's.
  p0 = nnx.to_flat_state(nnx.state(plain, nnx.Param))
  p4 = nnx.to_flat_state(nnx.state(canon, nnx.Param))
  extra = {k: v for k, v in p4 if k not in dict(p0)}
  assert sorted(extra) == sorted((("blocks", i, name) for i in range(2) for name in ("canon_conv_a",
                                                                                     "canon_conv_c")))
  assert all(v[...].shape == (4, 16) and not np.any(np.asarray(v[...])) for v in extra.values())
  for k, v in p0:
    np.testing.assert_array_equal(np.asarray(v[...]), np.asarray(dict(p4)[k][...]), err_msg=str(k))
  tokens = _tokens(2, 7)
  sleep = SleepConfig(window=3, n_passes=2, eviction="sliding")
  out = [_jit(m, lambda m, t: (m(t)[0], windowed_forward(m, t, None, sleep).logits))(tokens) for m in (plain, canon)]
  for a, b, what in zip(*out, ("plain forward", "windowed forward, N = 2")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("kind", ["attn", "gdn"])
@pytest.mark.parametrize("windows", [None, "hard"])
def test_block_applies_canon_layers_as_the_loop_reference(kind, windows):
  cfg = _config(layout=(kind,), canon_size=3)
  model = set_random_canon(HybridLM(cfg, rngs=nnx.Rngs(0)), seed=1)
  block = model.blocks[0]
  x = jax.random.normal(jax.random.key(2), (2, 8, 16), jnp.float32)
  positions = jnp.arange(8, dtype=jnp.int32)
  window = 3 if windows else None
  state = model.init_fast_weights(2).states[0] if kind == "gdn" else None
  got = block(x, positions, state=state, window=window, windows=windows)[0]
  # The block's own pieces, with the Canon layers done by loops (restarting every window under "hard").
  wa, wc = np.asarray(block.canon_conv_a[...]), np.asarray(block.canon_conv_c[...])
  y = jnp.asarray(canon_reference(block.mixer_norm(x), wa, window), jnp.float32)
  if kind == "attn":
    y, _ = block.mixer(y, positions, window=window, windows=windows)
  else:
    y, _ = block.mixer(y, state, segment=window)
  h = x + y
  z = jnp.asarray(canon_reference(block.mlp_norm(h), wc, window), jnp.float32)
  assert_close(h + block.mlp(z), got, what=f"{kind} block, windows={windows}")


def test_canon_restarts_at_every_window_of_the_fused_forward():
  """N = 1: the whole-sequence forward with eviction as masks (the Canon layers restarting at each window
  start) equals the window loop, which calls the blocks once per window."""
  model = set_random_canon(HybridLM(_config(canon_size=3), rngs=nnx.Rngs(0)), seed=3)
  tokens = _tokens(2, 8, seed=1)
  for eviction in ("hard", "sliding"):
    fused, loop = (SleepConfig(window=3, eviction=eviction, fuse_unslept=f) for f in (True, False))
    a, b = _jit(model, lambda m, t: (windowed_forward(m, t, None, fused).logits,
                                     windowed_forward(m, t, None, loop).logits))(tokens)
    assert_close(b, a, what=f"fused vs window loop, {eviction}")
  # The Canon weights matter: without them the logits differ.
  plain = HybridLM(_config(), rngs=nnx.Rngs(0))
  assert float(jnp.abs(_jit(plain, lambda m, t: windowed_forward(m, t, None, fused).logits)(tokens) - a).max()) > 1e-3


def test_decode_steps_carry_the_canon_histories():
  model = set_random_canon(HybridLM(_config(canon_size=3), rngs=nnx.Rngs(0)), seed=4)
  tokens = _tokens(2, 6, seed=2)

  def both(m, tokens):
    full, fw_full = m(tokens)
    fw, kv, conv = m.init_fast_weights(2), m.init_kv_caches(2, 6), m.init_conv_histories(2)
    steps = []
    for t in range(6):
      lg, fw, kv, conv = m.decode_step(tokens[:, t], jnp.int32(t), fw, kv, conv, window=None)
      steps.append(lg)
    return full, fw_full, jnp.stack(steps, 1), fw, conv

  full, fw_full, steps, fw, conv = _jit(model, both)(tokens)
  assert_close(full, steps, what="decoded logits")
  assert_close(fw_full, fw, what="fast weights")
  # One GDN history, then Canon-A and Canon-C of each block: [B, c - 1, d_model].
  assert [c.shape for c in conv] == [(2, 3, 48)] + [(2, 2, 16)] * 4  # conv_size 4, canon_size 3
  with pytest.raises(ValueError, match="conv_histories must hold 5 arrays"):
    model.decode_step(tokens[:, 0], jnp.int32(0), model.init_fast_weights(2), model.init_kv_caches(2, 6),
                      model.init_conv_histories(2)[:1])


def test_gradients_reach_zero_initialised_canon_weights():
  model = HybridLM(_config(canon_size=3), rngs=nnx.Rngs(0))
  tokens = _tokens(2, 6, seed=5)

  def loss(m):
    logits = m(tokens)[0][:, :-1]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

  graphdef, params = nnx.split(model, nnx.Param)
  grads = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p))))(params)
  for i in range(2):
    for name in ("canon_conv_a", "canon_conv_c"):
      g = np.asarray(grads["blocks"][i][name][...])
      assert g.shape == (3, 16) and np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6, (i, name)
  # 2-D, but convolution taps: AdamW, not Muon (the default patterns match "conv").
  groups = describe_param_groups(nnx.state(model, nnx.Param), OptimizerConfig())
  assert sorted(p for p in groups[ADAMW] if "canon" in p) == [f"blocks/{i}/canon_conv_{x}" for i in range(2)
                                                              for x in "ac"]


def test_canon_size_is_validated():
  assert _config().canon_size == 0
  assert _config(canon_size=np.int64(2)).canon_size == 2 and type(_config(canon_size=np.int64(2)).canon_size) is int
  for bad in (-1, 1.5, 2.0, True, "4", None):
    with pytest.raises(ValueError, match=r"ModelConfig\.canon_size must be an integer >= 0"):
      _config(canon_size=bad)
  assert dataclasses.replace(_config(), canon_size=1).canon_size == 1
