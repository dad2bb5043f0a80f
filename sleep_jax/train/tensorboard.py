"""TensorBoard event files for a run: scalars, text and hyperparameters.

The trainer writes every ``metrics.jsonl`` record here too, so a run directory
opens in ``tensorboard --logdir workdirs/`` beside its JSONL. Train records
keep their keys as tags (``loss``, ``grad_norm``, ``lr/adamw``,
``train/accuracy/depth_3``); eval records go under ``eval/`` (``eval/accuracy``,
``eval/loss/depth_3``) with a per-depth text table; the run's configuration is
written once as hparams and as a text table. Tags keep only the characters of
TensorBoard summary names (letters, digits, ``_-/.``), so ``depth=3`` becomes
``depth_3`` (:func:`tag`).

The writer is tensorboardX: pure Python on top of numpy and protobuf (both
already dependencies), no TensorFlow. Only the writing process (process 0 in a
multi-host run) opens a file; elsewhere every method does nothing.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Iterable, Mapping

import numpy as np

# Tags the hparams dashboard shows as metric columns (values come from the
# scalars of the same run).
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "loss")

_DEPTH_KEY = re.compile(r"(.+)/depth=(-?\d+)$")
_NOT_IN_TAGS = re.compile(r"[^-/\w.]")
# Record fields that are bookkeeping, not metrics.
_NOT_SCALARS = ("kind", "step", "tokens")


def tag(key: str, prefix: str = "") -> str:
  """The TensorBoard tag of a metrics key.

  Args:
    key: a ``metrics.jsonl`` key, e.g. ``accuracy/depth=3``.
    prefix: prepended unless ``key`` already starts with it.

  Returns:
    The tag, e.g. ``eval/accuracy/depth_3`` for prefix ``eval/``: characters
    outside TensorBoard summary names become ``_`` (tensorboardX would do the
    same, with a log line per call).
  """
  if prefix and not key.startswith(prefix):
    key = prefix + key
  return _NOT_IN_TAGS.sub("_", key)


def flatten_config(tree: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
  """Flattens nested dicts and dataclasses into ``{"a.b.c": value}``.

  Leaves that are not a bool, number or string (tuples, lists, ``None``) are
  written as their ``repr``-like string, the form the hparams dashboard can
  compare across runs.

  Args:
    tree: a dict, a dataclass instance, or a leaf.
    prefix: key prefix of ``tree`` itself.

  Returns:
    A flat, ordered dict of hparam values.
  """
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
  if isinstance(tree, Mapping):
    out: dict[str, Any] = {}
    for k in sorted(tree, key=str):
      out.update(flatten_config(tree[k], f"{prefix}.{k}" if prefix else str(k)))
    return out
  if isinstance(tree, (bool, str)):
    return {prefix: tree}
  if isinstance(tree, numbers.Real):
    return {prefix: tree.item() if isinstance(tree, np.generic) else tree}
  if isinstance(tree, (list, tuple)):
    return {prefix: ",".join(str(v) for v in tree)}
  return {prefix: str(tree)}


def depth_table_markdown(result: Mapping[str, float]) -> str | None:
  """A markdown table of the per-depth entries ``<metric>/depth=<d>`` of a result.

  Columns are ``accuracy`` and ``loss`` first, then any other per-depth metric
  the evaluator reports (counts, baselines), in name order.

  Args:
    result: an evaluator result.

  Returns:
    The table (one row per depth, then ``all`` with the overall values), or
    ``None`` when the result has no per-depth entries.
  """
  found = [(m.group(1), int(m.group(2))) for k in result for m in [_DEPTH_KEY.match(k)] if m]
  if not found:
    return None
  depths = sorted({d for _, d in found})
  names = sorted({n for n, _ in found}, key=lambda n: ({"accuracy": 0, "loss": 1}.get(n, 2), n))
  fmt = lambda v: "" if v is None else "nan" if not math.isfinite(v) else f"{v:.4f}"
  lines = ["| depth | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
  for d in depths:
    lines.append(f"| {d} | " + " | ".join(fmt(result.get(f"{n}/depth={d}")) for n in names) + " |")
  lines.append("| all | " + " | ".join(fmt(result.get(n)) for n in names) + " |")
  return "\n".join(lines)


def _scalar(value: Any) -> float | None:
  if isinstance(value, (bool, np.bool_, str)):
    return None
  a = np.asarray(value)
  if a.ndim != 0 or not np.issubdtype(a.dtype, np.number):
    return None
  return float(a)


class TensorBoardWriter:
  """Scalars, text and hparams into the event files of one directory.

  Attributes:
    logdir: the event-file directory.
    enabled: whether this process writes (``False``: every method is a no-op).
  """

  def __init__(self, logdir: str, *, enabled: bool | None = None, flush_secs: int = 30):
    """Opens a writer.

    Args:
      logdir: directory of the event files (created if missing).
      enabled: write from this process; ``None`` means
        ``jax.process_index() == 0``.
      flush_secs: seconds between background flushes.
    """
    if enabled is None:
      import jax
      enabled = jax.process_index() == 0
    self.logdir = logdir
    self.enabled = bool(enabled)
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(logdir=logdir, flush_secs=flush_secs)

  def scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
    """Writes each numeric scalar of ``values`` (bools, strings and arrays are skipped).

    Args:
      step: the global step.
      values: ``tag -> value``.
      prefix: prepended to every tag that does not already start with it.
    """
    if self._writer is None:
      return
    for k, v in values.items():
      x = _scalar(v)
      if x is None:
        continue
      self._writer.add_scalar(tag(k, prefix), x, global_step=int(step))

  def text(self, name: str, text: str, step: int = 0) -> None:
    """Writes a markdown text summary (TensorBoard shows it under ``<name>/text_summary``)."""
    if self._writer is None:
      return
    self._writer.add_text(tag(name), text, global_step=int(step))

  def hparams(self, hparams: Mapping[str, Any], metrics: Iterable[str] = HPARAM_METRICS) -> None:
    """Writes the run's hyperparameters for the hparams dashboard.

    Args:
      hparams: a nested config (flattened with :func:`flatten_config`).
      metrics: scalar tags shown as metric columns beside the hparams.
    """
    if self._writer is None:
      return
    from tensorboardX.summary import hparams as hparams_summary
    flat = flatten_config(hparams)
    # Only the experiment and session-start summaries: the session-end one
    # would mark a run that is still training as finished.
    experiment, session_start, _ = hparams_summary(flat, {m: 0.0 for m in metrics})
    # Into this run's own file: tensorboardX's add_hparams would open a separate sub-run.
    self._writer.file_writer.add_summary(experiment)
    self._writer.file_writer.add_summary(session_start)
    rows = "\n".join(f"| {k} | {v} |" for k, v in flat.items())
    self.text("config", "| field | value |\n|---|---|\n" + rows)

  def write(self, record: Mapping[str, Any]) -> None:
    """Writes one ``metrics.jsonl`` record (the same call as ``JsonlWriter.write``).

    ``train`` records become scalars under their own keys, ``eval`` records
    scalars under ``eval/`` plus the depth table, ``stop`` records text.
    """
    if self._writer is None:
      return
    kind, step = record.get("kind"), int(record.get("step", 0))
    values = {k: v for k, v in record.items() if k not in _NOT_SCALARS}
    if kind == "eval":
      self.scalars(step, values, prefix="eval/")
      table = depth_table_markdown(values)
      if table is not None:
        self.text("eval/depth_table", table, step)
      self.flush()
    elif kind == "stop":
      self.text("stop", str(record.get("reason", "")), step)
      self.flush()
    else:
      self.scalars(step, values)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file (idempotent)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class FanOut:
  """Forwards ``write(record)`` (and ``close()``) to several record writers."""

  def __init__(self, *writers):
    self.writers = writers

  def write(self, record: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write(record)

  def close(self) -> None:
    for w in self.writers:
      close = getattr(w, "close", None)
      if close is not None:
        close()


def run_writer(workdir: str, train_config: Any, meta: Mapping[str, Any], *, enabled: bool) -> TensorBoardWriter:
  """The trainer's writer for ``workdir``, with the run's configuration already written.

  Args:
    workdir: the run directory (the event files go beside ``metrics.jsonl``).
    train_config: the ``TrainConfig``.
    meta: the run's JSON description (``RunSpec.meta``); a ``config`` entry
      there (the launch config) is the full configuration, otherwise the
      trainer config stands for it.
    enabled: whether this process writes.

  Returns:
    An open :class:`TensorBoardWriter`.
  """
  writer = TensorBoardWriter(workdir, enabled=enabled)
  hparams = dict(meta)
  if "config" not in hparams:
    hparams["train"] = train_config
  writer.hparams(hparams)
  return writer
