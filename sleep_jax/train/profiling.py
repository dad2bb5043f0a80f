"""A ``jax.profiler`` trace of a range of training steps.

``TrainConfig.profile_steps = (start, stop)`` traces the steps with 0-based
index ``start <= s < stop`` into ``<workdir>/profile`` (TensorBoard's profile
plugin reads it: ``tensorboard --logdir <workdir>/profile``). Each traced step
is a ``StepTraceAnnotation``, so the trace viewer and the step-time view split
it per step. Only the writing process (process 0) traces.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"


class StepProfiler:
  """Starts a trace before step ``start`` and stops it once step ``stop - 1`` has run.

  A resumed run whose first step falls inside the range traces from there; one
  past the range traces nothing.

  Attributes:
    logdir: where the trace goes.
    steps: ``(start, stop)``, or ``None`` (never trace).
    active: a trace is running.
  """

  def __init__(self, logdir: str, steps: tuple[int, int] | None, *, enabled: bool = True):
    self.logdir = logdir
    self.steps = tuple(steps) if steps and enabled else None
    self.active = False
    self._done = False

  @classmethod
  def for_run(cls, workdir: str, steps: tuple[int, int] | None, *, enabled: bool) -> "StepProfiler":
    """The profiler of a run: traces into ``<workdir>/profile``."""
    return cls(os.path.join(workdir, PROFILE_DIR), steps, enabled=enabled)

  def run(self, step: int, fn: Callable[..., Any], *args) -> Any:
    """Calls ``fn(*args)`` as training step ``step``, tracing it if in range.

    Args:
      step: the 0-based step index.
      fn: the step function.
      *args: its arguments.

    Returns:
      ``fn(*args)``.
    """
    if self.steps is None or self._done:
      return fn(*args)
    start, stop = self.steps
    if not self.active and start <= step < stop:
      os.makedirs(self.logdir, exist_ok=True)
      jax.profiler.start_trace(self.logdir)
      self.active = True
      log.info("profiling steps %d..%d into %s", step, stop - 1, self.logdir)
    if not self.active:
      return fn(*args)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      out = fn(*args)
    if step + 1 >= stop:
      # Dispatch is asynchronous: wait for the last traced step to finish on
      # the device, or the trace would end before its kernels ran.
      jax.block_until_ready(out)
      self.close()
    return out

  def close(self) -> None:
    """Stops a running trace (idempotent; an interrupted run keeps what it traced)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self._done = True
