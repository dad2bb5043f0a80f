"""Randomised N in training: the draw, a drawn-N step against a fixed-N step, resume across a change of N."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.train import config as tcfg
from sleep_jax.train import loop, metrics as metrics_lib, parallel, state as tstate, step as tstep
from sleep_jax.windowed import WindowedLoss
from train_helpers import SEQ, VOCAB, make_batch, make_grain_iter

BATCH = 4
WINDOW = 4
SCHEDULE = (True, False)  # SEQ = 8: the first window sleeps, the second predicts


def _factory(rngs):
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                    gdn_impl="reference")
  return HybridLM(cfg, rngs=rngs)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_draw_is_a_function_of_seed_and_step_and_follows_the_weights():
  sleep = SleepConfig(window=WINDOW, n_passes=2, n_passes_train=[1, 2, 4], n_passes_train_weights=(1, 0, 3))
  assert sleep.n_passes_train == (1, 2, 4)  # lists (e.g. from JSON configs) become tuples
  draws = [sleep.draw_n_passes(0, s) for s in range(4000)]
  assert draws == [sleep.draw_n_passes(0, s) for s in range(4000)]
  assert draws != [sleep.draw_n_passes(1, s) for s in range(4000)]
  counts = collections.Counter(draws)
  assert counts[2] == 0  # weight 0: never drawn
  # Binomial(4000, 1/4): sd ~27, so +-150 is > 5 sd.
  assert abs(counts[1] - 1000) < 150 and counts[1] + counts[4] == 4000
  uniform = SleepConfig(window=WINDOW, n_passes_train=(3, 5))
  assert set(uniform.draw_n_passes(0, s) for s in range(64)) == {3, 5}
  assert SleepConfig(window=WINDOW, n_passes=3).draw_n_passes(0, 7) == 3  # no distribution: n_passes
  assert uniform.with_n_passes(5) == SleepConfig(window=WINDOW, n_passes=5)


def test_heavy_tailed_draw_follows_its_law():
  # N = min(1 + Poisson(lam), max), lam ~ LogNormal(log(mean - 1) - s^2/2, s).
  sleep = SleepConfig(window=WINDOW, n_passes=4, n_passes_train_mean=4.0, n_passes_train_sigma=0.5,
                      n_passes_train_max=10)
  values, probs = sleep.n_passes_train_distribution()
  assert values == tuple(range(1, 11)) and abs(sum(probs) - 1) < 1e-12
  # The law, against numpy's own samplers of the formula (1e6 draws: sd of a frequency <= 5e-4).
  rng = np.random.default_rng(0)
  lam = rng.lognormal(np.log(3.0) - 0.5 ** 2 / 2, 0.5, 1_000_000)
  mc = np.bincount(np.minimum(1 + rng.poisson(lam), 10), minlength=11)[1:] / 1e6
  np.testing.assert_allclose(probs, mc, atol=3e-3)
  # The hashed draws, against the law: chi-square over 20,000 (seed, step) pairs, every expected count
  # >= 5 here; refused only beyond the 1e-4 upper quantile (false alarm 1 in 10,000).
  import scipy.stats
  draws = [sleep.draw_n_passes(seed, step) for seed in range(2) for step in range(10_000)]
  assert draws[:50] == [sleep.draw_n_passes(0, step) for step in range(50)]  # a function of (seed, step)
  observed = np.bincount(draws, minlength=11)[1:]
  expected = np.asarray(probs) * len(draws)
  assert expected.min() >= 5
  stat = float(np.sum((observed - expected) ** 2 / expected))
  assert stat < scipy.stats.chi2.isf(1e-4, df=len(values) - 1), (observed, expected)
  # The mean is the mean N before the cap; sigma = 0 is a plain Poisson.
  poisson = SleepConfig(window=WINDOW, n_passes_train_mean=3.0, n_passes_train_sigma=0, n_passes_train_max=40)
  v, p = poisson.n_passes_train_distribution()
  np.testing.assert_allclose(np.dot(v, p), 3.0, rtol=1e-9)
  np.testing.assert_allclose(p[:3], scipy.stats.poisson.pmf([0, 1, 2], 2.0), rtol=1e-9)


def test_detached_prefix_draw_and_step_config():
  sleep = SleepConfig(window=WINDOW, n_passes=3, grad_passes=2, detach_passes_train=2)
  draws = [sleep.draw_detach_passes(0, s) for s in range(3000)]
  counts = collections.Counter(draws)
  assert set(counts) == {0, 1, 2} and all(abs(c - 1000) < 150 for c in counts.values())  # sd ~26
  assert SleepConfig(window=WINDOW, n_passes=3).draw_detach_passes(0, 5) == 0
  step = next(s for s in range(100) if sleep.draw_detach_passes(0, s) == 2)
  # P = 2 detached passes after the wake pass, then N - 1 = 2 with gradient (grad_passes = 2 <= N - 1).
  assert sleep.for_train_step(0, step) == SleepConfig(window=WINDOW, n_passes=5, grad_passes=2)
  zero = next(s for s in range(100) if sleep.draw_detach_passes(0, s) == 0)
  assert sleep.for_train_step(0, zero) == SleepConfig(window=WINDOW, n_passes=3, grad_passes=2)
  # grad_passes unset: the N - 1 sleep passes after the prefix; N < 2: nothing to start late.
  assert SleepConfig(window=WINDOW, n_passes=3).with_draw(3, 2).grad_passes == 2
  assert SleepConfig(window=WINDOW, n_passes=1).with_draw(1, 2) == SleepConfig(window=WINDOW, n_passes=1)
  # A fixed adaptive cap grows by the prefix.
  capped = SleepConfig(window=WINDOW, halt_tol=0.1, max_passes=3, detach_passes_train=2)
  assert capped.with_draw(capped.n_passes, 2) == SleepConfig(window=WINDOW, halt_tol=0.1, max_passes=5, grad_passes=2)


@pytest.mark.parametrize("bad,match", [
    (dict(n_passes_train_mean=1.0, n_passes_train_max=4), "must be > 1"),
    (dict(n_passes_train_mean=float("inf"), n_passes_train_max=4), "n_passes_train_mean must be a finite"),
    (dict(n_passes_train_mean=3.0), "needs n_passes_train_max"),
    (dict(n_passes_train_mean=3.0, n_passes_train_max=0), "n_passes_train_max must be"),
    (dict(n_passes_train_mean=3.0, n_passes_train_max=4, n_passes_train_sigma=-1), "n_passes_train_sigma"),
    (dict(n_passes_train_max=4), "need n_passes_train_mean"),
    (dict(n_passes_train_sigma=1.0), "need n_passes_train_mean"),
    (dict(n_passes_train_mean=3.0, n_passes_train_max=4, n_passes_train=(1, 2)), "set one"),
    (dict(n_passes_train_mean=3.0, n_passes_train_max=4, halt_tol=0.1, max_passes=4), "max_passes fixes"),
    (dict(detach_passes_train=-1), "detach_passes_train must be"),
    (dict(detach_passes_train=1.5), "detach_passes_train must be"),
    (dict(n_passes_train=()), "n_passes_train"), (dict(n_passes_train=(1, -1)), "n_passes_train"),
    (dict(n_passes_train=(1, 2.0)), "n_passes_train"), (dict(n_passes_train_weights=(1.0,)), "needs n_passes_train"),
    (dict(n_passes_train=(1, 2), n_passes_train_weights=(1.0,)), "one weight per"),
    (dict(n_passes_train=(1, 2), n_passes_train_weights=(0.0, 0.0)), "not all zero")])
def test_bad_distributions_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    SleepConfig(window=WINDOW, **bad)


HEAVY = SleepConfig(window=WINDOW, n_passes=1, n_passes_train_mean=2.5, n_passes_train_max=3)


@pytest.mark.parametrize("sleep", [SleepConfig(window=WINDOW, n_passes=1, n_passes_train=(1, 3)), HEAVY],
                         ids=["listed", "heavy_tailed"])
def test_drawn_step_equals_fixed_step(sleep):
  loss = WindowedLoss(sleep, SCHEDULE)
  s3 = next(s for s in range(100) if sleep.draw_n_passes(0, s) == 3)
  s1 = next(s for s in range(100) if sleep.draw_n_passes(0, s) == 1)
  tx = optax.adamw(1e-2)
  graphdef, state = tstate.create_train_state(_factory, tx, seed=0)
  batch = make_batch(0, BATCH)

  def run(loss_fn, step):
    st = jax.tree.map(lambda x: x, state)
    st = tstate.TrainState(step=jnp.int32(step), params=st.params, opt_state=st.opt_state, rng=st.rng,
                           model_state=st.model_state)
    return jax.jit(tstep.make_train_step(loss_fn, tx, graphdef))(st, batch)

  drawn, m_drawn = run(loss.for_step(s3, 0), s3)
  fixed, m_fixed = run(WindowedLoss(SleepConfig(window=WINDOW, n_passes=3), SCHEDULE), s3)
  for a, b in zip(_leaves(fixed), _leaves(drawn)):
    np.testing.assert_array_equal(a, b)
  assert float(m_drawn["loss"]) == float(m_fixed["loss"])
  # The draw matters: the step that drew N = 1 computes another loss.
  one = jax.jit(lambda st, b: loss.for_step(s1, 0)(tstate.merge_model(graphdef, st), b)[0])
  assert float(one(state, batch)) != float(m_drawn["loss"])
  # Evaluation ignores the distribution: it runs at n_passes.
  assert loss.for_step(s3, 0).sleep.n_passes == 3 and loss.sleep.n_passes == 1


def test_resume_across_a_change_of_drawn_n_is_bit_exact(tmp_path, monkeypatch):
  sleep = SleepConfig(window=WINDOW, n_passes=1, n_passes_train=(1, 2))
  # A seed whose draws change N at the resume boundary (steps 2 -> 3) and use both values.
  seed = next(s for s in range(100) if sleep.draw_n_passes(s, 2) != sleep.draw_n_passes(s, 3))
  drawn = {sleep.draw_n_passes(seed, s) for s in range(6)}
  assert drawn == {1, 2}
  built = []
  real = parallel.data_parallel_train_step
  monkeypatch.setattr(parallel, "data_parallel_train_step", lambda *a, **k: built.append(1) or real(*a, **k))
  spec = loop.RunSpec(model_factory=_factory, loss_fn=WindowedLoss(sleep, SCHEDULE),
                      train_data=lambda: make_grain_iter(BATCH, seed=3))
  opt = tcfg.OptimizerConfig(kind="adamw", lr=1e-2, adamw_lr=1e-2, warmup_steps=2, decay_steps=8)
  config = lambda n: tcfg.TrainConfig(num_steps=n, batch_size=BATCH, seed=seed, optimizer=opt, log_every=3,
                                      checkpoint_every=3, num_devices=1, progress=False)
  straight = loop.train(spec, config(6), str(tmp_path / "straight"))
  assert len(built) == 2  # one compiled step per distinct N drawn
  # The logged steps (3 and 6) report the N their step drew and what it cost.
  recs = metrics_lib.read_jsonl(str(tmp_path / "straight" / "metrics.jsonl"), "train")
  assert [r["sleep/n_passes"] for r in recs] == [sleep.draw_n_passes(seed, 2), sleep.draw_n_passes(seed, 5)]
  for r in recs:
    assert r["sleep/passes"] == r["sleep/n_passes"] and r["sleep/wake_flops"] > 0
    assert (r["sleep/sleep_flops"] > 0) == (r["sleep/n_passes"] >= 2)
  loop.train(spec, config(3), str(tmp_path / "resumed"))
  resumed = loop.train(spec, config(6), str(tmp_path / "resumed"))
  assert resumed.resumed_from == 3
  for a, b in zip(_leaves(straight.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert SEQ == 2 * WINDOW
