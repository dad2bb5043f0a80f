"""Text tables of evaluation results for the launch CLIs.

An evaluation result (``eval.json``, ``launch.eval``'s output) is a flat dict:
``accuracy/depth=<d>``, ``loss/depth=<d>`` and, where the evaluator provides
them, the example count ``count/depth=<d>`` and the baselines
``majority/depth=<d>`` (always answering the most common answer) and
``chance/depth=<d>`` (a uniform guess), plus their all-depth values
(``accuracy``, ``loss``, ``majority``, ``chance``). A missing value prints as
``-``, so results written before a key existed still print.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

_DEPTH_KEY = re.compile(r"(accuracy|loss|count|majority|chance)/depth=(-?\d+)$")
MISSING = "-"


def depths(result: Mapping[str, float]) -> list[int]:
  """The depths that have any per-depth value in ``result``, sorted."""
  return sorted({int(m.group(2)) for k in result for m in [_DEPTH_KEY.match(k)] if m})


def _number(value) -> float | None:
  if value is None:
    return None
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(value) else value


def standard_error(accuracy, count) -> float | None:
  """``sqrt(p (1 - p) / n)``, the binomial standard error of an accuracy ``p`` over ``n`` examples.

  Returns ``None`` when either is missing or ``n < 1``.
  """
  p, n = _number(accuracy), _number(count)
  if p is None or n is None or n < 1:
    return None
  return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def _fmt(value, spec: str = ".4f") -> str:
  value = _number(value)
  return MISSING if value is None else format(value, spec)


def _total_count(result: Mapping[str, float]) -> float | None:
  if _number(result.get("count")) is not None:
    return _number(result["count"])
  counts = [_number(result.get(f"count/depth={d}")) for d in depths(result)]
  return sum(counts) if counts and all(c is not None for c in counts) else None


def depth_table(result: Mapping[str, float], depth_name: str = "depth") -> str:
  """Per depth: count, accuracy, its standard error, the majority and chance baselines, loss.

  Args:
    result: an evaluation result (see the module docstring).
    depth_name: the first column's heading (the task's depth knob, e.g. "t").

  Returns:
    The table, one row per depth and a final "all" row.
  """
  with_passes = _number(result.get("sleep/passes")) is not None
  header = (f"{depth_name:>6} {'count':>7} {'accuracy':>9} {'± s.e.':>7} {'majority':>9} {'chance':>7} "
            f"{'loss':>8}" + (f" {'passes':>7}" if with_passes else ""))
  rows = [header]

  def row(label, count, acc, majority, chance, loss, passes):
    se = standard_error(acc, count)
    rows.append(f"{label:>6} {_fmt(count, '.0f'):>7} {_fmt(acc):>9} {_fmt(se):>7} {_fmt(majority):>9} "
                f"{_fmt(chance):>7} {_fmt(loss):>8}" + (f" {_fmt(passes, '.2f'):>7}" if with_passes else ""))

  for d in depths(result):
    row(str(d), *(result.get(f"{k}/depth={d}") for k in ("count", "accuracy", "majority", "chance", "loss",
                                                         "sleep/passes")))
  row("all", _total_count(result), *(result.get(k) for k in ("accuracy", "majority", "chance", "loss",
                                                             "sleep/passes")))
  return "\n".join(rows)


def passes_table(results: Mapping[int, Mapping[str, float]], depth_name: str = "depth") -> str:
  """Accuracy per depth (rows) for several sleep-pass counts ``N`` (columns), with the baselines.

  Count, majority and chance come from the first result that has them (they
  depend on the data, not on ``N``).

  Args:
    results: ``{N: evaluation result}`` of one checkpoint.
    depth_name: the first column's heading.

  Returns:
    The table, one row per depth and a final "all" row.
  """
  ns = list(results)
  return _setting_rows(results, depth_name, [f"N={n}" for n in ns], ("chance",),
                       lambda r, suffix: f"{_fmt(r.get('accuracy' + suffix)):>7}", width=7)


def depth_answered(result: Mapping[str, float]) -> int | None:
  """The deepest depth ``d`` such that every evaluated depth up to ``d`` is answered.

  A depth is answered when its accuracy is at least halfway from its majority
  baseline to 1: ``accuracy >= (1 + majority) / 2``. Applied to one checkpoint
  evaluated with its fast weights after 1, 2, ... passes (``launch.eval
  --n_passes``), this reads how many hops the fast weights hold after each pass.

  Args:
    result: one evaluation result (``accuracy/depth=<d>`` and
      ``majority/depth=<d>`` entries).

  Returns:
    That depth, or ``None`` when the shallowest depth is not answered (or the
    result has no per-depth entries).
  """
  depths = sorted(int(k.split("=", 1)[1]) for k in result if k.startswith("accuracy/depth="))
  answered = None
  for d in depths:
    acc, maj = result[f"accuracy/depth={d}"], result.get(f"majority/depth={d}", 0.0)
    if not acc >= (1.0 + maj) / 2:
      break
    answered = d
  return answered


def halting_table(results: Mapping[str, Mapping[str, float]], depth_name: str = "depth") -> str:
  """Accuracy and mean sleep passes per depth (rows) for several sleep settings (columns).

  Each column is one evaluation of the same checkpoint, labelled (e.g.
  ``N=4`` for a fixed ``N``, ``tol=0.05`` for adaptive sleep); a cell is
  ``accuracy/passes``, the passes being the mean per window that slept, wake
  pass included (the paper's ``N``; the examples of one depth averaged). Count,
  majority and chance come from the first result that has them.

  Args:
    results: ``{label: evaluation result}``.
    depth_name: the first column's heading.

  Returns:
    The table, one row per depth and a final "all" row.
  """
  width = max([13] + [len(str(k)) for k in results])
  return _setting_rows(results, depth_name, [str(k) for k in results], (), lambda r, suffix: format(
      f"{_fmt(r.get('accuracy' + suffix))}/{_fmt(r.get('sleep/passes' + suffix), '.2f')}", f">{width}"),
                       width=width, subheading="acc/passes")


def _setting_rows(results: Mapping, depth_name: str, headings: list[str], baselines: tuple[str, ...],
                  cell, *, width: int, subheading: str | None = None) -> str:
  """One row per depth (and "all"), one column per evaluation of the same checkpoint.

  Count, majority and the ``baselines`` come from the first result that has
  them (they depend on the data, not on the sleep setting); ``cell(result,
  suffix)`` formats one evaluation's cell ("" or ``/depth=<d>`` suffix).
  """
  all_depths = sorted({d for r in results.values() for d in depths(r)})

  def first(key):
    for r in results.values():
      if _number(r.get(key)) is not None:
        return r[key]
    return None

  extra = "".join(f" {b:>7}" for b in baselines)
  rows = [f"{depth_name:>6} {'count':>7} {'majority':>9}{extra} " + " ".join(f"{h:>{width}}" for h in headings)]
  if subheading:
    rows.append(f"{'':>6} {'':>7} {'':>9}{' ' * len(extra)} " + " ".join(f"{subheading:>{width}}" for _ in headings))
  for label, suffix in [(str(d), f"/depth={d}") for d in all_depths] + [("all", "")]:
    if suffix:
      count = first(f"count{suffix}")
    else:
      count = next((c for c in map(_total_count, results.values()) if c is not None), None)
    base = "".join(f" {_fmt(first(b + suffix)):>7}" for b in baselines)
    cells = " ".join(cell(r, suffix) for r in results.values())
    rows.append(f"{label:>6} {_fmt(count, '.0f'):>7} {_fmt(first('majority' + suffix)):>9}{base} {cells}")
  return "\n".join(rows)
