"""A sleepable model that is not HybridLM (sleep_jax.examples.own_model): windowed forward against a
hand-written loop of its parts, dropout inside the sleep scan, serving, and the protocol's errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax import SleepConfig, SleepSession, windowed_forward, windowed_loss
from sleep_jax.examples.own_model import OwnConfig, OwnLM
from sleep_jax.testing import assert_close

CFG = OwnConfig(vocab_size=11, d_model=16, n_blocks=2, n_heads=2, head_dim=8, mlp_width=32, dropout=0.25)


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size, dtype=jnp.int32)


def _loop(model, tokens, sleep, schedule):
  """Algorithm 1 written out by hand from the model's parts, window by window and pass by pass."""
  b, t = tokens.shape
  L = sleep.window
  fw, prefix, logits = model.init_fast_weights(b), None, []
  if sleep.eviction == "sliding":
    prefix = model.init_kv(b, L)
  for w, a in enumerate(range(0, t, L)):
    positions = jnp.arange(a, min(a + L, t), dtype=jnp.int32)
    h0 = model.embed_tokens(tokens[:, a:a + L])
    h, fw, kv = model.core(h0, fw, positions, prefix, window=L)
    logits.append(model.unembed(h))
    if schedule[w]:
      for _ in range(sleep.n_passes - 1):
        h, fw, kv = model.core(h, fw, positions, prefix, window=L)
    if sleep.eviction == "sliding":
      prefix = kv
  return jnp.concatenate(logits, axis=1), fw


@pytest.mark.parametrize("eviction", ["hard", pytest.param("sliding", marks=pytest.mark.slow)])
def test_windowed_forward_equals_a_loop_of_its_parts_with_dropout_on(eviction):
  sleep = SleepConfig(window=4, n_passes=3, eviction=eviction)
  tokens = _tokens(2, 10)
  schedule = (True, True, False)
  model, ref = OwnLM(CFG, rngs=nnx.Rngs(0)), OwnLM(CFG, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda m, t: windowed_forward(m, t, None, sleep, sleep_schedule=schedule))
  out = forward(model, tokens)
  want_logits, want_fw = _loop(ref, tokens, sleep, schedule)
  assert_close(want_logits, out.logits, what="logits")
  assert_close(want_fw, out.fast_weights, what="fast weights")
  np.testing.assert_array_equal(np.asarray(out.passes), [[3, 3, 0]] * 2)
  # Every dropout call drew a fresh mask, and the model's RNG count advanced as the loop's did.
  count = lambda m: int(m.blocks[0].drop.rngs.count[...])
  assert count(model) == count(ref) > 0
  again = forward(model, tokens)  # the written-back RNG state: the next call draws other masks
  assert float(jnp.max(jnp.abs(again.logits - out.logits))) > 1e-3


def test_training_gradients_are_deterministic_per_seed():
  sleep = SleepConfig(window=4, n_passes=2, grad_passes=1)
  tokens = _tokens(2, 8, seed=1)
  batch = {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1),
           "loss_mask": jnp.concatenate([jnp.zeros((2, 4)), jnp.ones((2, 4))], axis=1)}

  graphdef, state = nnx.split(OwnLM(CFG, rngs=nnx.Rngs(3)))

  @jax.jit
  def grads(state):
    return nnx.grad(lambda m: windowed_loss(m, batch, sleep)[0])(nnx.merge(graphdef, state))

  g1, g2 = grads(state), grads(nnx.split(OwnLM(CFG, rngs=nnx.Rngs(3)))[1])
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(optax_norm(g1)) > 0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("eviction", ["sliding", pytest.param("hard", marks=pytest.mark.slow)])
def test_serving_streams_the_windowed_forward(eviction):
  sleep = SleepConfig(window=4, n_passes=3, eviction=eviction)
  model = OwnLM(CFG, rngs=nnx.Rngs(0))
  model.eval()
  tokens = _tokens(2, 11, seed=2)
  ref = windowed_forward(model, tokens, None, sleep)
  session = SleepSession(model, sleep, batch_size=2)
  pieces = [session.feed(tokens[:, :3]), session.feed(tokens[:, 3:9]), session.feed(tokens[:, 9:])]
  assert_close(ref.logits, jnp.concatenate(pieces, axis=1), what="streamed logits")
  assert_close(ref.fast_weights, session.fast_weights, what="fast weights")
  assert session.stats.sleeps == 2 and np.isnan(session.stats.wake_flops)  # OwnLM does not count FLOPs
  greedy = session.generate(3)  # its first token: the argmax of the batched forward's last logits
  np.testing.assert_array_equal(greedy[:, 0], np.argmax(np.asarray(ref.logits[:, -1]), -1))


