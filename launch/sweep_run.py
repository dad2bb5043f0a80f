r"""Trains one sweep point from its resolved config: ``python -m launch.sweep_run --workdir=<run dir>``.

``launch.sweep`` writes the run's fully resolved config (the config file, the
sweep's ``--config.*`` overrides and the variant's changes) to
``<run dir>/sweep_config.json`` and starts this module once per run, so a
run trains exactly what the sweep resolved and nothing is re-parsed from
strings. Training is ``launch.experiment.run``, as for ``launch.train``:
re-running in the same directory resumes from its latest checkpoint.

The wall time of every process (start-up, compile, steps, evaluation) is
added to ``<run dir>/sweep_timing.json``, also when the process is stopped by
SIGTERM or Ctrl-C, and so is its time to the first train step (imports,
restore and compile: the part a warm compilation cache shortens).
"""
from __future__ import annotations

import time

_START = time.perf_counter()  # before the heavy imports: the run's wall time counts them

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from launch import cli  # noqa: E402  (defines --compilation_cache_dir)
from launch.sweep_results import CONFIG_FILE, add_wall_time  # noqa: E402

_WORKDIR = cli.define_path("workdir", None, "The run directory holding sweep_config.json.")


def _stop(signum, frame):
  del frame
  raise SystemExit(128 + signum)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  path = os.path.join(_WORKDIR.value, CONFIG_FILE)
  if not os.path.exists(path):
    print(f"error: {path} does not exist; launch.sweep writes it", file=sys.stderr)
    return 1
  from launch import experiment
  from sleep_jax.train import checkpoint as ckpt_lib
  from sleep_jax.train import metrics as metrics_lib

  cli.setup()
  signal.signal(signal.SIGTERM, _stop)  # so the finally below records the time of a stopped run
  finished, first_step = False, []
  try:
    with open(path) as f:
      cfg = json.load(f)
    result = experiment.run(cfg, _WORKDIR.value, on_first_step=lambda: first_step.append(time.perf_counter() - _START))
    finished = True
    last = result.last_train
    print(f"step {result.step}: loss {last.get('loss', float('nan')):.4f}, accuracy "
          f"{result.eval.get('accuracy', float('nan')):.4f}", flush=True)
  except (ValueError, metrics_lib.NonFiniteError, ckpt_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    add_wall_time(_WORKDIR.value, time.perf_counter() - _START, finished=finished,
                  startup_s=first_step[0] if first_step else None)
  return 0


if __name__ == "__main__":
  cli.run(main)
