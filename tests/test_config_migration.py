"""launch.experiment.migrate_legacy_config: every rule for older config.json spellings, one test each."""
import pytest

from launch import experiment
from launch.configs import rule110_small

RULES = sorted(experiment.LEGACY_UNSET.items())


def _current():
  return rule110_small.get_config().to_dict()


def _with(cfg, section, key, value):
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
  out[section][key] = value
  return out


@pytest.mark.parametrize("field,sentinel", RULES, ids=[f"{s}.{k}" for (s, k), _ in RULES])
def test_a_legacy_unset_sentinel_reads_as_unset(field, sentinel):
  section, key = field
  old = _with(_current(), section, key, list(sentinel) if isinstance(sentinel, tuple) else sentinel)
  migrated = experiment.migrate_legacy_config(old)
  assert migrated[section][key] is None
  assert old[section][key] is not None  # the input is not changed
  # The whole resolution agrees with a config that leaves the field unset today.
  assert experiment.experiment_from_config(old) == experiment.experiment_from_config(
      _with(_current(), section, key, None))


@pytest.mark.parametrize("field,value", [(("train", "num_devices"), 2), (("sleep", "grad_passes"), 1),
                                         (("optimizer", "clip_norm"), 0.5), (("sleep", "n_passes_train"), (1, 4)),
                                         (("model", "layout"), "attn,gdn,attn,gdn")])
def test_a_set_value_is_kept(field, value):
  section, key = field
  assert experiment.migrate_legacy_config(_with(_current(), section, key, value))[section][key] == value


def test_halt_tol_zero_without_a_cap_was_adaptive_sleep_off():
  off = _with(_with(_current(), "sleep", "halt_tol", 0.0), "sleep", "max_passes", 0)
  assert experiment.migrate_legacy_config(off)["sleep"]["halt_tol"] is None
  assert experiment.experiment_from_config(off).sleep.halt_tol is None
  # With a cap of its own, halt_tol = 0 is today's "never halt early, run the cap": kept.
  capped = _with(_with(_current(), "sleep", "halt_tol", 0.0), "sleep", "max_passes", 6)
  assert experiment.migrate_legacy_config(capped)["sleep"]["halt_tol"] == 0.0


def test_profile_steps_text_becomes_a_pair():
  cfg = experiment.migrate_legacy_config(_with(_current(), "train", "profile_steps", "3,5"))
  assert cfg["train"]["profile_steps"] == (3, 5)
  assert experiment.experiment_from_config(_with(_current(), "train", "profile_steps", "3,5")).train.profile_steps \
      == (3, 5)


def test_a_current_config_is_unchanged():
  cfg = _current()
  assert experiment.migrate_legacy_config(cfg) == cfg
