"""Figures of runs and sweeps (matplotlib, Agg backend; PNG files), for the launch tools.

The library (``sleep_jax``) draws nothing: figures are the experiment tools'
concern (``launch.plot``, ``launch.eval``, ``launch.sweep --report``).

Shapes follow the paper: Fig. 2b plots accuracy against training tokens, one
line per number of sleep passes ``N``; Fig. 3 plots accuracy (or loss)
against depth, one line per ``N``. Sweeps over seeds draw every seed as a
point or a thin line and the mean over seeds as the line
(:func:`plot_depth_by_variant`, :func:`plot_seed_curves`). The inputs are
plain records (dicts read from ``metrics.jsonl`` or a sweep table), so the
functions are testable without training.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

DEPTH_KEY = re.compile(r"^(accuracy|loss)/depth=(-?\d+)$")


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, *, log_x: bool = False, legend=None):
  """Labels, grid, legend and title shared by every figure here; returns ``fig``."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if log_x:
    ax.set_xscale("log")
  ax.grid(alpha=0.3)
  ax.legend(**(legend or {}))
  ax.set_title(title)
  fig.tight_layout()
  return fig


def curve(records: Sequence[dict], metric: str) -> tuple[list[float], list[float]]:
  """``(tokens, values)`` of one metric from a run's records, skipping records without it.

  For metric "accuracy" the eval records are used when there are at least
  two, else the training records' ``train/accuracy``.
  """
  evals = [r for r in records if r.get("kind") == "eval" and metric in r]
  if len(evals) >= 2:
    chosen, key = evals, metric
  else:
    key = metric if any(metric in r for r in records if r.get("kind") == "train") else f"train/{metric}"
    chosen = [r for r in records if r.get("kind") == "train" and key in r]
  xs = [float(r["tokens"]) for r in chosen]
  ys = [float(r[key]) for r in chosen]
  return xs, ys


def plot_training_curves(runs: Mapping[str, Sequence[dict]], metric: str = "accuracy", *,
                         title: str | None = None, log_x: bool = False):
  """Fig. 2b: ``metric`` against training tokens, one line per run.

  Args:
    runs: label (e.g. "N=2") -> records of that run's ``metrics.jsonl``.
    metric: "accuracy", "loss", or any recorded key.
    title: figure title.
    log_x: logarithmic token axis.

  Returns:
    The matplotlib figure.

  Raises:
    ValueError: if no run has the metric.
  """
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  drawn = 0
  for label, records in runs.items():
    xs, ys = curve(records, metric)
    if xs:
      ax.plot(xs, ys, marker="o", markersize=3, label=label)
      drawn += 1
  if not drawn:
    plt.close(fig)
    raise ValueError(f"no run has metric {metric!r}")
  return _finish(fig, ax, "training tokens", metric, title or f"{metric} vs training tokens", log_x=log_x)


def depth_values(result: Mapping[str, float], kind: str = "accuracy") -> dict[int, float]:
  """``{depth: value}`` from an evaluator result's ``<kind>/depth=<d>`` keys."""
  out = {}
  for k, v in result.items():
    m = DEPTH_KEY.match(k)
    if m and m.group(1) == kind and not (isinstance(v, float) and math.isnan(v)):
      out[int(m.group(2))] = float(v)
  return dict(sorted(out.items()))


def plot_vs_depth(results: Mapping[str, Mapping[str, float]], kind: str = "accuracy", *,
                  depth_name: str = "depth", title: str | None = None):
  """Fig. 3: accuracy (or loss) against depth, one line per label (e.g. per ``N``).

  Args:
    results: label -> evaluator result with ``<kind>/depth=<d>`` keys.
    kind: "accuracy" or "loss".
    depth_name: axis label (the task's depth knob, e.g. "t", "k", "ops").
    title: figure title.

  Raises:
    ValueError: if no result has per-depth values.
  """
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  drawn = 0
  for label, result in results.items():
    values = depth_values(result, kind)
    if values:
      ax.plot(list(values), list(values.values()), marker="o", label=label)
      drawn += 1
  if not drawn:
    plt.close(fig)
    raise ValueError(f"no result has {kind}/depth=<d> values")
  return _finish(fig, ax, depth_name, kind, title or f"{kind} vs {depth_name}")


