"""Adaptive sleep (SleepConfig.halt_tol): against fixed N and explicit per-example loops."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.consolidate import relative_change, sleep_consolidate
from sleep_jax.fast_weights import init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.session import SleepSession
from sleep_jax.testing import assert_close, separating_halt_tol
from sleep_jax.windowed import serving_schedule, windowed_forward

VOCAB = 7


# -- the transform on a toy pass whose halting is known in closed form -------------------------------
def _geometric_pass(rates, h, fw):
  """Pass k (h counts passes) scales example b's S by (1 + rates[b] ** k): relative change rates[b] ** k."""
  k = h + 1.0
  s = fw["S"] * (1.0 + rates[:, None] ** k[:, None])
  return k, {"S": s}


def _toy(b=3, d=4):
  rates = jnp.asarray([0.5, 0.1, 0.9, 0.3][:b], jnp.float32)
  s = jax.random.normal(jax.random.key(0), (b, d)) + 2.0
  return rates, jnp.zeros((b,), jnp.float32), {"S": s}


def _loop(fn, h, fw, n):
  for _ in range(n):
    h, fw = fn(h, fw)
  return fw, h


def test_constructed_examples_halt_at_their_own_pass():
  rates, h, fw = _toy()
  fn = functools.partial(_geometric_pass, rates)
  # tol 0.05: 0.5^5, 0.1^2 are the first changes below it; 0.9^k stays above for k <= 6.
  out = sleep_consolidate(fn, h, fw, 6, halt_tol=0.05, return_hidden=True, return_passes=True)
  out_fw, out_h, passes = out.fast_weights, out.hidden, out.passes
  np.testing.assert_array_equal(np.asarray(passes), [5, 2, 6])
  for i, n in enumerate([5, 2, 6]):  # each example equals its own fixed-length loop
    ref_fw, ref_h = _loop(fn, h, fw, n)
    np.testing.assert_array_equal(np.asarray(out_fw["S"][i]), np.asarray(ref_fw["S"][i]))
    assert float(out_h[i]) == float(ref_h[i]) == n
  # The measure is the relative change of the fast weights over one pass.
  _, fw1 = fn(h, fw)
  np.testing.assert_allclose(np.asarray(relative_change(fw, fw1)), np.asarray(rates), rtol=1e-5)


def test_zero_tol_is_fixed_and_huge_tol_is_one_pass():
  rates, h, fw = _toy()
  fn = functools.partial(_geometric_pass, rates)
  fixed = sleep_consolidate(fn, h, fw, 4, return_hidden=True, return_passes=True)
  never = sleep_consolidate(fn, h, fw, 4, halt_tol=0.0, return_hidden=True, return_passes=True)
  for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(never)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  once = sleep_consolidate(fn, h, fw, 4, halt_tol=float("inf"), return_hidden=True, return_passes=True)
  one = sleep_consolidate(fn, h, fw, 1, return_hidden=True, return_passes=True)
  np.testing.assert_array_equal(np.asarray(once.passes), [1, 1, 1])
  for a, b in zip(jax.tree.leaves((one.fast_weights, one.hidden)), jax.tree.leaves((once.fast_weights, once.hidden))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grad_and_vmap_match_per_example_loops():
  rates, h, fw = _toy()
  counts = [5, 2, 6]

  def adaptive(s, rates):
    out = sleep_consolidate(functools.partial(_geometric_pass, rates), h, {"S": s}, 6, halt_tol=0.05)
    return jnp.sum(jnp.sin(out.fast_weights["S"]))

  g = jax.jit(jax.grad(adaptive))(fw["S"], rates)
  for i, n in enumerate(counts):
    g_ref = jax.grad(lambda s: jnp.sum(jnp.sin(_loop(functools.partial(_geometric_pass, rates), h, {"S": s},
                                                     n)[0]["S"][i])))(fw["S"])
    assert_close(g_ref[i], g[i], "float32_grad", what=f"grad example {i}")

  def single(s1, r1):  # vmap over examples of a batch-of-one adaptive sleep (cond becomes a select)
    out = sleep_consolidate(functools.partial(_geometric_pass, r1[None]), jnp.zeros((1,)), {"S": s1[None]}, 6,
                            halt_tol=0.05, return_passes=True)
    return out.fast_weights["S"][0], out.passes[0]

  s_v, n_v = jax.jit(jax.vmap(single))(fw["S"], rates)
  np.testing.assert_array_equal(np.asarray(n_v), counts)
  batched = sleep_consolidate(functools.partial(_geometric_pass, rates), h, fw, 6, halt_tol=0.05).fast_weights
  assert_close(batched["S"], s_v, what="vmap vs batch")


def test_bad_adaptive_arguments():
  rates, h, fw = _toy()
  fn = functools.partial(_geometric_pass, rates)
  with pytest.raises(ValueError, match="halt_tol"):
    sleep_consolidate(fn, h, fw, 2, halt_tol=-1.0)
  with pytest.raises(ValueError, match="leading axis"):
    sleep_consolidate(fn, h, {"S": fw["S"], "scalar": jnp.zeros(())}, 2, halt_tol=0.1)
  with pytest.raises(ValueError, match="max_passes needs halt_tol"):
    SleepConfig(window=3, max_passes=4)
  with pytest.raises(ValueError, match="halt_tol"):
    SleepConfig(window=3, halt_tol=-0.1)
  with pytest.raises(ValueError, match="n_passes_train"):
    SleepConfig(window=3, halt_tol=0.1, max_passes=4, n_passes_train=(1, 2))
  cfg = SleepConfig(window=3, n_passes=3, halt_tol=0.1)
  assert cfg.adaptive and cfg.max_n_passes == 3 and cfg.n_sleep_passes == 2
  assert SleepConfig(window=3, halt_tol=0.1, max_passes=5).max_n_passes == 5


# -- the model: windowed forward and serving ---------------------------------------------------------
@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_impl="reference")
  return HybridLM(cfg, rngs=nnx.Rngs(0))


