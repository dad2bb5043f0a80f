"""Inputs that used to be accepted or misread: each is refused in one line naming the field, or accepted as meant.

The config dataclasses' integer, real, bool and dtype fields (a property
test in the style of ``test_fuzz.py``, reusing its value strategies), the
adaptive-sleep cap, token ids outside the vocabulary at every entry point
that can check them (and what happens where none can), the launch data
check, a window longer than the sequence, and a ``blocks_fn`` that changes a
shape. Valid inputs keep their numbers: the regression tests
(``test_model.py``, ``test_windowed.py``, ``test_consolidate.py``) pin them.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.windowed import CheckedSchedule, windowed_forward, windowed_loss
from test_fuzz import SLOW, VOCAB, field_values, names, session_model

OUT_OF_RANGE = rf"tokens must lie in \[0, {VOCAB}\) \(vocab_size\)"


def one_line(err) -> str:
  """The exception's message, asserted to be one line that names no internal carry."""
  msg = str(err.value)
  assert "\n" not in msg and "c[0]" not in msg, msg
  return msg


# -- config fields -----------------------------------------------------------------------------------
MODEL = dict(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, head_dim=8, gdn_head_dim=8)
SLEEP = dict(window=4, n_passes=2)


@pytest.mark.parametrize("cls, base, field, value", [
    (SleepConfig, SLEEP, "window", True), (SleepConfig, SLEEP, "n_passes", True),
    (SleepConfig, SLEEP, "window", 24.0), (SleepConfig, SLEEP, "grad_passes", 1.5),
    (SleepConfig, SLEEP, "n_passes_train", (1, True)), (SleepConfig, SLEEP, "remat_passes", 1),
    (ModelConfig, MODEL, "vocab_size", 64.5), (ModelConfig, MODEL, "vocab_size", True),
    (ModelConfig, MODEL, "n_layers", 2.5), (ModelConfig, MODEL, "d_model", np.float32(16)),
    (ModelConfig, MODEL, "gdn_n_heads", 1.5), (ModelConfig, MODEL, "mlp_hidden", False),
    (ModelConfig, MODEL, "gdn_chunk_size", 64.0), (ModelConfig, MODEL, "prelude", True),
    (ModelConfig, MODEL, "norm_eps", float("nan")), (ModelConfig, MODEL, "tie_embeddings", "yes"),
    (ModelConfig, MODEL, "dtype", np.float16), (ModelConfig, MODEL, "dtype", "float64"),
])
def test_bad_field_values_are_refused_in_one_line_naming_the_field(cls, base, field, value):
  with pytest.raises(ValueError) as err:
    cls(**{**base, field: value})
  assert one_line(err).startswith(f"{cls.__name__}.{field}"), str(err.value)


def test_numpy_integers_and_dtypes_are_accepted_as_meant():
  window = SleepConfig(window=np.int64(24), n_passes=np.int32(4), n_passes_train=(np.int64(1), 2))
  assert window == SleepConfig(window=24, n_passes=4, n_passes_train=(1, 2))
  assert hash(window) == hash(SleepConfig(window=24, n_passes=4, n_passes_train=(1, 2)))
  assert type(window.window) is int and type(window.n_passes) is int and type(window.n_passes_train[0]) is int
  model = ModelConfig(**{**MODEL, "vocab_size": np.int64(VOCAB), "d_model": np.uint8(16)})
  assert model == ModelConfig(**MODEL) and type(model.vocab_size) is int and hash(model) == hash(ModelConfig(**MODEL))
  for dtype, name in [(jnp.bfloat16, "bfloat16"), (jnp.float32, "float32"), (np.float32, "float32"),
                      (np.dtype("float32"), "float32"), (jnp.dtype("bfloat16"), "bfloat16"), ("bfloat16", "bfloat16")]:
    cfg = ModelConfig(**MODEL, dtype=dtype)
    assert cfg.dtype == name and cfg == ModelConfig(**MODEL, dtype=name), dtype


def config_fields_property(cls, base, overrides):
  """``cls(**base, **overrides)`` constructs with every integer field a Python int, or refuses naming a field."""
  try:
    cfg = cls(**{**base, **overrides})
  except ValueError as err:
    assert "\n" not in str(err) and names(str(err), *overrides), (overrides, str(err))
    event("refused")
    return
  event("constructed")
  hash(cfg)
  for f in dataclasses.fields(cfg):
    value, default = getattr(cfg, f.name), getattr(cls(**base), f.name)
    if isinstance(default, bool):
      assert type(value) is bool, (f.name, value)
    elif isinstance(default, int):
      assert type(value) is int, (f.name, value)
  # The same config spelled with Python scalars is equal.
  plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in overrides.items()}
  assert cfg == cls(**{**base, **plain})


