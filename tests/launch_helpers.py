"""Helpers shared by the launch tests."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags


def parse_config_file(config_file: str, *args: str):
  """The config ``launch.train`` builds from ``--config=<file> <args>`` (absl + ml_collections, in process)."""
  argv = ["prog", f"--config={config_file}", *args]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return holder.value