def _forward(model, sleep, schedule, tokens):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, t: windowed_forward(nnx.merge(graphdef, st), t, None, sleep, sleep_schedule=schedule))
  return fn(state, tokens)


def _tokens(b, t, seed):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)


def _same(a, b, what):
  for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}[{i}]")


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_windowed_zero_tol_equals_fixed_max_passes(model, eviction):
  tokens = _tokens(2, 6, 1)
  schedule = (True, False)
  fixed = _forward(model, SleepConfig(window=3, n_passes=4, eviction=eviction), schedule, tokens)
  never = _forward(model, SleepConfig(window=3, halt_tol=0.0, max_passes=4, eviction=eviction), schedule, tokens)
  _same(fixed, never, "halt_tol=0 vs N=4")
  np.testing.assert_array_equal(np.asarray(never.passes), [[4, 0], [4, 0]])
  once = _forward(model, SleepConfig(window=3, halt_tol=1e30, max_passes=4, eviction=eviction), schedule, tokens)
  two = _forward(model, SleepConfig(window=3, n_passes=2, eviction=eviction), schedule, tokens)
  # Not bit-exact: a scan of 3 positions (2 skipped) against a scan of 1 is
  # compiled differently (about 1 ulp apart); halt_tol=0 above is the same
  # program shape as fixed N and matches exactly.
  assert_close(two, once, what="huge halt_tol vs N=2")
  np.testing.assert_array_equal(np.asarray(once.passes), [[2, 0], [2, 0]])


def _reference_changes(model, tokens, n_max):
  """By hand: the relative change of each example's core state over sleep passes 2..n_max of window 1."""
  w = tokens.shape[1] // 2
  pos = jnp.arange(w, dtype=jnp.int32)
  fw = init_fast_weights(model.config, tokens.shape[0])
  h, fw, _ = model.run_blocks(model.embed_tokens(tokens[:, :w]), fw, pos, window=w)  # wake (no prelude/coda)
  changes = []
  for _ in range(n_max - 1):
    h, new, _ = model.run_blocks(h, fw, pos, window=w)
    changes.append(relative_change(fw.states, new.states))
    fw = new
  return np.stack([np.asarray(c) for c in changes], axis=1)  # [B, n_max - 1]


