"""SleepSession streaming against the batched training forward (windowed_forward)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.session import SleepSession
from sleep_jax.testing import assert_close
from sleep_jax.windowed import serving_schedule, windowed_forward

VOCAB = 7


@pytest.fixture(scope="module")
def model():
  # gdn_impl "auto" (chunked on CPU) for the batched forward while decoding uses
  # the per-token step: the comparison also crosses implementations.
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8)
  return HybridLM(cfg, rngs=nnx.Rngs(0))


def _reference(model, tokens, sleep):
  graphdef, state = nnx.split(model)
  schedule = serving_schedule(tokens.shape[1], sleep.window)
  fn = jax.jit(lambda st, t: windowed_forward(nnx.merge(graphdef, st), t, None, sleep, sleep_schedule=schedule))
  return fn(state, tokens)


@pytest.fixture(scope="module")
def canon_model():
  """The ``model`` fixture's layout with Canon layers of width 3 and random (nonzero) Canon weights."""
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                    canon_size=3)
  model = HybridLM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  for block in model.blocks:
    for param in (block.canon_conv_a, block.canon_conv_c):
      param[...] = jnp.asarray(0.5 * rng.normal(size=param[...].shape), jnp.float32)
  return model


@pytest.mark.parametrize("eviction,n_passes", [
    ("hard", 1), pytest.param("hard", 3, marks=pytest.mark.slow), pytest.param("sliding", 1, marks=pytest.mark.slow),
    ("sliding", 2)])
def test_streaming_matches_windowed_forward(model, eviction, n_passes):
  _check_streaming(model, eviction, n_passes)


@pytest.mark.parametrize("eviction,n_passes", [
    ("hard", 1), pytest.param("hard", 2, marks=pytest.mark.slow), pytest.param("sliding", 1, marks=pytest.mark.slow),
    ("sliding", 2)])
def test_streaming_with_canon_layers_matches_windowed_forward(canon_model, eviction, n_passes):
  """The Canon layers restart at every window (and sleep pass) in the batched forward (N = 1: one fused pass
  with restarts at the window starts; N = 2: a call per window and pass) as in streaming, whose decode state
  carries their histories within a window and is reset at each window start."""
  _check_streaming(canon_model, eviction, n_passes)


def _check_streaming(model, eviction, n_passes):
  tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, VOCAB, dtype=jnp.int32)
  sleep = SleepConfig(window=3, n_passes=n_passes, eviction=eviction)
  ref = _reference(model, tokens, sleep)
  session = SleepSession(model, sleep, batch_size=2)
  # Irregular blocks: token-by-token steps, a step that fills a window (sleep),
  # then whole aligned windows in one call, then a partial window.
  pieces = [session.feed(tokens[:, :2]), session.feed(tokens[:, 2:9]), session.feed(tokens[:, 9:])]
  assert session.position == 11
  assert_close(ref.logits, jnp.concatenate(pieces, axis=1), what="streamed logits")
  # 3 full windows slept at serving time; the partial last one ran once.
  assert_close(ref.fast_weights, session.fast_weights, what="fast weights")


def test_save_restore_mid_stream_and_generate(model, tmp_path):
  sleep = SleepConfig(window=3, n_passes=2, eviction="sliding")
  tokens = np.asarray(jax.random.randint(jax.random.key(2), (1, 10), 0, VOCAB, dtype=jnp.int32))
  straight = SleepSession(model, sleep)
  first = straight.feed(tokens[:, :4])
  straight.save(tmp_path / "ckpt")
  resumed = SleepSession.restore(tmp_path / "ckpt", model, sleep)
  assert resumed.position == 4
  rest_straight = straight.feed(tokens[:, 4:])
  rest_resumed = resumed.feed(tokens[:, 4:])
  np.testing.assert_array_equal(np.asarray(rest_straight), np.asarray(rest_resumed))
  assert_close(straight.state, resumed.state, what="state after resume")
  gen = straight.generate(4)
  np.testing.assert_array_equal(gen, resumed.generate(4))
  assert straight.position == 14 and gen.shape == (1, 4)
  # Greedy decoding: each generated token is the argmax of the batched forward
  # over everything before it.
  full = np.concatenate([tokens, gen], axis=1)
  ref = _reference(model, jnp.asarray(full), sleep)
  np.testing.assert_array_equal(np.argmax(np.asarray(ref.logits[:, 9:13]), -1), gen)
  assert_close(ref.logits[:, :4], first, what="logits before the save")


def test_feed_shapes_mean_one_thing_whatever_b(model):
  sleep = SleepConfig(window=3)
  prompt = np.array([1, 4, 2, 6], np.int32)
  # B == 1: [n], [1, n] and token-by-token (int, 0-d) feeds are the same stream.
  two_d = SleepSession(model, sleep).feed(prompt[None])
  assert two_d.shape == (1, 4, VOCAB)
  np.testing.assert_array_equal(np.asarray(SleepSession(model, sleep).feed(prompt)), np.asarray(two_d))
  one_by_one = SleepSession(model, sleep)
  pieces = [one_by_one.feed(int(prompt[0])), one_by_one.feed(np.int64(prompt[1])), one_by_one.feed(prompt[2:])]
  assert_close(two_d, jnp.concatenate(pieces, axis=1), what="token-by-token feed")
  # B == 2: only [2, n]. A 1-D array is refused, whatever its length (it used
  # to mean one token per row when its length was B).
  session = SleepSession(model, sleep, batch_size=2)
  for bad in (prompt[:2], prompt, np.int32(3), 3, [[1, 2], [3]], np.zeros((2, 1, 1), np.int32),
              np.zeros((1, 2), np.int32)):
    with pytest.raises(ValueError, match=r"shape \[B, n\] = \[2, n\]"):
      session.feed(bad)
  assert session.position == 0
  assert session.feed(np.stack([prompt[:2], prompt[2:]])).shape == (2, 2, VOCAB)
  assert session.feed(prompt[:2, None]).shape == (2, 1, VOCAB)  # one token per row, said explicitly
  assert session.feed(np.zeros((2, 0), np.int32)).shape == (2, 0, VOCAB) and session.position == 3
  with pytest.raises(ValueError, match=r"\[B, n\] = \[1, n\] \(or, as B == 1, \[n\] or a single token\)"):
    SleepSession(model, sleep).feed(np.zeros((2, 2), np.int32))


