"""A run's analytic training FLOPs, for the sweep's compute axis and compute matching.

Nothing is counted here: an experiment's model, sleep config, sleep schedule
and sequence length go to ``sleep_jax.cost.sequence_flops``, the project's
one FLOP count (its docstring has the conventions: forward + backward,
``grad_passes``, replay, a drawn ``N``'s expectation, why analytic). This
module only reads those inputs off a ``launch.experiment.Experiment`` and does
the step arithmetic of compute matching.
"""
from __future__ import annotations

import math
from typing import Sequence

from sleep_jax.cost import SequenceFlops, sequence_flops

__all__ = ["SequenceFlops", "experiment_flops", "train_flops", "compute_multiplier", "matched_steps"]


def experiment_flops(exp, schedule: Sequence[bool] | None = None) -> SequenceFlops:
  """``cost.sequence_flops`` of a ``launch.experiment.Experiment``.

  Args:
    exp: the experiment.
    schedule: its sleep schedule (default: ``experiment.task_schedule(exp)``,
      read from the task's first examples as the trainer does).
  """
  if schedule is None:
    from launch import experiment
    schedule = experiment.task_schedule(exp)
  return sequence_flops(exp.model, exp.sleep, schedule, exp.task.seq_len(exp.task_config))


def train_flops(exp, steps: int, schedule: Sequence[bool] | None = None) -> float:
  """Training FLOPs of ``steps`` steps of ``exp`` (``steps * batch_size`` sequences)."""
  return float(steps) * exp.train.batch_size * experiment_flops(exp, schedule).train


def compute_multiplier(cheap: SequenceFlops, dear: SequenceFlops) -> float:
  """How many times more steps ``cheap`` needs to spend the training FLOPs of ``dear``."""
  return dear.train / cheap.train


def matched_steps(steps: int, multiplier: float) -> int:
  """``ceil(steps * multiplier)``, tolerant of float noise in ``multiplier``."""
  return int(math.ceil(steps * multiplier - 1e-9))