def test_windowed_examples_halt_independently(model):
  n_max, tokens = 6, _tokens(4, 6, 2)
  changes = _reference_changes(model, tokens, n_max)
  # A tolerance between the examples' trajectories, well away from every
  # reference value (so float noise cannot flip a decision), that makes the
  # examples halt after different numbers of passes.
  tol, expected = separating_halt_tol(changes, n_max, gap=1.01)
  sleep = SleepConfig(window=3, halt_tol=tol, max_passes=n_max)
  out = _forward(model, sleep, (True, False), tokens)
  np.testing.assert_array_equal(np.asarray(out.passes[:, 0]), expected)
  assert np.all(np.asarray(out.passes[:, 1]) == 0)
  # Each example equals the fixed-N forward at its own pass count.
  for n in sorted(set(expected.tolist())):
    ref = _forward(model, SleepConfig(window=3, n_passes=int(n)), (True, False), tokens)
    rows = np.nonzero(expected == n)[0]
    assert_close(ref.logits[rows], out.logits[rows], what=f"logits N={n}")
    assert_close([s[rows] for s in ref.fast_weights.states], [s[rows] for s in out.fast_weights.states],
                 what=f"fast weights N={n}")


def test_session_sleeps_adaptively_like_the_windowed_forward(model):
  tokens = _tokens(2, 7, 3)
  sleep = SleepConfig(window=3, halt_tol=0.3, max_passes=5, eviction="sliding")
  ref = _forward(model, sleep, serving_schedule(7, 3), tokens)
  np.testing.assert_array_equal(np.asarray(ref.passes), [[4, 3, 0], [5, 3, 0]])  # rows and windows differ
  session = SleepSession(model, sleep, batch_size=2)
  # Token by token through a boundary (sleep after a streamed window), then a whole window.
  pieces = [session.feed(tokens[:, :4]), session.feed(tokens[:, 4:])]
  assert_close(ref.logits, jnp.concatenate(pieces, axis=1), what="streamed logits")
  assert_close(ref.fast_weights, session.fast_weights, what="fast weights")


def test_eval_step_reports_each_examples_passes_and_evaluate_averages_them(model):
  # The trainer's eval step (the one launch.eval and the in-training evaluation
  # run) hands the passes each example's sleep ran to metrics.evaluate, which
  # averages them per slept window: here the per-example counts of the
  # windowed forward, which differ between the rows.
  import optax
  from sleep_jax.train import metrics as metrics_lib
  from sleep_jax.train import state as state_lib
  from sleep_jax.train import step as step_lib
  from sleep_jax.windowed import WindowedLoss
  from tasks.evaluation import Evaluator

  tokens = _tokens(2, 7, 3)
  sleep = SleepConfig(window=3, halt_tol=0.3, max_passes=5, eviction="sliding")
  schedule = serving_schedule(7, 3)
  ref = np.asarray(_forward(model, sleep, schedule, tokens).passes)  # [[4, 3, 0], [5, 3, 0]] (test above)
  graphdef, state = state_lib.create_train_state(lambda rngs: HybridLM(model.config, rngs=rngs), optax.identity(), 0)
  state = dataclasses.replace(state, params=nnx.state(model, nnx.Param))  # the fixture's weights
  eval_step = jax.jit(step_lib.make_eval_step(WindowedLoss(sleep, schedule), graphdef))
  mask = np.zeros((2, 7), np.float32)
  mask[:, 6] = 1
  depth = np.where(mask > 0, np.asarray([[2], [5]]), -1).astype(np.int32)
  batch = {"tokens": tokens, "targets": tokens, "loss_mask": mask, "depth": depth,
           "answer_id": np.zeros((2, 7), np.int32)}
  out = jax.device_get(eval_step(state, batch))
  np.testing.assert_array_equal(out["sleep_passes"], ref.sum(1))
  np.testing.assert_array_equal(out["sleep_windows"], (ref > 0).sum(1))
  result = metrics_lib.evaluate(lambda b: out, [batch], Evaluator("answer"))
  assert result["sleep/passes"] == pytest.approx(ref.sum() / (ref > 0).sum())
  assert result["sleep/passes/depth=2"] == pytest.approx(ref[0].sum() / 2)
  assert result["sleep/passes/depth=5"] == pytest.approx(ref[1].sum() / 2)
