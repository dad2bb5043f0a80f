"""What the launch entry points share: JAX's persistent compilation cache and a quiet console.

``launch.train``, ``launch.eval`` and ``launch.sweep`` import this module
(which defines the ``--compilation_cache_dir`` flag) and call
:func:`setup_compilation_cache` at the start of ``main``, before anything is
compiled. A second launch of the same model then loads its executables from
the cache instead of compiling them again (resumes, evaluations, sweeps,
repeated tests).
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

ENV_VAR = "SLEEP_JAX_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "sleep_jax", "jax")
# Below this compile time an executable is cheaper to rebuild than to read back.
MIN_COMPILE_TIME_SECS = 0.5

COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    f"JAX persistent compilation cache directory (default: ${ENV_VAR}, else {DEFAULT_DIR}); '' turns it off.")


def default_compilation_cache_dir() -> str:
  """``$SLEEP_JAX_COMPILATION_CACHE`` if set (possibly empty: off), else ``~/.cache/sleep_jax/jax``."""
  return os.environ.get(ENV_VAR, DEFAULT_DIR)


def setup_compilation_cache(path: str | None = None, *, min_compile_time_secs: float = MIN_COMPILE_TIME_SECS,
                            min_entry_size_bytes: int = 0) -> str | None:
  """Turns on JAX's persistent compilation cache in ``path`` (call before the first compile).

  Args:
    path: the cache directory; ``None`` takes ``--compilation_cache_dir`` when
      given on the command line, else :func:`default_compilation_cache_dir`.
      An empty string turns the cache off.
    min_compile_time_secs: executables that compiled faster are not stored.
    min_entry_size_bytes: executables smaller than this are not stored (0:
      JAX's default).

  Returns:
    The absolute cache directory, or ``None`` when the cache is off.
  """
  import jax

  if path is None:
    given = flags.FLAGS.is_parsed() and COMPILATION_CACHE_DIR.present
    path = COMPILATION_CACHE_DIR.value if given else default_compilation_cache_dir()
  if not path:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
  return path


def quiet_logging() -> None:
  """Keeps the console to progress and results (absl, jax and tensorboardX log warnings and errors only)."""
  for name in ("absl", "jax", "tensorboardX"):
    logging.getLogger(name).setLevel(logging.WARNING)


def parse_flags(argv: list[str], define=None) -> list[str]:
  """absl's flag parsing (``app.run(..., flags_parser=cli.parse_flags)``), one line for an unknown config field.

  ``ml_collections`` raises ``AttributeError`` / ``KeyError`` (a traceback)
  for ``--config.a.b=v`` naming no field; this prints which override it was
  and exits with status 1, as absl does for its own flag errors.

  Args:
    argv: the command line.
    define: called first, for flags defined from the command line itself
      (``config_flags.DEFINE_config_dict`` applies the overrides on definition).
  """
  try:
    if define is not None:
      define()
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    name = str(e).strip("\"'")
    bad = [a.split("=", 1)[0] for a in argv if a.startswith("--config.") and name in a.split("=", 1)[0].split(".")]
    print(f"error: {', '.join(bad) or 'a --config override'}: the config has no field {name!r}", file=sys.stderr)
    sys.exit(1)
