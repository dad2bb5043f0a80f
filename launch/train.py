r"""Trains a sleep model on one task: ``python -m launch.train --config=... --workdir=...``.

Example (small Rule 110 on CPU, a few minutes on 2 cores)::

  python -m launch.train --config=launch/configs/rule110_small.py --workdir=/tmp/sleep_rule110 \
      --config.sleep.n_passes=2

Re-running the same command resumes from the latest good checkpoint in the
workdir. Multi-host: run the same command on every host with
``--coordinator_address=host0:1234 --num_processes=P --process_id=i`` (or the
``SLEEP_JAX_*`` environment variables; TPU pods and SLURM: ``--distributed_auto``).
JAX's own flags work too (``launch/cli.py``), e.g. ``--jax_num_cpu_devices=4``
to try data parallelism over four fake CPU devices.

The ConfigDict -> frozen-dataclass conversion lives in ``launch/experiment.py``.
Compiled steps are kept in JAX's persistent compilation cache
(``--compilation_cache_dir``, see ``launch/cli.py``), so a resume or a second
run of the same model skips most of the compile; the console reports the time
to the first step.
"""
from __future__ import annotations

import time

_START = time.perf_counter()  # before the heavy imports: "time to first step" counts them

import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import cli, experiment, tables  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a launch/configs/*.py file.",
                                          lock_config=True)
_WORKDIR = cli.define_path("workdir", None, "Run directory: checkpoints, metrics.jsonl, eval.json.")
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: total processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Multi-host: let jax detect the cluster (TPU pods, SLURM).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=launch/configs/rule110_small.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cache_dir = cli.setup()
  from sleep_jax.train import checkpoint as ckpt_lib
  from sleep_jax.train import distributed
  from sleep_jax.train import metrics as metrics_lib

  def first_step():
    import jax
    if jax.process_index() == 0:
      cache = f"compilation cache {cache_dir}" if cache_dir else "no compilation cache"
      print(f"time to first step: {time.perf_counter() - _START:.1f} s ({cache})", flush=True)

  try:
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
    result = experiment.run(_CONFIG.value, _WORKDIR.value, on_first_step=first_step)
  except (ValueError, metrics_lib.NonFiniteError, ckpt_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  import jax
  if jax.process_index() == 0:
    last = result.last_train
    if last:
      print(f"step {result.step}: loss {last.get('loss', float('nan')):.4f}, "
            f"{last.get('tokens_per_s', 0):.0f} tokens/s")
    if result.eval:
      print(f"eval ({int(result.eval.get('eval/batches', 0))} batches) after {result.step} steps:")
      import tasks
      print(tables.depth_table(result.eval, tasks.get_task(str(_CONFIG.value.task)).depth_name))
  return 0


if __name__ == "__main__":
  cli.run(main)