class _NoCore(nnx.Module):
  vocab_size = 5

  def __init__(self):
    self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  def init_fast_weights(self, b):
    return ()

  def init_kv(self, b, size):
    return ()

  def embed_tokens(self, tokens):
    return tokens

  def unembed(self, h):
    return h


def test_a_model_missing_a_method_is_named():
  with pytest.raises(ValueError, match="missing core"):
    windowed_forward(_NoCore(), _tokens(1, 4) % 5, None, SleepConfig(window=4))
  with pytest.raises(ValueError, match="missing core, init_decode_state, decode"):
    SleepSession(_NoCore(), SleepConfig(window=4))
  with pytest.raises(ValueError, match="nnx.Module"):
    windowed_forward(functools.partial(int), _tokens(1, 4), None, SleepConfig(window=4))


def test_trains_through_eviction_in_the_launch_trainer_deterministically(tmp_path):
  import dataclasses
  import importlib

  from launch import experiment

  cfg = importlib.import_module("launch.configs.rule110_small").get_config()  # T = 17, L = 16: one window sleeps
  cfg.sleep.n_passes = 2
  cfg.train.update(num_steps=2, batch_size=4, eval_batches=1, progress=False, log_every=1)

  def factory(exp, rngs):
    return OwnLM(dataclasses.replace(CFG, vocab_size=exp.model.vocab_size), rngs=rngs)

  runs = [experiment.run(cfg, str(tmp_path / name), model_factory=factory) for name in ("a", "b")]
  a, b = runs
  assert a.step == 2 and np.isfinite(a.last_train["loss"]) and 0.0 <= a.eval["accuracy"] <= 1.0
  assert a.last_train["sleep/passes"] == 2.0 and a.last_train["sleep/sleep_windows"] == 1.0  # slept with N = 2
  assert type(nnx.merge(a.graphdef, a.state.params, a.state.model_state)) is OwnLM
  for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):  # the same seed, the same run
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  step, result = experiment.evaluate_run(str(tmp_path / "a"), eval_batches=1, model_factory=factory)
  assert step == 2 and result["accuracy"] == a.eval["accuracy"]  # the checkpoint restores into OwnLM


class _OnlyTheProtocol(nnx.Module):
  """A HybridLM seen only through the protocol's methods, so the windowed forward takes the generic path."""

  def __init__(self, inner):
    self.inner = inner
    self.vocab_size = inner.vocab_size

  def init_fast_weights(self, b):
    return self.inner.init_fast_weights(b)

  def init_kv(self, b, size):
    return self.inner.init_kv(b, size)

  def embed_tokens(self, tokens):
    return self.inner.embed_tokens(tokens)

  def core(self, h, fw, positions, prefix, *, window=None):
    return self.inner.core(h, fw, positions, prefix, window=window)

  def unembed(self, h):
    return self.inner.unembed(h)


@pytest.mark.parametrize("eviction", ["sliding", pytest.param("hard", marks=pytest.mark.slow)])
def test_hybrid_lm_is_one_implementation_of_the_protocol(eviction):
  from sleep_jax import HybridLM, ModelConfig
  cfg = ModelConfig(vocab_size=11, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_impl="reference")
  hybrid = HybridLM(cfg, rngs=nnx.Rngs(0))
  sleep = SleepConfig(window=4, n_passes=3, eviction=eviction)
  tokens = _tokens(2, 10, seed=4)
  own_path = windowed_forward(hybrid, tokens, None, sleep)
  protocol_path = windowed_forward(_OnlyTheProtocol(hybrid), tokens, None, sleep)
  assert_close(own_path.logits, protocol_path.logits, what="logits")
  assert_close(own_path.fast_weights, protocol_path.fast_weights, what="fast weights")
  np.testing.assert_array_equal(np.asarray(own_path.passes), np.asarray(protocol_path.passes))
