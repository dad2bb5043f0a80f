r"""Draws PNG figures from run directories or a sweep table.

  # accuracy (or loss) vs training tokens, one line per run (Fig. 2b shape)
  python -m launch.plot --runs=/tmp/sweep/n1,/tmp/sweep/n2 --metric=accuracy --output=/tmp/acc.png
  # accuracy vs depth per N, and vs N per depth, from launch/sweep.py's table (Fig. 3 shape)
  python -m launch.plot --table=/tmp/sweep/sweep.csv --output=/tmp/sweep_depth.png
"""
from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags

from launch import cli

_RUNS = cli.define_path_list("runs", [], "Run workdirs (each with metrics.jsonl).")
_LABELS = flags.DEFINE_list("labels", [], "Legend labels (default: from each run's config, else its name).")
_METRIC = flags.DEFINE_string("metric", "accuracy", "Metric vs training tokens: accuracy, loss, ...")
_TABLE = cli.define_path("table", None, "A sweep.csv from launch/sweep.py.")
_KIND = flags.DEFINE_enum("kind", "accuracy", ["accuracy", "loss"], "Per-depth value for --table.")
_OUTPUT = cli.define_path("output", None, "PNG path.")
_LOG_X = flags.DEFINE_bool("log_x", False, "Logarithmic token axis.")


def run_label(workdir: str) -> str:
  """``N=<n>`` (or "transformer") from a run's config.json, else the directory name."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      cfg = json.load(f)
    if cfg.get("plain_transformer"):
      return "transformer"
    return f"N={cfg.get('sleep', {}).get('n_passes', '?')}"
  return os.path.basename(os.path.normpath(workdir))


def read_table(path: str) -> list[dict]:
  """Rows of a sweep CSV with numbers parsed."""
  rows = []
  with open(path) as f:
    for r in csv.DictReader(f):
      row = {}
      for k, v in r.items():
        try:
          row[k] = int(v)
        except ValueError:
          try:
            row[k] = float(v)
          except ValueError:
            row[k] = v
      rows.append(row)
  return rows


def table_results(rows: list[dict], kind: str) -> dict[str, dict[str, float]]:
  """``{"N=<n>": {"<kind>/depth=<d>": value}}`` from sweep rows (numeric depths only)."""
  out: dict[str, dict[str, float]] = {}
  for r in rows:
    if isinstance(r.get("depth"), int) and isinstance(r.get(kind), float | int):
      label = f"N={r['n_passes']}" + (f", train {r['train_depth']}" if r.get("train_depth") not in ("", None)
                                      else "")
      out.setdefault(label, {})[f"{kind}/depth={r['depth']}"] = float(r[kind])
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _OUTPUT.value:
    raise app.UsageError("--output is required")
  if bool(_RUNS.value) == bool(_TABLE.value):
    raise app.UsageError("give exactly one of --runs or --table")
  from sleep_jax.train import metrics as metrics_lib
  from launch import plotting

  try:
    if _RUNS.value:
      labels = _LABELS.value or [run_label(r) for r in _RUNS.value]
      if len(labels) != len(_RUNS.value):
        raise ValueError(f"--labels has {len(labels)} entries for {len(_RUNS.value)} runs")
      runs = {}
      for label, workdir in zip(labels, _RUNS.value):
        path = os.path.join(workdir, "metrics.jsonl")
        if not os.path.exists(path):
          raise ValueError(f"{workdir!r} has no metrics.jsonl")
        runs[label] = metrics_lib.read_jsonl(path)
      fig = plotting.plot_training_curves(runs, _METRIC.value, log_x=_LOG_X.value)
      plotting.save(fig, _OUTPUT.value)
    else:
      rows = read_table(_TABLE.value)
      fig = plotting.plot_vs_depth(table_results(rows, _KIND.value), _KIND.value)
      plotting.save(fig, _OUTPUT.value)
      root, ext = os.path.splitext(_OUTPUT.value)
      plotting.save(plotting.plot_vs_passes(rows, _KIND.value), f"{root}_vs_n{ext or '.png'}")
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
