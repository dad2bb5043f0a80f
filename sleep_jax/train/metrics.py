"""Run metrics: JSONL records, non-finite detection, sleep cost, evaluation.

One JSON object per line in ``<workdir>/metrics.jsonl``, each with ``step``,
``tokens`` (training tokens seen, all positions) and a ``kind`` ("train",
"eval" or "stop"). Plots and sweeps read these files back.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Callable, Iterable

import numpy as np


class NonFiniteError(RuntimeError):
  """The loss or the gradients became NaN or inf.

  Attributes:
    step: the 0-based step whose loss or gradients were not finite.
    quantity: "loss" or "gradients".
  """

  def __init__(self, step: int, quantity: str, last_checkpoint: int | None):
    self.step = step
    self.quantity = quantity
    self.last_checkpoint = last_checkpoint
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint is not None
            else "no checkpoint was written")
    super().__init__(f"non-finite {quantity} at step {step}; training stopped and {kept}")


def check_finite(step: int, metrics: dict, last_checkpoint: int | None) -> None:
  """Raises :class:`NonFiniteError` naming the step and the quantity."""
  if not bool(metrics.get("loss_finite", True)):
    raise NonFiniteError(step, "loss", last_checkpoint)
  if not bool(metrics.get("grads_finite", True)):
    raise NonFiniteError(step, "gradients", last_checkpoint)


def to_python(metrics: dict) -> dict[str, Any]:
  """Scalars to plain Python numbers (per-example arrays are dropped)."""
  out = {}
  for k, v in metrics.items():
    a = np.asarray(v)
    if a.ndim == 0:
      out[k] = a.item()
  return out


class JsonlWriter:
  """Appends JSON records to a file (only on the writing process)."""

  def __init__(self, path: str, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    if enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")


def read_jsonl(path: str, kind: str | None = None) -> list[dict]:
  """Reads the records of a metrics file, optionally of one ``kind``."""
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rec = json.loads(line)
        if kind is None or rec.get("kind") == kind:
          out.append(rec)
  return out


def evaluate(eval_fn: Callable[[dict], dict], batches: Iterable[dict], evaluator, *,
             max_batches: int | None = None) -> dict[str, float]:
  """Runs ``eval_fn`` over batches and feeds the task evaluator.

  Args:
    eval_fn: ``batch -> {"predictions", "token_loss", ...}`` (numpy, this
      process's rows).
    batches: numpy batches with ``targets``, ``loss_mask``, ``depth``,
      ``answer_id``.
    evaluator: the task's ``Evaluator`` (``update`` / ``result``).
    max_batches: stop after this many (``None``: all).

  Returns:
    ``evaluator.result()`` plus ``eval/batches``, and when ``eval_fn`` reports
    per-example compute (``sleep_passes``, ``sleep_windows``, ``wake_flops``,
    ``sleep_flops``, each ``[B]``, as the trainer's eval step does) the sleep
    actually run: ``sleep/passes`` (mean passes per window that slept, wake
    pass included: the paper's ``N``, averaged over examples under adaptive
    sleep), ``sleep/passes/depth=<d>`` (the same over the examples whose
    deepest scored position has depth ``d``) and ``sleep/relative_cost``
    (wake plus sleep FLOPs over wake FLOPs).
  """
  n = 0
  cost = _SleepCost()
  for batch in batches:
    if max_batches is not None and n >= max_batches:
      break
    out = eval_fn(batch)
    evaluator.update(batch, np.asarray(out["predictions"]), np.asarray(out["token_loss"]))
    cost.update(batch, out)
    n += 1
  result = {k: float(v) for k, v in evaluator.result().items()}
  result["eval/batches"] = float(n)
  result.update(cost.result())
  return result


class _SleepCost:
  """Sums the eval step's per-example compute, overall and per example depth."""

  def __init__(self):
    self.passes = collections.defaultdict(float)  # depth (None: all) -> passes summed over slept windows
    self.windows = collections.defaultdict(float)
    self.wake = self.sleep = 0.0

  def update(self, batch, out) -> None:
    if "sleep_passes" not in out:
      return
    passes = np.asarray(out["sleep_passes"], np.float64).reshape(-1)
    windows = np.asarray(out["sleep_windows"], np.float64).reshape(-1)
    self.wake += float(np.sum(out["wake_flops"]))
    self.sleep += float(np.sum(out["sleep_flops"]))
    self.passes[None] += float(passes.sum())
    self.windows[None] += float(windows.sum())
    if "depth" in batch and "loss_mask" in batch:
      mask = np.asarray(batch["loss_mask"]) > 0
      depth = np.where(mask, np.asarray(batch["depth"]), -1).max(axis=1)
      for d in np.unique(depth[depth >= 0]):
        sel = depth == d
        self.passes[int(d)] += float(passes[sel].sum())
        self.windows[int(d)] += float(windows[sel].sum())

  def result(self) -> dict[str, float]:
    if not self.windows[None]:
      return {}  # nothing slept (a plain transformer, N = 0 windows only, or no cost reported)
    out = {"sleep/passes": self.passes[None] / self.windows[None]}
    out.update({f"sleep/passes/depth={d}": self.passes[d] / self.windows[d]
                for d in sorted(k for k in self.windows if k is not None) if self.windows[d]})
    if self.wake:
      out["sleep/relative_cost"] = 1.0 + self.sleep / self.wake
    return out
