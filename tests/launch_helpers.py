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


# XLA's CPU backend at optimization level 0 (no LLVM optimization of the generated code). The end-to-end CLI and
# notebook tests run a few steps of small models, so compiling is nearly all their cost, and this flag cuts the
# compile time by about 40%. The programs are the same; only the generated machine code is less optimized, so a
# test that compares two runs or two processes compares code built the same way. Tests of numerics against
# references run in process, without it.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def fast_compile_env(env: dict[str, str], keep_xla_flags: bool = True) -> dict[str, str]:
  """``env`` with :data:`FAST_COMPILE_XLA_FLAGS` added to its ``XLA_FLAGS`` (dropping the old ones if not kept)."""
  old = env.get("XLA_FLAGS", "") if keep_xla_flags else ""
  return dict(env, XLA_FLAGS=" ".join(f for f in (old, FAST_COMPILE_XLA_FLAGS) if f))
