"""Training recipes for sleeping longer: output-based halting, input re-injection, the detached-prefix loss.

Each against the model it generalises: halting at tolerance 0 on the predictions is fixed N, a zero adapter
is today's model, a step that draws no detached prefix is today's step.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.consolidate import argmax_change, prediction_kl
from sleep_jax.fast_weights import init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.testing import separating_halt_tol
from sleep_jax.windowed import WindowedLoss, windowed_forward

VOCAB = 7
BASE = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                   gdn_impl="reference")
SCHEDULE = (True, False)


@pytest.fixture(scope="module")
def model():
  return HybridLM(BASE, rngs=nnx.Rngs(0))


def _tokens(b, t, seed):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)


def _forward(model, sleep, tokens, schedule=SCHEDULE):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, t: windowed_forward(nnx.merge(graphdef, st), t, None, sleep, sleep_schedule=schedule))
  return fn(state, tokens)


def _value_and_grad(model, loss_fn, batch):
  """Jitted loss and parameter gradients of ``loss_fn(model, batch)``."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return jax.jit(jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch)[0]))(params)


# No rematerialisation in the gradient tests: the same numbers, compiled faster.
NO_REMAT = dict(remat_passes=False, remat_windows=False)


def _same(a, b, what):
  for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}[{i}]")


# -- d: halting on the window's predictions ---------------------------------------------------------
def test_prediction_measures():
  logp = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 5, VOCAB)), axis=-1)
  assert np.all(np.asarray(prediction_kl(logp, logp)) == 0) and np.all(np.asarray(argmax_change(logp, logp)) == 0)
  other = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (3, 5, VOCAB)), axis=-1)
  p = np.exp(np.asarray(other, np.float64))
  want = np.mean(np.sum(p * (np.asarray(other, np.float64) - np.asarray(logp, np.float64)), -1), -1)
  np.testing.assert_allclose(np.asarray(prediction_kl(logp, other)), want, rtol=1e-5)
  changed = np.mean(np.argmax(np.asarray(logp), -1) != np.argmax(np.asarray(other), -1), -1)
  np.testing.assert_array_equal(np.asarray(argmax_change(logp, other)), changed.astype(np.float32))


@pytest.mark.parametrize("measure", ["kl", "argmax"])
def test_zero_tol_on_predictions_equals_fixed_n(model, measure):
  tokens = _tokens(2, 6, 1)
  fixed = _forward(model, SleepConfig(window=3, n_passes=4), tokens)
  never = _forward(model, SleepConfig(window=3, halt_tol=0.0, max_passes=4, halt_measure=measure), tokens)
  _same(fixed, never, f"halt_tol=0 ({measure}) vs N=4")
  np.testing.assert_array_equal(np.asarray(never.passes), [[4, 0], [4, 0]])
  once = _forward(model, SleepConfig(window=3, halt_tol=1e30, max_passes=4, halt_measure=measure), tokens)
  np.testing.assert_array_equal(np.asarray(once.passes), [[2, 0], [2, 0]])


def test_kl_halting_follows_the_predictions_by_hand(model):
  n_max, tokens = 6, _tokens(4, 6, 2)
  # By hand: the window's predictions after each pass (no prelude / coda: unembed of the core's output).
  pos = jnp.arange(3, dtype=jnp.int32)
  fw = init_fast_weights(model.config, 4)
  h, fw, _ = model.run_blocks(model.embed_tokens(tokens[:, :3]), fw, pos, window=3)
  logp, kls = jax.nn.log_softmax(model.unembed(h), -1), []
  for _ in range(n_max - 1):
    h, fw, _ = model.run_blocks(h, fw, pos, window=3)
    new = jax.nn.log_softmax(model.unembed(h), -1)
    kls.append(np.asarray(prediction_kl(logp, new)))
    logp = new
  kls = np.stack(kls, 1)  # [B, n_max - 1]

  tol, expected = separating_halt_tol(kls, n_max, gap=1.05)
  out = _forward(model, SleepConfig(window=3, halt_tol=tol, max_passes=n_max, halt_measure="kl"), tokens)
  np.testing.assert_array_equal(np.asarray(out.passes[:, 0]), expected)


def test_prediction_halting_with_a_coda_and_grad():
  # A coda reads the predictions: they come from coda + output projection on each pass's core output.
  cfg = dataclasses.replace(BASE, layout=("attn", "gdn", "attn"), coda=1)
  m = HybridLM(cfg, rngs=nnx.Rngs(1))
  tokens = _tokens(2, 6, 3)
  batch = {"tokens": tokens, "targets": tokens, "loss_mask": jnp.asarray([[0, 0, 0, 1, 1, 1]] * 2, jnp.float32)}
  fixed = SleepConfig(window=3, n_passes=3, **NO_REMAT)
  never = SleepConfig(window=3, halt_tol=0.0, max_passes=3, halt_measure="kl", **NO_REMAT)
  _same(_value_and_grad(m, WindowedLoss(fixed, SCHEDULE), batch), _value_and_grad(m, WindowedLoss(never, SCHEDULE), batch),
        "loss and grads at halt_tol=0 vs N=3")


