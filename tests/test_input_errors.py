"""Inputs that used to be accepted or misread: each is refused in one line naming the field, or accepted as meant.

Token ids outside the vocabulary at every entry point that can check them
(and what happens where none can), the launch data check. Valid inputs keep
their numbers: the regression tests (``test_model.py``, ``test_windowed.py``,
``test_consolidate.py``) pin them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import SleepConfig
from sleep_jax.windowed import CheckedSchedule, windowed_forward, windowed_loss
from test_fuzz import VOCAB, names, session_model

OUT_OF_RANGE = rf"tokens must lie in \[0, {VOCAB}\) \(vocab_size\)"


def one_line(err) -> str:
  """The exception's message, asserted to be one line that names no internal carry."""
  msg = str(err.value)
  assert "\n" not in msg and "c[0]" not in msg, msg
  return msg


# -- token ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_out_of_range_token_ids_are_refused_where_concrete(bad):
  model = session_model()
  tokens = np.array([[1, bad, 2, 3]], np.int32)
  batch = {"tokens": tokens, "targets": np.ones_like(tokens), "loss_mask": np.ones(tokens.shape, np.float32)}
  calls = {
      "HybridLM.__call__": lambda: model(jnp.asarray(tokens)),
      "HybridLM.decode_step": lambda: model.decode_step(jnp.asarray(tokens[:, 1]), jnp.int32(0),
                                                        model.init_fast_weights(1), model.init_kv_caches(1, 4),
                                                        model.init_conv_histories(1)),
      "windowed_forward": lambda: windowed_forward(model, tokens, None, SleepConfig(window=2, n_passes=2)),
      "windowed_loss": lambda: windowed_loss(model, batch, SleepConfig(window=2)),
  }
  for what, call in calls.items():
    with pytest.raises(ValueError, match=OUT_OF_RANGE) as err:
      call()
    assert (f"min {bad}," if bad < 0 else f"max {bad}") in one_line(err), what


def test_traced_token_ids_cannot_be_checked_as_documented():
  # Under jit the check cannot run: id V gives NaN logits and -1 reads id V - 1 (the docstrings say so).
  model = session_model()
  logits = nnx.jit(lambda m, t: m(t)[0])
  at = lambda ids: np.asarray(logits(model, jnp.asarray([ids], jnp.int32)))
  assert np.isnan(at([1, VOCAB, 2])[0, 1]).all()
  np.testing.assert_array_equal(at([1, -1, 2]), at([1, VOCAB - 1, 2]))


def test_checked_schedule_checks_every_batch_s_token_ids_on_the_host():
  mask = np.zeros((2, 8), np.float32)
  mask[:, 7] = 1
  good = {"tokens": np.full((2, 8), VOCAB - 1, np.int32), "loss_mask": mask}
  bad = {"tokens": good["tokens"].copy(), "loss_mask": mask}
  bad["tokens"][1, 3] = VOCAB
  it = CheckedSchedule(iter([good, bad]), (True, False), 4, VOCAB)
  assert next(it) is good
  with pytest.raises(ValueError, match=r"a batch's tokens must lie in \[0, 7\) \(vocab_size\); got min 6, max 7"):
    next(it)
  # Without a vocabulary (the default) only the schedule is checked, as before.
  assert next(CheckedSchedule(iter([bad]), (True, False), 4)) is bad


def test_the_launch_data_path_checks_token_ids():
  from launch import experiment
  from launch.configs import rule110_small
  exp = experiment.experiment_from_config(rule110_small.get_config())
  spec = experiment.build_run_spec(exp)
  for make in (spec.train_data, spec.eval_data):
    it = make()
    assert isinstance(it, CheckedSchedule) and it.vocab_size == exp.model.vocab_size


# -- a window longer than the sequence ---------------------------------------------------------------
def test_a_window_longer_than_the_sequence_warns_once_that_nothing_sleeps(caplog):
  model = session_model()
  short = lambda t, n, **kw: windowed_forward(model, np.ones((1, t), np.int32), None,
                                              SleepConfig(window=9, n_passes=n), **kw)
  with caplog.at_level("WARNING", logger="sleep_jax.windowed"):
    out = short(5, 3)
    short(5, 3)  # once per (L, T)
  warned = [r.getMessage() for r in caplog.records if "longer than the sequence" in r.getMessage()]
  assert warned == ["windowed_forward: sleep.window L = 9 is longer than the sequence (T = 5 tokens), so no window "
                    "fills and none sleeps: N = 3 runs as N = 1"]
  assert np.asarray(out.passes).tolist() == [[0]]
  caplog.clear()
  with caplog.at_level("WARNING", logger="sleep_jax.windowed"):
    short(6, 1)  # N = 1 asks for no sleep
    asked = short(6, 3, sleep_schedule=(True,))  # an explicit schedule sleeps on the partial window
  assert not caplog.records and np.asarray(asked.passes).tolist() == [[3]]


def test_the_launch_path_refuses_sleep_when_no_window_of_the_task_sleeps():
  import dataclasses

  from launch import experiment
  from launch.configs import rule110_small
  exp = experiment.experiment_from_config(rule110_small.get_config())  # T = 17, L = 16
  with_sleep = lambda **kw: dataclasses.replace(exp, sleep=SleepConfig(**kw))
  experiment.build_run_spec(with_sleep(window=64, n_passes=1))  # N = 1 asks for no sleep
  for sleep, field, why in [
      (dict(window=64, n_passes=4), "n_passes=4", r"its sequences \(T = 17\) are shorter than the window \(L = 64\)"),
      (dict(window=17, n_passes_train=(1, 2)), r"n_passes_train=\(1, 2\)",
       r"every window of its sequences \(T = 17, L = 17\) holds loss tokens"),
      (dict(window=17, halt_tol=0.1, max_passes=3), "max_passes=3", r"every window .* holds loss tokens")]:
    with pytest.raises(ValueError, match=rf"^config\.sleep\.{field} asks for sleep, but no window of task rule110 "
                                         rf"ever sleeps: {why}") as err:
      experiment.build_run_spec(with_sleep(**sleep))
    assert one_line(err).endswith("set config.sleep.n_passes=1 or change the task config")
