"""The lean paths of the windowed forward against the window loop (the reference).

* ``SleepConfig.fuse_unslept``: with no sleep pass (N = 1, or no consolidating window) the
  window loop is one forward with eviction as masks; values, fast weights,
  passes and gradients must equal the loop's, hard and sliding, with a prelude
  and coda, a short last window, and a traced mask under ``jit``.
* ``SleepConfig.unroll``: unrolled pass and window scans give the same numbers.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.nn import attention
from sleep_jax.nn.gated_deltanet import causal_conv
from sleep_jax.testing import assert_close
from sleep_jax.windowed import windowed_forward, windowed_loss

VOCAB = 9


def _model(layout=("attn", "gdn", "attn", "gdn"), prelude=0, coda=0, seed=0):
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=layout, n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_impl="reference", prelude=prelude, coda=coda)
  return HybridLM(cfg, rngs=nnx.Rngs(seed))


def _batch(b=2, t=13, answer_from=11, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)
  mask = np.zeros((b, t), np.float32)
  mask[:, answer_from:] = 1.0
  return {"tokens": tokens, "targets": jnp.roll(tokens, -1, 1), "loss_mask": jnp.asarray(mask)}


def _loss_and_grads(model, batch, sleep, **kw):
  graphdef, state = nnx.split(model)

  def loss(st):
    value, aux = windowed_loss(nnx.merge(graphdef, st), batch, sleep, **kw)
    return value, aux

  (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
  return value, aux, grads


def test_conv_segments_equal_one_call_per_segment():
  x = jax.random.normal(jax.random.key(0), (2, 11, 5))
  w = jax.random.normal(jax.random.key(1), (4, 5))
  ref = jnp.concatenate([causal_conv(x[:, a:a + 3], w) for a in range(0, 11, 3)], axis=1)
  assert_close(ref, causal_conv(x, w, segment=3), what="segmented conv")
  assert float(jnp.abs(causal_conv(x, w) - ref).max()) > 1e-3  # the restarts matter


@pytest.mark.parametrize("eviction,layout,prelude,coda,dense_max_t", [
    ("hard", ("attn", "gdn", "attn", "gdn"), 0, 0, 256), ("sliding", ("gdn", "attn", "gdn", "attn"), 1, 1, 256),
    ("hard", ("attn", "gdn", "attn", "gdn"), 0, 0, 0), ("sliding", ("gdn", "attn", "gdn", "attn"), 1, 1, 0)])
def test_fused_n1_equals_window_loop(eviction, layout, prelude, coda, dense_max_t, monkeypatch):
  # dense_max_t 256: one masked product (CPU, short sequences); 0: window by window.
  monkeypatch.setattr(attention, "DENSE_MAX_T_CPU", dense_max_t)
  model = _model(layout, prelude, coda, seed=3)
  batch = _batch()
  sleep = SleepConfig(window=5, n_passes=1, eviction=eviction)
  graphdef, state = nnx.split(model)

  def run(st, fuse):
    return windowed_forward(nnx.merge(graphdef, st), batch["tokens"], batch["loss_mask"],
                            dataclasses.replace(sleep, fuse_unslept=fuse))

  a = jax.jit(lambda st: run(st, True))(state)
  b = jax.jit(lambda st: run(st, False))(state)
  assert_close(b.logits, a.logits, what="logits")
  assert_close(b.fast_weights, a.fast_weights, what="fast weights")
  np.testing.assert_array_equal(np.asarray(a.passes), np.asarray(b.passes))
  # Gradients of a loss on the logits and the final fast weights, through every parameter.

  def loss(st, fuse):
    out = run(st, fuse)
    logp = jax.nn.log_softmax(out.logits)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    return jnp.sum(nll * batch["loss_mask"]) + sum(jnp.sum(s ** 2) for s in out.fast_weights.states)

  ga = jax.jit(jax.grad(lambda st: loss(st, True)))(state)
  gb = jax.jit(jax.grad(lambda st: loss(st, False)))(state)
  assert_close(gb, ga, what="gradients")


def test_fused_with_a_traced_mask_reports_the_windows_that_sleep():
  model = _model(seed=1)
  batch = _batch(answer_from=10)
  sleep = SleepConfig(window=5, n_passes=1)
  graphdef, state = nnx.split(model)
  out = jax.jit(lambda st, m: windowed_forward(nnx.merge(graphdef, st), batch["tokens"], m, sleep))(
      state, batch["loss_mask"])
  ref = windowed_forward(model, batch["tokens"], batch["loss_mask"], dataclasses.replace(sleep, fuse_unslept=False))
  np.testing.assert_array_equal(np.asarray(out.passes), [[1, 1, 0]] * 2)
  np.testing.assert_array_equal(np.asarray(out.passes), np.asarray(ref.passes))
  assert_close(ref.logits, out.logits, what="logits")


def test_fused_when_no_window_sleeps_at_n4():
  model = _model(seed=2)
  batch = _batch()
  sleep = SleepConfig(window=5, n_passes=4)
  schedule = (False,) * 3
  a = windowed_forward(model, batch["tokens"], batch["loss_mask"], sleep, sleep_schedule=schedule)
  b = windowed_forward(model, batch["tokens"], batch["loss_mask"], dataclasses.replace(sleep, fuse_unslept=False),
                       sleep_schedule=schedule)
  assert_close(b.logits, a.logits, what="logits")
  np.testing.assert_array_equal(np.asarray(a.passes), np.zeros((2, 3), np.int32))


def test_unrolled_scans_give_the_same_numbers(eviction="sliding"):
  model = _model(seed=4)
  batch = _batch(t=15, answer_from=10)
  sleep = SleepConfig(window=5, n_passes=3, eviction=eviction, remat_passes=False, remat_windows=False)
  rolled = _loss_and_grads(model, batch, sleep)
  unrolled = _loss_and_grads(model, batch, dataclasses.replace(sleep, unroll=True))
  assert_close(rolled[0], unrolled[0], what="loss")
  assert_close(rolled[1].fast_weights, unrolled[1].fast_weights, what="fast weights")
  np.testing.assert_array_equal(np.asarray(rolled[1].passes), np.asarray(unrolled[1].passes))
  assert_close(rolled[2], unrolled[2], what="gradients")
  # The sleep ran: three passes on each of the two consolidating windows.
  np.testing.assert_array_equal(np.asarray(rolled[1].passes), [[3, 3, 0]] * 2)
