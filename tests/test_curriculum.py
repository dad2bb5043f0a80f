"""A curriculum over the training data: ``tasks.StagedIterator`` and the launch config's ``curriculum`` section."""
import dataclasses

import numpy as np
import pytest

import tasks
from launch import experiment
from launch.configs import depo_sleep_demo

BATCH, STEPS = 16, 4


def _depo_stage(k_weights, seed):
  config = depo_sleep_demo.get_config()
  exp = experiment.experiment_from_config(config)
  cfg = exp.task_config if k_weights is None else dataclasses.replace(exp.task_config, k_weights=k_weights)
  return lambda: iter(tasks.make_dataset("depo", cfg, "train", seed=seed, batch_size=BATCH))


def _take(it, n):
  return [next(it)["tokens"].copy() for _ in range(n)]


def test_staged_iterator_draws_each_stage_in_turn_and_resumes_anywhere():
  first, second = _depo_stage((1.0, 1.0, 0.0), 5), _depo_stage(None, 6)
  staged = tasks.StagedIterator([first, second], [3])
  got = _take(staged, 7)
  want = _take(first(), 3) + _take(second(), 4)  # each stage from its own start
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  # A state taken before any batch, inside the first stage, at the switch and inside the last resumes exactly.
  for cut in (0, 2, 3, 5):
    it = tasks.StagedIterator([first, second], [3])
    _take(it, cut)
    state = it.get_state()
    fresh = tasks.StagedIterator([first, second], [3])
    fresh.set_state(state)
    for g, w in zip(_take(fresh, 7 - cut), got[cut:]):
      np.testing.assert_array_equal(g, w)
  assert fresh.stage == 1


def test_staged_iterator_refuses_bad_stages_and_foreign_states():
  one = _depo_stage(None, 0)
  with pytest.raises(ValueError, match="at least one stage"):
    tasks.StagedIterator([], [])
  for lengths in ([], [0], [2, 2], [1.5]):
    with pytest.raises(ValueError, match="lengths must be 1 integers >= 1"):
      tasks.StagedIterator([one, one], lengths)
  it = tasks.StagedIterator([one, one], [2])
  for bad in ({"stage": 2, "taken": 0, "inner": None}, {"stage": 0, "taken": 3, "inner": None},
              {"stage": -1, "taken": 0, "inner": None}, {"taken": 0}, [0, 0]):
    with pytest.raises(ValueError, match="not a state of this curriculum"):
      it.set_state(bad)
  # A plain grain iterator's state (a run without a curriculum) is refused with the same message.
  with pytest.raises(ValueError, match="another curriculum"):
    it.set_state(one().get_state())


def _demo_without_curriculum():
  cfg = depo_sleep_demo.get_config()
  cfg.curriculum.steps = 0
  cfg.curriculum.task_config.update({k: None for k in cfg.curriculum.task_config})
  cfg.optimizer.restarts = ()
  return cfg


def _spec(steps, **cur_fields):
  cfg = _demo_without_curriculum()
  cfg.train.update(batch_size=BATCH, num_steps=100)
  cfg.curriculum.steps = steps
  cfg.curriculum.task_config.update(cur_fields)
  return experiment.build_run_spec(experiment.experiment_from_config(cfg))


def _scored_depths(batch):
  d = np.asarray(batch["depth"])
  return d[(np.asarray(batch["loss_mask"]) > 0) & (d >= 0)]


def test_curriculum_trains_on_its_task_first_then_the_runs_own_stream():
  it = _spec(STEPS, k_weights=(1.0, 1.0, 0.0)).train_data()
  early = np.concatenate([_scored_depths(next(it)) for _ in range(STEPS)])
  late_batches = [next(it) for _ in range(STEPS)]
  late = np.concatenate([_scored_depths(b) for b in late_batches])
  # The curriculum's k_weights: k = 1 and 2 equally likely, never 3 (4 x 16 x 5 = 320 queries).
  assert set(early.tolist()) == {1, 2} and len(early) == STEPS * BATCH * 5
  assert abs(np.mean(early == 1) - 0.5) < 0.1  # binomial s.d. 0.028
  # Then the run's own k ~ U{1, 2, 3}.
  assert abs(np.mean(late == 3) - 1 / 3) < 0.1
  # The run's stream begins where a run without a curriculum begins (the curriculum has its own seed).
  plain = _spec(0).train_data()
  for b in late_batches:
    np.testing.assert_array_equal(b["tokens"], next(plain)["tokens"])
  # Checkpointable through the schedule check the trainer wraps it in.
  it = _spec(STEPS, k_weights=(1.0, 1.0, 0.0)).train_data()
  _take(it, STEPS - 1)
  state = it.get_state()
  want = _take(it, 3)
  again = _spec(STEPS, k_weights=(1.0, 1.0, 0.0)).train_data()
  again.set_state(state)
  for g, w in zip(_take(again, 3), want):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("steps, fields, match", [
    (100, {"k_weights": (1.0, 1.0, 0.0)}, r"curriculum.steps must be 0 or an integer in \[1, train.num_steps = 100\)"),
    (-1, {"k_weights": (1.0, 1.0, 0.0)}, "curriculum.steps must be 0 or an integer"),
    (5, {}, "sets no field"),
    (5, {"k_max": 2, "eval_ks": (1, 2)}, "changes the task's vocabulary size"),
    (5, {"n_queries": 4}, "changes the task's sequence length"),
    (5, {"k_weights": (1.0, 1.0)}, "k_weights must be None or k_max = 3"),
    (5, {"color": 1}, "unknown field"),
])
def test_curriculum_is_validated(steps, fields, match):
  cfg = _demo_without_curriculum()
  cfg.train.num_steps = 100
  cfg.curriculum.steps = steps
  if "color" in fields:
    cfg.curriculum.task_config.unlock()
  cfg.curriculum.task_config.update(fields)
  with pytest.raises(ValueError, match=match):
    experiment.experiment_from_config(cfg)


def test_steps_zero_turns_a_config_files_curriculum_off():
  cfg = depo_sleep_demo.get_config()  # the demo sets a curriculum
  cfg.curriculum.steps = 0  # what --config.curriculum.steps=0 does; its task fields stay set and inert
  exp = experiment.experiment_from_config(cfg)
  assert exp.curriculum_steps == 0 and exp.curriculum_task_config is None


def test_no_curriculum_needs_no_steps():
  cfg = _demo_without_curriculum()
  cfg.train.num_steps = 0  # an evaluation-only run (e.g. from retrofitted parameters)
  assert experiment.experiment_from_config(cfg).curriculum_steps == 0


def test_a_run_config_without_the_section_has_no_curriculum():
  cfg = depo_sleep_demo.get_config().to_dict()
  del cfg["curriculum"]
  exp = experiment.experiment_from_config(cfg)
  assert exp.curriculum_steps == 0 and exp.curriculum_task_config is None