def scalar_overrides(cls, base):
  """Draws values for up to three of ``cls``'s int / float / bool fields (``test_fuzz.field_values``)."""
  defaults = {f.name: getattr(cls(**base), f.name) for f in dataclasses.fields(cls)}
  fields = sorted(k for k, v in defaults.items() if isinstance(v, (int, float)))
  return st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True).flatmap(
      lambda chosen: st.fixed_dictionaries({k: field_values(k, defaults[k]) for k in chosen}))


@given(data=st.data())
def test_config_scalar_fields_construct_as_meant_or_name_the_field(data):
  for cls, base in ((ModelConfig, MODEL), (SleepConfig, SLEEP)):
    config_fields_property(cls, base, data.draw(scalar_overrides(cls, base), label=cls.__name__))


@pytest.mark.slow
@settings(SLOW)
@given(data=st.data())
def test_config_scalar_fields_construct_as_meant_or_name_the_field_slow(data):
  for cls, base in ((ModelConfig, MODEL), (SleepConfig, SLEEP)):
    config_fields_property(cls, base, data.draw(scalar_overrides(cls, base), label=cls.__name__))


def test_adaptive_sleep_needs_a_cap_that_leaves_a_sleep_pass():
  # Before: accepted with max_n_passes == 1, so nothing ever slept (the docstring promised one sleep pass).
  for kwargs, msg in [(dict(halt_tol=0.1), r"halt_tol=0\.1 \(adaptive sleep\) is capped at n_passes=1"),
                      (dict(halt_tol=0.1, n_passes=0), "capped at n_passes=0"),
                      (dict(halt_tol=0.1, n_passes_train=(0, 1)), r"n_passes_train=\(0, 1\)"),
                      (dict(halt_tol=0.1, max_passes=1), r"max_passes=1 leaves adaptive sleep")]:
    with pytest.raises(ValueError, match=msg) as err:
      SleepConfig(window=24, **kwargs)
    assert one_line(err).endswith("set max_passes >= 2")
  assert SleepConfig(window=24, halt_tol=0.1, max_passes=2).n_sleep_passes == 1
  assert SleepConfig(window=24, halt_tol=0.1, n_passes=2).n_sleep_passes == 1
  # A drawn cap may be 1: that step runs fixed N (adaptive sleep has no pass to halt).
  drawn = SleepConfig(window=24, halt_tol=0.1, n_passes_train=(1, 3))
  assert drawn.with_n_passes(1) == SleepConfig(window=24, n_passes=1)
  assert drawn.with_n_passes(3) == SleepConfig(window=24, n_passes=3, halt_tol=0.1)


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


# -- sleep_consolidate's blocks_fn --------------------------------------------------------------------
def _sleep(blocks_fn, **kw):
  import sleep_jax
  return sleep_jax.sleep_consolidate(blocks_fn, jnp.ones((2, 3, 4)), {"S": jnp.zeros((2, 4, 4))}, 2, **kw)


@pytest.mark.parametrize("blocks_fn, match", [
    (lambda h, fw: (jnp.concatenate([h, h], -1), fw),
     r"changed the shapes/dtypes of h: it got \(root\): \(2, 3, 4\) float32 and returned \(root\): \(2, 3, 8\)"),
    (lambda h, fw: (h, {"S": fw["S"][:, :2]}),
     r"of fast_weights: it got \['S'\]: \(2, 4, 4\) float32 and returned \['S'\]: \(2, 2, 4\) float32"),
    (lambda h, fw: (h, {"S": fw["S"].astype(jnp.bfloat16)}), r"of fast_weights: .* returned \['S'\]: \(2, 4, 4\) bfloat16"),
    (lambda h, fw: (h, {"S": fw["S"], "extra": fw["S"]}), "changed the structure of fast_weights"),
    (lambda h, fw: h, r"must return a pair \(h, fast_weights\)"),
])
@pytest.mark.parametrize("halt_tol", [None, 0.1])
def test_a_blocks_fn_that_changes_a_shape_is_named_before_the_scan(blocks_fn, match, halt_tol):
  # Before: JAX's scan error about "carry component c[0]" (or c[1]['S']), a TypeError over several lines.
  with pytest.raises(ValueError, match=match) as err:
    _sleep(blocks_fn, halt_tol=halt_tol)
  one_line(err)


def test_a_blocks_fn_is_checked_under_jit_and_only_when_a_pass_runs():
  grow = lambda h, fw: (jnp.concatenate([h, h], -1), fw)
  with pytest.raises(ValueError, match="changed the shapes/dtypes of h"):
    jax.jit(lambda h: _sleep(lambda hh, fw: grow(hh + h.sum(), fw)))(jnp.float32(1))
  import sleep_jax
  fw = {"S": jnp.zeros((2, 4, 4))}
  assert sleep_jax.sleep_consolidate(grow, jnp.ones((2, 3, 4)), fw, 0).fast_weights is fw  # no pass: nothing traced
