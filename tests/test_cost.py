"""Compute accounting: analytic FLOPs against the program's own matmuls; the step's and session's reports."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sleep_jax import cost
from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.nn import attention
from sleep_jax.session import SleepSession
from sleep_jax.train import parallel, state as tstate, step as tstep
from sleep_jax.windowed import WindowedLoss, windowed_forward

VOCAB = 7


def _model(layout=("attn", "gdn"), **kw):
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=layout, n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_value_dim=4, gdn_impl="reference", **kw)
  return HybridLM(cfg, rngs=nnx.Rngs(0))


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)


def _counted_matmul_flops(model, sleep):
  """Matmul FLOPs in the jaxpr of a windowed forward over windows 3, 3, 1 (the last predicts), and its passes."""
  graphdef, state = nnx.split(model)
  tokens, schedule = _tokens(2, 7), (True, True, False)

  def fwd(st, t):
    return windowed_forward(nnx.merge(graphdef, st), t, None, sleep, sleep_schedule=schedule)

  return cost.jaxpr_matmul_flops(jax.make_jaxpr(fwd)(state, tokens)), jax.jit(fwd)(state, tokens).passes


@pytest.mark.parametrize("layout,prelude,coda,sleep", [
    (("attn", "gdn"), 0, 0, SleepConfig(window=3, n_passes=0)),
    (("attn", "gdn"), 0, 0, SleepConfig(window=3, n_passes=1)),
    # N = 1 runs the fused forward (windowed.forward_unslept): the same matmuls as the window loop.
    (("gdn", "attn", "gdn", "attn"), 1, 1, SleepConfig(window=3, n_passes=1, eviction="sliding")),
    (("attn", "gdn"), 0, 0, SleepConfig(window=3, n_passes=3)),
    (("attn", "gdn"), 0, 0, SleepConfig(window=3, n_passes=2, eviction="sliding")),
    (("gdn", "attn", "gdn", "attn"), 1, 1, SleepConfig(window=3, n_passes=3, eviction="sliding")),
])
def test_analytic_flops_equal_the_programs_matmuls(layout, prelude, coda, sleep, monkeypatch):
  # Windows 3, 3, 1 (a short last window); the first two sleep, the last predicts. The fused N = 1 forward
  # runs window by window here (on CPU a short sequence would use one masked product, counted below).
  monkeypatch.setattr(attention, "DENSE_MAX_T_CPU", 0)
  model = _model(layout, prelude=prelude, coda=coda)
  counted, passes = _counted_matmul_flops(model, sleep)
  n_run = {0: 1, 1: 1}.get(sleep.n_passes, sleep.n_passes)
  np.testing.assert_array_equal(np.asarray(passes), [[n_run, n_run, 0]] * 2)
  c = cost.sequence_cost(model.config, sleep, 7, passes, matmul_only=True)
  assert float(jnp.sum(c["wake_flops"] + c["sleep_flops"])) == counted
  if sleep.n_passes <= 1:
    assert float(jnp.sum(c["sleep_flops"])) == 0.0
  assert np.asarray(c["sleep_windows"]).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("reinject,sleep", [
    ("embedding", SleepConfig(window=3, n_passes=3)),
    # Halting on the predictions: each sleep pass also runs the coda and the output projection.
    ("none", SleepConfig(window=3, halt_tol=0.0, max_passes=3, halt_measure="kl")),
])
def test_sleep_recipe_flops_equal_the_programs_matmuls(reinject, sleep, monkeypatch):
  monkeypatch.setattr(attention, "DENSE_MAX_T_CPU", 0)
  model = _model(("gdn", "attn", "gdn", "attn"), prelude=1, coda=1, sleep_reinject=reinject)
  graphdef, state = nnx.split(model)
  tokens, schedule = _tokens(2, 7), (True, True, False)

  def fwd(st, t):
    return windowed_forward(nnx.merge(graphdef, st), t, None, sleep, sleep_schedule=schedule)

  counted = cost.jaxpr_matmul_flops(jax.make_jaxpr(fwd)(state, tokens))
  passes = jax.jit(fwd)(state, tokens).passes
  np.testing.assert_array_equal(np.asarray(passes), [[3, 3, 0]] * 2)
  c = cost.sequence_cost(model.config, sleep, 7, passes, matmul_only=True)
  assert float(jnp.sum(c["wake_flops"] + c["sleep_flops"])) == counted


@pytest.mark.parametrize("canon_size", [0, 3])
def test_decode_flops_equal_the_programs_matmuls(canon_size):
  model, sleep = _model(canon_size=canon_size), SleepConfig(window=4)
  graphdef, state = nnx.split(model)

  def step(st, token):
    m = nnx.merge(graphdef, st)
    return m.decode_step(token, jnp.int32(0), m.init_fast_weights(1), m.init_kv_caches(1, sleep.window),
                         m.init_conv_histories(1), window=sleep.window)[0]

  counted = cost.jaxpr_matmul_flops(jax.make_jaxpr(step)(state, jnp.zeros((1,), jnp.int32)))
  assert cost.decode_flops(model.config, sleep, matmul_only=True) == counted
  # The full convention adds the short convolution and the recurrence's decay, and the Canon layers' two
  # depthwise convolutions in each of the two blocks (no matmuls).
  cfg = model.config
  extra = 2 * cfg.conv_size * cfg.num_gdn_heads * (2 * cfg.gdn_head_dim + cfg.gdn_v_dim) + \
      2 * cfg.num_gdn_heads * cfg.gdn_head_dim * cfg.gdn_v_dim + 2 * 2 * (2 * canon_size * cfg.d_model)
  assert cost.decode_flops(cfg, sleep) == counted + extra


def test_train_step_reports_what_ran_over_the_global_batch():
  model = _model()
  sleep = SleepConfig(window=3, halt_tol=0.3, max_passes=5)
  schedule = (True, True, False)
  tokens = _tokens(4, 7, seed=3)
  batch = {"tokens": np.asarray(tokens), "targets": np.asarray(jnp.roll(tokens, -1, 1)),
           "loss_mask": np.zeros((4, 7), np.float32)}
  batch["loss_mask"][:, 6] = 1.0
  graphdef, st = nnx.split(model)
  passes = np.asarray(jax.jit(lambda s, t: windowed_forward(nnx.merge(graphdef, s), t, None, sleep,
                                                            sleep_schedule=schedule).passes)(st, tokens))
  assert len(set(passes[:, :2].ravel().tolist())) > 1  # examples and windows ran different passes
  tx = optax.sgd(0.1)
  graphdef, state = tstate.create_train_state(lambda rngs: _model(), tx, seed=0)
  mesh = parallel.make_data_mesh(2)
  fn = parallel.data_parallel_train_step(
      tstep.make_train_step(WindowedLoss(sleep, schedule), tx, graphdef, axis_name=parallel.DATA_AXIS), mesh)
  _, m = fn(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
  wf = cost.window_flops(model.config, sleep, 3)
  wake = 4 * (2 * wf.wake + cost.window_flops(model.config, sleep, 1).wake)
  sleep_flops = float(np.sum(wf.sleep(passes[:, :2])))
  np.testing.assert_allclose(float(m["sleep/wake_flops"]), wake, rtol=1e-6)
  np.testing.assert_allclose(float(m["sleep/sleep_flops"]), sleep_flops, rtol=1e-6)
  np.testing.assert_allclose(float(m["sleep/passes"]), passes[:, :2].mean(), rtol=1e-6)
  assert float(m["sleep/sleep_windows"]) == 2.0 and float(m["sleep/n_passes"]) == 5.0


def test_session_stats_count_what_ran():
  model = _model()
  sleep = SleepConfig(window=3, n_passes=3)
  session = SleepSession(model, sleep, batch_size=2)
  tokens = np.asarray(_tokens(2, 10, seed=4))
  session.feed(tokens[:, :2])    # streamed
  session.feed(tokens[:, 2:3])   # fills window 1: re-run its wake pass, then sleep
  session.feed(tokens[:, 3:9])   # two whole windows: wake + sleep each, no re-run
  other = session.fork()
  session.feed(tokens[:, 9:])    # one streamed token
  s = session.stats
  wf, tok = cost.window_flops(model.config, sleep, 3), cost.decode_flops(model.config, sleep)
  assert (s.tokens, s.sleeps, s.passes) == (20, 3, 3.0)
  assert s.wake_flops == pytest.approx(2 * (4 * tok + 2 * wf.wake))
  assert s.sleep_flops == pytest.approx(2 * (wf.stack + 3 * wf.sleep(3)))
  assert s.flops_per_token == pytest.approx((s.wake_flops + s.sleep_flops) / 20)
  assert other.stats.tokens == 18  # a fork counts on its own


# The block options of imported Hugging Face hybrids (sleep_jax.pretrained): grouped query and GDN key heads,
# the attention output gate and q/k norms, partial rotary, zero-centred norms.
IMPORTED_OPTIONS = dict(n_kv_heads=1, attn_output_gate=True, attn_qk_norm=True, rope_fraction=0.5,
                        norm_zero_centered=True, gdn_n_key_heads=1)


def test_analytic_flops_count_the_imported_block_options(monkeypatch):
  monkeypatch.setattr(attention, "DENSE_MAX_T_CPU", 0)
  model = _model(("gdn", "attn"), **IMPORTED_OPTIONS)
  sleep = SleepConfig(window=3, n_passes=2)
  counted, passes = _counted_matmul_flops(model, sleep)
  c = cost.sequence_cost(model.config, sleep, 7, passes, matmul_only=True)
  assert float(jnp.sum(c["wake_flops"] + c["sleep_flops"])) == counted
  # Fewer key/value and GDN key heads, one more projection: not the default count.
  plain = cost.sequence_cost(_model(("gdn", "attn")).config, sleep, 7, passes, matmul_only=True)
  assert float(jnp.sum(plain["wake_flops"])) != float(jnp.sum(c["wake_flops"]))
