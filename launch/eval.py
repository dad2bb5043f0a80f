r"""Evaluates a run's checkpoint on its task's eval split; prints and writes per-depth accuracy.

  python -m launch.eval --workdir=/tmp/sleep_rule110
  python -m launch.eval --workdir=/tmp/sleep_rule110 --override=sleep.n_passes=4 \
      --override=task_config.t_min=8 --override=task_config.t_max=8 --output=/tmp/n4_t8.json

The run's ``config.json`` (written by ``launch/train.py``) rebuilds the model;
``--override key.path=value`` changes any field (sleep passes, task depth, ...)
for the evaluation only. The result goes to ``--output`` (default
``<workdir>/eval_step<k>.json``).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (with config.json and checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that restores).")
_BATCHES = flags.DEFINE_integer("eval_batches", 0, "Eval batches (0: the whole eval split).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "key.path=value changes to the run's config.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output path.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Fake this many CPU devices.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  if _CPU_DEVICES.value:
    import jax
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  from launch import experiment as launch_train
  from sleep_jax.train import checkpoint as ckpt_lib

  for name in ("absl", "jax"):  # keep the console to progress and results
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    step, result = launch_train.evaluate_run(_WORKDIR.value, overrides=_OVERRIDE.value, step=_STEP.value,
                                eval_batches=_BATCHES.value or None)
  except (ValueError, ckpt_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = _OUTPUT.value or os.path.join(_WORKDIR.value, f"eval_step{step}.json")
  record = {"step": step, "overrides": list(_OVERRIDE.value), **result}
  with open(out, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(f"checkpoint step {step}, {int(result.get('eval/batches', 0))} eval batches:")
  print(launch_train.depth_table(result))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