def plot_vs_passes(rows: Iterable[Mapping], value: str = "accuracy", *, title: str | None = None):
  """Accuracy against ``N``, one line per depth, from sweep-table rows.

  Args:
    rows: dicts with ``n_passes``, ``depth`` (int or "all") and ``value``.
    value: the column to plot.
    title: figure title.
  """
  series: dict[str, dict[int, float]] = {}
  for r in rows:
    v = r.get(value)
    if v is None or (isinstance(v, float) and math.isnan(v)):
      continue
    series.setdefault(str(r["depth"]), {})[int(r["n_passes"])] = float(v)
  if not series:
    raise ValueError(f"no rows with {value!r}")
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label in sorted(series, key=lambda s: (s == "all", int(s) if s.lstrip("-").isdigit() else 0)):
    pts = dict(sorted(series[label].items()))
    ax.plot(list(pts), list(pts.values()), marker="o", linestyle="--" if label == "all" else "-",
            label="all depths" if label == "all" else f"depth {label}")
  ax.set_xticks(sorted({n for pts in series.values() for n in pts}))
  return _finish(fig, ax, "sleep passes N", value, title or f"{value} vs N", legend=dict(fontsize=8))


def plot_halting(fixed: Mapping[int, Mapping[str, float]], adaptive: Mapping[float, Mapping[str, float]], *,
                 depth_name: str = "depth", title: str | None = None):
  """Accuracy against the sleep actually run: fixed ``N`` beside adaptive sleep, one colour per depth.

  Fixed-``N`` evaluations are solid lines through ``(N, accuracy)``; adaptive
  ones dashed lines through ``(mean passes, accuracy)``, one point per
  ``halt_tol``, the passes being those of that depth's examples
  (``sleep/passes/depth=<d>``, from ``metrics.evaluate``). A point of the
  adaptive line above the fixed line buys the same accuracy with fewer passes.

  Args:
    fixed: ``{N: evaluation result}`` (may be empty).
    adaptive: ``{halt_tol: evaluation result}`` with ``sleep/passes`` keys.
    depth_name: the task's depth knob, for the legend.
    title: figure title.

  Raises:
    ValueError: nothing to draw.
  """
  def points(results, x_of):
    series: dict[str, list[tuple[float, float]]] = {}
    for key, r in results.items():
      for label, suffix in [(str(d), f"/depth={d}") for d in depth_values(r)] + [("all", "")]:
        x, y = x_of(key, r, suffix), r.get("accuracy" + suffix)
        if _finite(x) and _finite(y):
          series.setdefault(label, []).append((float(x), float(y)))
    return {k: sorted(v) for k, v in series.items()}

  solid = points(fixed, lambda n, r, suffix: float(n))
  dashed = points(adaptive, lambda tol, r, suffix: r.get("sleep/passes" + suffix))
  labels = sorted(set(solid) | set(dashed), key=lambda s: (s == "all", int(s) if s.lstrip("-").isdigit() else 0))
  if not labels:
    raise ValueError("no evaluation results with accuracy (and, for adaptive ones, sleep/passes) to draw")
  fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, label in enumerate(labels):
    color = "black" if label == "all" else colors[i % len(colors)]
    name = "all" if label == "all" else f"{depth_name}={label}"
    if label in solid:
      xs, ys = zip(*solid[label])
      ax.plot(xs, ys, marker="o", color=color, label=f"{name}, fixed N")
    if label in dashed:
      xs, ys = zip(*dashed[label])
      ax.plot(xs, ys, marker="x", linestyle="--", color=color, label=f"{name}, adaptive")
  return _finish(fig, ax, "sleep passes run per window (mean, wake pass included)", "accuracy",
                 title or "accuracy vs sleep passes: fixed N and adaptive", legend=dict(fontsize=7, ncol=2))


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def seed_mean(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
  """``(xs, ys)``: the mean ``y`` at each distinct ``x`` (sorted), over the finite points."""
  groups: dict[float, list[float]] = {}
  for x, y in points:
    if _finite(x) and _finite(y):
      groups.setdefault(float(x), []).append(float(y))
  xs = sorted(groups)
  return xs, [sum(groups[x]) / len(groups[x]) for x in xs]


def plot_depth_by_variant(rows: Iterable[Mapping], value: str = "accuracy", *, depth_name: str = "depth",
                          baseline: str | None = "majority", title: str | None = None):
  """Accuracy against depth over seeds: per variant the mean (line) and every seed (points).

  Args:
    rows: sweep-table rows, dicts with ``variant``, ``seed``, ``depth`` (rows
      whose depth is not an int, e.g. "all", are skipped) and ``value``; with
      ``baseline``, the baseline's column too.
    value: the column to plot.
    depth_name: axis label (the task's depth knob).
    baseline: a column drawn as a dashed line (its mean per depth over all
      rows), e.g. "majority"; ``None`` or a column no row has draws none.
    title: figure title.

  Returns:
    The matplotlib figure.

  Raises:
    ValueError: if no row has a finite ``value`` at an integer depth.
  """
  per_variant: dict[str, list[tuple[int, float]]] = {}
  base: list[tuple[int, float]] = []
  for r in rows:
    d = r.get("depth")
    if not isinstance(d, int) or isinstance(d, bool):
      continue
    if _finite(r.get(value)):
      per_variant.setdefault(str(r["variant"]), []).append((d, float(r[value])))
    if baseline and _finite(r.get(baseline)):
      base.append((d, float(r[baseline])))
  if not per_variant:
    raise ValueError(f"no row has a finite {value!r} at an integer depth")
  fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  n = len(per_variant)
  for i, (variant, pts) in enumerate(per_variant.items()):
    color = colors[i % len(colors)]
    # A small per-variant shift keeps the seeds of different variants apart.
    shift = (i - (n - 1) / 2) * min(0.08, 0.4 / n)
    ax.scatter([d + shift for d, _ in pts], [y for _, y in pts], s=12, alpha=0.5, color=color)
    xs, ys = seed_mean(pts)
    ax.plot(xs, ys, marker="o", markersize=4, color=color, label=variant)
  if base:
    xs, ys = seed_mean(base)
    ax.plot(xs, ys, linestyle="--", color="black", alpha=0.7, label=baseline)
  depths = sorted({d for pts in per_variant.values() for d, _ in pts})
  if len(depths) <= 24:  # integer depth ticks while they stay legible
    ax.set_xticks(depths)
  return _finish(fig, ax, depth_name, value, title or f"{value} vs {depth_name} (line: mean over seeds; points: seeds)",
                 legend=dict(fontsize=8))


def plot_seed_curves(curves: Mapping[str, Mapping[object, Sequence[tuple[float, float]]]], *,
                     xlabel: str, ylabel: str = "accuracy", baseline: float | None = None,
                     baseline_label: str = "majority", log_x: bool = False, title: str | None = None):
  """One metric against a training axis (tokens, FLOPs) over seeds.

  Args:
    curves: variant -> seed -> ``[(x, y)]`` points of that run.
    xlabel: the x axis label.
    ylabel: the y axis label.
    baseline: a constant drawn as a dashed line (e.g. the majority accuracy).
    baseline_label: its legend label.
    log_x: logarithmic x axis.
    title: figure title.

  Returns:
    The matplotlib figure: per variant every seed as a thin line and the mean
    over seeds (at each x any seed has) as a thick one.

  Raises:
    ValueError: if no run has a finite point.
  """
  fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  drawn = 0
  for i, (variant, seeds) in enumerate(curves.items()):
    color = colors[i % len(colors)]
    pooled = []
    for pts in seeds.values():
      pts = sorted((float(x), float(y)) for x, y in pts if _finite(x) and _finite(y))
      if pts:
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", linewidth=0.8, alpha=0.35, color=color)
        pooled += pts
    if pooled:
      xs, ys = seed_mean(pooled)
      ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.8, color=color, label=variant)
      drawn += 1
  if not drawn:
    plt.close(fig)
    raise ValueError("no run has a finite point")
  if baseline is not None and _finite(baseline):
    ax.axhline(baseline, linestyle="--", color="black", alpha=0.7, label=baseline_label)
  return _finish(fig, ax, xlabel, ylabel, title or f"{ylabel} vs {xlabel}", log_x=log_x, legend=dict(fontsize=8))


def save(fig, path: str) -> str:
  """Writes a figure as PNG and closes it; returns the path."""
  fig.savefig(path, format="png")
  plt.close(fig)
  return path
