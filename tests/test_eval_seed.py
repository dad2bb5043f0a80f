"""``TrainConfig.eval_seed``: one eval set for every run of a comparison."""
import numpy as np
import pytest

from sleep_jax.train import config as tcfg


def _eval_tokens(seed, eval_seed):
  from launch import experiment
  from launch.configs import rule110_sleep_demo
  cfg = rule110_sleep_demo.get_config()
  cfg.task_config.num_eval_examples = 8
  cfg.train.update(batch_size=4, seed=seed, eval_seed=eval_seed)
  spec = experiment.build_run_spec(experiment.experiment_from_config(cfg))
  train = next(spec.train_data())["tokens"]
  return np.concatenate([b["tokens"] for b in spec.eval_data()]), np.asarray(train)


def test_eval_seed_fixes_the_eval_examples_and_leaves_training_data_to_the_run_seed():
  eval0, train0 = _eval_tokens(seed=0, eval_seed=7)
  eval1, train1 = _eval_tokens(seed=1, eval_seed=7)
  np.testing.assert_array_equal(eval0, eval1)  # the same eval examples for both run seeds
  assert not np.array_equal(train0, train1)  # the training data still follows the run seed
  # None keeps the old behaviour: the eval split is seeded by the run's seed.
  own0, _ = _eval_tokens(seed=0, eval_seed=None)
  own1, _ = _eval_tokens(seed=1, eval_seed=None)
  assert not np.array_equal(own0, own1)
  seeded, _ = _eval_tokens(seed=1, eval_seed=0)
  np.testing.assert_array_equal(own0, seeded)  # eval_seed = s is the eval set of a run with seed s


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_eval_seed_is_validated(bad):
  with pytest.raises(ValueError, match="TrainConfig.eval_seed must be None or an integer >= 0"):
    tcfg.TrainConfig(num_steps=1, batch_size=1, eval_seed=bad)


def test_every_demo_config_fixes_its_eval_seed():
  import glob
  import importlib
  import os
  names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "launch",
                                                                     "configs", "*_demo.py"))]
  assert names
  for name in names:
    cfg = importlib.import_module(f"launch.configs.{name}").get_config()
    assert cfg.train.eval_seed is not None, name