def test_bad_inputs(model, tmp_path):
  sleep = SleepConfig(window=3)
  session = SleepSession(model, sleep, batch_size=2)
  with pytest.raises(ValueError, match="vocab_size"):
    session.feed(np.full((2, 1), VOCAB))
  with pytest.raises(ValueError, match="tokens must be"):
    session.feed(np.zeros((3, 1), np.int32))
  with pytest.raises(ValueError, match="integers"):
    session.feed(np.zeros((2, 1), np.float32))
  with pytest.raises(ValueError, match="context"):
    session.generate(1)
  with pytest.raises(ValueError, match="n_tokens"):
    session.generate(-1)
  with pytest.raises(ValueError, match="batch_size"):
    SleepSession(model, sleep, batch_size=0)
  with pytest.raises(ValueError, match="SleepConfig"):
    SleepSession(model, {"window": 3})
  session.save(tmp_path / "s")
  with pytest.raises(ValueError, match="does not match"):
    SleepSession.restore(tmp_path / "s", model, SleepConfig(window=4))


# -- sampling and prompts of different lengths ------------------------------------------------------
def test_temperature_zero_is_greedy_and_sampling_is_keyed(model):
  sleep = SleepConfig(window=4, n_passes=2)
  prompt = jax.random.randint(jax.random.key(7), (2, 6), 0, VOCAB, dtype=jnp.int32)
  base = SleepSession(model, sleep, batch_size=2)
  base.feed(prompt)
  greedy = base.fork().generate(6)
  np.testing.assert_array_equal(greedy, base.fork().generate(6, temperature=0.0, key=jax.random.key(1)))
  np.testing.assert_array_equal(greedy, base.fork().generate(6, temperature=1.0, top_k=1, key=jax.random.key(1)))
  np.testing.assert_array_equal(greedy, base.fork().generate(6, temperature=1.0, top_p=1e-6, key=jax.random.key(2)))
  a = base.fork().generate(6, temperature=5.0, key=jax.random.key(3))
  np.testing.assert_array_equal(a, base.fork().generate(6, temperature=5.0, key=jax.random.key(3)))
  assert not np.array_equal(a, base.fork().generate(6, temperature=5.0, key=jax.random.key(4)))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    base.fork().generate(1, temperature=1.0)
  with pytest.raises(ValueError, match="top_p"):
    base.fork().generate(1, temperature=1.0, top_p=0.0, key=jax.random.key(0))


def test_sample_tokens_keeps_the_top_k_and_the_nucleus():
  from sleep_jax.session import sample_tokens
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.key(0)
  top2 = np.asarray(sample_tokens(logits, keys, temperature=1.0, top_k=2))
  nucleus = np.asarray(sample_tokens(logits, keys, temperature=1.0, top_p=0.8))  # 0.5 + 0.3 reaches 0.8
  assert set(top2.tolist()) == set(nucleus.tolist()) == {0, 1}
  np.testing.assert_allclose(np.mean(top2 == 0), 0.5 / 0.8, atol=0.05)
  everything = np.asarray(sample_tokens(logits, keys, temperature=1.0))
  assert set(everything.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("eviction", ["hard", pytest.param("sliding", marks=pytest.mark.slow)])
def test_prompts_of_different_lengths_equal_each_served_alone(model, eviction):
  sleep = SleepConfig(window=4, n_passes=2, eviction=eviction)
  lengths = [3, 9, 6]  # rows fill their windows (and sleep) at different steps
  prompts = [jax.random.randint(jax.random.key(10 + i), (n,), 0, VOCAB, dtype=jnp.int32) for i, n in
             enumerate(lengths)]
  padded = np.zeros((3, max(lengths)), np.int32)
  for i, p in enumerate(prompts):
    padded[i, :len(p)] = np.asarray(p)
  batch = SleepSession(model, sleep, batch_size=3, per_row=True)
  logits = batch.feed(padded, lengths=lengths)
  got = batch.generate(5)
  np.testing.assert_array_equal(batch.positions, [n + 5 for n in lengths])
  for i, p in enumerate(prompts):
    alone = SleepSession(model, sleep)
    assert_close(alone.feed(p)[0], logits[i, :lengths[i]], what=f"row {i} prompt logits")
    np.testing.assert_array_equal(alone.generate(5)[0], got[i])
    assert_close(alone.fast_weights, jax.tree.map(lambda x: x[i:i + 1], batch.fast_weights), what=f"row {i} memory")
  assert batch.stats.sleeps == sum((n + 5) // 4 for n in lengths)  # every row's own full windows
  with pytest.raises(ValueError, match="per_row=True"):
    SleepSession(model, sleep, batch_size=3).feed(padded, lengths=lengths)
  with pytest.raises(ValueError, match="lengths must be"):
    SleepSession(model, sleep, batch_size=3, per_row=True).feed(padded, lengths=[3, 10, 6])
