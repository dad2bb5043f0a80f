"""``OptimizerConfig.restarts``: the learning-rate schedule runs again from each restart."""
import dataclasses

import numpy as np
import pytest

from sleep_jax.train import config as tcfg
from sleep_jax.train import optimizer as opt_lib


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_each_segment_is_the_plain_schedule_over_its_own_length(schedule):
  cfg = tcfg.OptimizerConfig(kind="adamw", schedule=schedule, warmup_steps=10, min_lr_ratio=0.1, restarts=(60, 100))
  plain = dataclasses.replace(cfg, restarts=())
  sched = opt_lib.make_schedule(2e-3, cfg, 150)
  for start, length in ((0, 60), (60, 40), (100, 50)):
    ref = opt_lib.make_schedule(2e-3, plain, length)
    got = np.array([float(sched(start + i)) for i in range(length)])
    want = np.array([float(ref(i)) for i in range(length)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  # The restart warms up from zero again, having decayed before it (cosine, linear).
  assert float(sched(60)) == 0.0 and float(sched(70)) == pytest.approx(2e-3)
  if schedule != "constant":
    assert float(sched(59)) < 0.2 * 2e-3


def test_no_restart_is_the_old_schedule():
  cfg = tcfg.OptimizerConfig(kind="adamw", warmup_steps=5)
  a, b = opt_lib.make_schedule(1e-3, cfg, 50), opt_lib.make_schedule(1e-3, dataclasses.replace(cfg, restarts=()), 50)
  assert [float(a(i)) for i in range(50)] == [float(b(i)) for i in range(50)]


@pytest.mark.parametrize("restarts, match", [
    ((0,), "strictly increasing integers >= 1"), ((5, 5), "strictly increasing"), ((7, 3), "strictly increasing"),
    ((2.5,), "integers"), ((True,), "integers"), ("5", "strictly increasing")])
def test_bad_restarts_are_refused(restarts, match):
  with pytest.raises(ValueError, match=match):
    tcfg.OptimizerConfig(restarts=restarts)


def test_restarts_exclude_decay_steps_and_must_fall_inside_the_run():
  with pytest.raises(ValueError, match="exclude each other"):
    tcfg.OptimizerConfig(restarts=(10,), decay_steps=100)
  with pytest.raises(ValueError, match=r"below the run's num_steps \(50\)"):
    opt_lib.make_schedule(1e-3, tcfg.OptimizerConfig(restarts=(50,)), 50)