# -- c: input re-injection through a zero-initialised adapter ---------------------------------------
@pytest.mark.parametrize("mode", ["embedding", "wake"])
def test_zero_adapter_is_todays_model(model, mode):
  injected = HybridLM(dataclasses.replace(BASE, sleep_reinject=mode), rngs=nnx.Rngs(0))
  assert not np.any(np.asarray(injected.sleep_adapter.kernel[...]))
  _same(nnx.state(model, nnx.Param), nnx.state(injected, nnx.Param).filter(lambda path, _: path[0] != "sleep_adapter"),
        "shared parameters")
  tokens = _tokens(2, 6, 4)
  sleeps = [SleepConfig(window=3, n_passes=3)]
  if mode == "embedding":
    sleeps += [SleepConfig(window=3, n_passes=3, eviction="sliding"), SleepConfig(window=3, halt_tol=0.05, max_passes=4)]
  for sleep in sleeps:
    _same(_forward(model, sleep, tokens), _forward(injected, sleep, tokens), f"{mode} {sleep}")
  # The loss and the gradients of today's parameters are today's; the adapter's gradient is not zero.
  batch = {"tokens": tokens, "targets": tokens, "loss_mask": jnp.asarray([[0, 0, 0, 1, 1, 1]] * 2, jnp.float32)}
  sleep = SleepConfig(window=3, n_passes=3, **NO_REMAT)
  (l0, g0), (l1, g1) = (_value_and_grad(m, WindowedLoss(sleep, SCHEDULE), batch) for m in (model, injected))
  assert float(l0) == float(l1)
  adapter = g1["sleep_adapter"]
  _same(g0, g1.filter(lambda path, _: path[0] != "sleep_adapter"), "grads")
  assert np.any(np.asarray(adapter["kernel"][...]))
  # A trained (non-zero) adapter changes what sleep computes, never the wake pass.
  injected.sleep_adapter.kernel[...] = jnp.full((16, 16), 0.1)
  slept, plain = _forward(injected, sleep, tokens), _forward(model, sleep, tokens)
  np.testing.assert_array_equal(np.asarray(slept.logits[:, :3]), np.asarray(plain.logits[:, :3]))
  assert not np.allclose(np.asarray(slept.logits[:, 3:]), np.asarray(plain.logits[:, 3:]))


def test_a_protocol_model_opts_in_to_reinjection():
  from sleep_jax.examples.own_model import OwnConfig, OwnLM

  class Recalling(OwnLM):
    def inject_sleep_input(self, h, embedded, wake):
      return h + embedded

  cfg = OwnConfig(vocab_size=VOCAB, d_model=16, n_blocks=2, n_heads=2, head_dim=8, mlp_width=32, dropout=0.0)
  model = Recalling(cfg, rngs=nnx.Rngs(0))
  tokens = _tokens(2, 3, 6)
  out = windowed_forward(model, tokens, None, SleepConfig(window=3, n_passes=2), sleep_schedule=(True,))
  # By hand: the wake pass, then one sleep pass on its output plus the embedded window.
  pos = jnp.arange(3, dtype=jnp.int32)
  h0 = model.embed_tokens(tokens)
  h1, fw1, _ = model.core(h0, model.init_fast_weights(2), pos, None, window=3)
  _, fw2, _ = model.core(h1 + h0, fw1, pos, None, window=3)
  for a, b in zip(jax.tree.leaves(out.fast_weights), jax.tree.leaves(fw2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# -- b: the detached-prefix (progressive) loss --------------------------------------------------------
def test_detached_prefix_step(model):
  tokens = _tokens(2, 6, 5)
  batch = {"tokens": tokens, "targets": tokens, "loss_mask": jnp.asarray([[0, 0, 0, 1, 1, 1]] * 2, jnp.float32)}
  sleep = SleepConfig(window=3, n_passes=2, detach_passes_train=2, **NO_REMAT)
  loss = WindowedLoss(sleep, SCHEDULE)
  value_and_grad = lambda loss_fn: _value_and_grad(model, loss_fn, batch)
  # P = 0 is today's step: the same config, so the same program.
  zero = next(s for s in range(100) if sleep.draw_detach_passes(0, s) == 0)
  assert loss.for_step(zero, 0) == WindowedLoss(SleepConfig(window=3, n_passes=2, **NO_REMAT), SCHEDULE)
  two = next(s for s in range(100) if sleep.draw_detach_passes(0, s) == 2)
  l2, g2 = value_and_grad(loss.for_step(two, 0))
  # The forward is N + P = 4 passes; only the last N - 1 = 1 carries gradient through the sleep.
  l4, g4 = value_and_grad(WindowedLoss(SleepConfig(window=3, n_passes=4, **NO_REMAT), SCHEDULE))
  np.testing.assert_allclose(float(l2), float(l4), rtol=1e-6)
  assert loss.for_step(two, 0).sleep == SleepConfig(window=3, n_passes=4, grad_passes=1, **NO_REMAT)
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g4)))


# -- bad values --------------------------------------------------------------------------------------
def test_bad_recipe_values_are_refused():
  with pytest.raises(ValueError, match="SleepConfig.halt_measure must be one of"):
    SleepConfig(window=3, halt_tol=0.1, max_passes=3, halt_measure="entropy")
  with pytest.raises(ValueError, match="ModelConfig.sleep_reinject must be one of"):
    dataclasses.replace(BASE, sleep_reinject="hidden")
  with pytest.raises(ValueError, match="halt_measure_on"):
    from sleep_jax.consolidate import sleep_consolidate
    sleep_consolidate(lambda h, fw: (h, fw), jnp.zeros((2, 3)), jnp.zeros((2, 3)), 2, halt_tol=0.1,
                      halt_measure_on="logits")
