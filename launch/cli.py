"""What the launch entry points share: one absl preamble.

``launch.train``, ``launch.eval``, ``launch.sweep`` and ``launch.sweep_run``
start with :func:`run` (``if __name__ == "__main__": cli.run(main)``) and call
:func:`setup` first thing in ``main``. Together they give every command:

* JAX's own configuration flags (``jax.config.config_with_absl()``), e.g.
  ``--jax_num_cpu_devices=4`` (fake CPU devices, to try data parallelism on one
  machine) or ``--jax_platforms=cpu``; ``--cpu_devices=N`` is the deprecated
  spelling of ``--jax_num_cpu_devices=N``;
* one ``error:`` line and exit status 1, not a traceback or a usage dump, for a
  ``--config.a.b=v`` override that names no field or has the wrong type
  (:func:`parse_flags`);
* JAX's persistent compilation cache (``--compilation_cache_dir``): a second
  launch of the same model loads its executables from the cache instead of
  compiling them again (resumes, evaluations, sweeps, repeated tests);
* a quiet console (progress and results; absl, jax and tensorboardX log
  warnings and errors only);
* paths resolved once, where they enter (:func:`user_path`,
  :func:`define_path`, :func:`define_path_list`): a relative path is taken
  from the current directory and ``~`` is expanded, so everything below
  (orbax demands absolute paths) sees the same absolute path.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from absl import app, flags

ENV_VAR = "SLEEP_JAX_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "sleep_jax", "jax")
# Below this compile time an executable is cheaper to rebuild than to read back.
MIN_COMPILE_TIME_SECS = 0.5

COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    f"JAX persistent compilation cache directory (default: ${ENV_VAR}, else {DEFAULT_DIR}); '' turns it off.")
CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Deprecated: use --jax_num_cpu_devices.")


def user_path(path: str | None) -> str | None:
  """A path as the user meant it: ``~`` expanded, relative to the current directory, absolute.

  ``None`` and ``""`` (unset) come back as ``None``.
  """
  if path is None or not str(path).strip():
    return None
  return os.path.abspath(os.path.expanduser(str(path).strip()))


class _PathParser(flags.ArgumentParser):
  """absl parser of a path flag: the value is absolute from the moment it is parsed."""

  syntactic_help = "a path (relative paths are taken from the current directory)"

  def parse(self, argument):
    return user_path(argument)

  def flag_type(self):
    return "path"


class _PathListParser(flags.ListParser):
  """absl parser of a comma-separated list of paths, each made absolute."""

  def parse(self, argument):
    return [path for path in map(user_path, super().parse(argument)) if path]


def define_path(name: str, default: str | None, help_text: str, **kwargs) -> flags.FlagHolder:
  """``flags.DEFINE_string`` for a path: its value is absolute (``~`` expanded) once parsed."""
  return flags.DEFINE(_PathParser(), name, default, help_text, serializer=flags.ArgumentSerializer(), **kwargs)


def define_path_list(name: str, default: list[str], help_text: str, **kwargs) -> flags.FlagHolder:
  """``flags.DEFINE_list`` for paths: each entry absolute (``~`` expanded) once parsed."""
  return flags.DEFINE(_PathListParser(), name, default, help_text, serializer=flags.CsvListSerializer(","),
                      **kwargs)


def run(main: Callable[[list[str]], int], *, flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
  """Runs a launch command: ``sys.exit(main(argv))`` under absl, with JAX's flags defined.

  Args:
    main: the command; returns the exit status.
    flags_parser: absl's ``flags_parser`` (default: :func:`parse_flags`).
  """
  import jax

  # Defines an absl flag per JAX option (--jax_num_cpu_devices, --jax_platforms, ...); absl applies the
  # ones given once the command line is parsed, before main runs and before any backend starts.
  jax.config.config_with_absl()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=flags_parser or parse_flags)


def setup(compilation_cache_dir: str | None = None) -> str | None:
  """The start of every command's ``main``, before anything is compiled.

  Applies the deprecated ``--cpu_devices``, turns on the compilation cache
  (:func:`setup_compilation_cache`) and quiets the console
  (:func:`quiet_logging`).

  Args:
    compilation_cache_dir: passed to :func:`setup_compilation_cache`.

  Returns:
    The compilation cache directory, or ``None`` when it is off.
  """
  if flags.FLAGS.is_parsed() and CPU_DEVICES.value:
    import jax
    logging.warning("--cpu_devices is deprecated; use --jax_num_cpu_devices=%d", CPU_DEVICES.value)
    jax.config.update("jax_num_cpu_devices", CPU_DEVICES.value)
  path = setup_compilation_cache(compilation_cache_dir)
  quiet_logging()
  return path


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


def _config_node(flag_values, keys: list[str]):
  """The ConfigDict section ``--config.<keys>`` names (``None`` where it cannot be found)."""
  try:
    node = flag_values["config"].value
    for k in keys:
      node = node[k]
    return node
  except Exception:  # noqa: BLE001  (a best-effort hint; the error line is printed regardless)
    return None


def fail(message: str) -> None:
  """Prints ``error: <message>`` on stderr and exits with status 1 (absl's status for a bad flag)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str], define=None, *, flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing (``app.run(..., flags_parser=cli.parse_flags)``), one line for each bad flag.

  ``ml_collections`` raises ``AttributeError`` / ``KeyError`` (a traceback)
  for ``--config.a.b=v`` naming no field, and absl prints a usage hint over
  two lines for a value of the wrong type. Both become one ``error:`` line
  naming the override (with the field's type, or the closest field names) and
  exit status 1, as absl does for its own flag errors.

  Args:
    argv: the command line.
    define: called first, for flags defined from the command line itself
      (``config_flags.DEFINE_config_dict`` applies the overrides on definition).
    flag_values: the flags to parse into (default: absl's global ``FLAGS``).
  """
  fv = flags.FLAGS if flag_values is None else flag_values
  try:
    if define is not None:
      define()
    return fv(argv)
  except flags.Error as e:
    message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    message = message[len("flag "):] if message.startswith("flag ") else message
    name = message.split("=", 1)[0].split(":", 1)[0]
    if name.startswith("--config."):
      keys = name[len("--config."):].split(".")
      node = _config_node(fv, keys[:-1])
      try:
        kind = node.get_type(keys[-1]).__name__
      except Exception:  # noqa: BLE001
        kind = None
      if kind:
        head, _, why = message.partition(": ")
        message = f"{head}: config.{'.'.join(keys)} takes {kind} values ({why})" if why else message
    fail(message)
  except (AttributeError, KeyError) as e:
    # ml_collections raises AttributeError(KeyError(message)), the message being the quoted name, then
    # (for a near miss) its own suggestion: 'Did you mean "d_model" instead of "d_modle"?'.
    cause = e
    while cause.args and isinstance(cause.args[0], BaseException):
      cause = cause.args[0]
    lines = str(cause.args[0] if cause.args else cause).splitlines() or [""]
    name = lines[0].strip("\"'")
    bad = [a.split("=", 1)[0] for a in argv if a.startswith("--config.") and name in a.split("=", 1)[0].split(".")]
    hint = "".join(f"; {line.strip()[0].lower()}{line.strip()[1:]}" for line in lines[1:] if line.strip())
    fail(f"{', '.join(bad) or 'a --config override'}: the config has no field {name!r}{hint}")
