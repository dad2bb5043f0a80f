r"""Runs one config for several sleep-pass counts N (and training depths); one table and figures.

  python -m launch.sweep --config=launch/configs/rule110_small.py --workdir=/tmp/sweep \
      --n_passes=1,2,4 [--train_depths=4,8] [--config.train.num_steps=500]

Each run trains in ``<workdir>/n<N>[_d<depth>]`` (re-running resumes or skips
finished runs). Afterwards ``<workdir>/sweep.csv`` and ``sweep.md`` hold one
row per (N, training depth, eval depth) and ``fig2b_accuracy_vs_tokens.png``
/ ``fig3_accuracy_vs_depth.png`` / ``fig3_loss_vs_depth.png`` /
``fig3_accuracy_vs_depth_vs_n.png`` draw them in the shapes of the paper's
Fig. 2b and Fig. 3. Runs go one after another in this process.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a launch/configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root directory.")
_N_PASSES = flags.DEFINE_list("n_passes", ["1", "2", "4"], "Sleep pass counts N.")
_TRAIN_DEPTHS = flags.DEFINE_list("train_depths", [], "Training depths (empty: the config's depth range).")
_DEPTH_FIELDS = flags.DEFINE_list("depth_fields", [],
                                  "task_config fields set to each training depth (default per task).")
_BASELINE = flags.DEFINE_bool("plain_transformer", False, "Also train the all-attention baseline.")

# task_config fields that pin the depth knob of each task to one value.
DEPTH_FIELDS = {"rule110": ("t_min", "t_max"), "gsm_math": ("op_min", "op_max"), "depo": ("k_max",)}
COLUMNS = ("run", "n_passes", "train_depth", "depth", "accuracy", "loss", "tokens", "steps")


def sweep_points(n_passes, train_depths, baseline: bool):
  """``[(run_name, n, depth_or_None, plain)]`` of a sweep."""
  depths = list(train_depths) or [None]
  points = []
  for d in depths:
    suffix = "" if d is None else f"_d{d}"
    if baseline:
      points.append((f"transformer{suffix}", 1, d, True))
    for n in n_passes:
      points.append((f"n{n}{suffix}", int(n), d, False))
  return points


def result_rows(run: str, n: int, train_depth, result: dict, tokens: int, steps: int) -> list[dict]:
  """Table rows of one run's final evaluation: one per eval depth, plus "all"."""
  from sleep_jax.train.plotting import depth_values
  acc, loss = depth_values(result, "accuracy"), depth_values(result, "loss")
  base = {"run": run, "n_passes": n, "train_depth": "" if train_depth is None else train_depth,
          "tokens": tokens, "steps": steps}
  rows = [{**base, "depth": d, "accuracy": acc.get(d, float("nan")), "loss": loss.get(d, float("nan"))}
          for d in sorted(set(acc) | set(loss))]
  rows.append({**base, "depth": "all", "accuracy": result.get("accuracy", float("nan")),
               "loss": result.get("loss", float("nan"))})
  return rows


def write_table(rows: list[dict], root: str) -> tuple[str, str]:
  """Writes ``sweep.csv`` and ``sweep.md``; returns their paths."""
  csv_path, md_path = os.path.join(root, "sweep.csv"), os.path.join(root, "sweep.md")
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in COLUMNS})
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  with open(md_path, "w") as f:
    f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
    for r in rows:
      f.write("| " + " | ".join(fmt(r.get(k, "")) for k in COLUMNS) + " |\n")
  return csv_path, md_path


def draw(root: str, curves: dict, results: dict, rows: list[dict], depth_name: str) -> list[str]:
  """The sweep's figures (Fig. 2b and Fig. 3 shapes)."""
  from sleep_jax.train import plotting
  paths = []
  for name, make in (
      ("fig2b_accuracy_vs_tokens.png", lambda: plotting.plot_training_curves(curves, "accuracy")),
      ("fig2b_loss_vs_tokens.png", lambda: plotting.plot_training_curves(curves, "loss")),
      ("fig3_accuracy_vs_depth.png", lambda: plotting.plot_vs_depth(results, "accuracy", depth_name=depth_name)),
      ("fig3_loss_vs_depth.png", lambda: plotting.plot_vs_depth(results, "loss", depth_name=depth_name)),
      ("fig3_accuracy_vs_depth_vs_n.png", lambda: plotting.plot_vs_passes(
          [r for r in rows if not str(r["run"]).startswith("transformer")], "accuracy"))):
    try:
      paths.append(plotting.save(make(), os.path.join(root, name)))
    except ValueError as e:
      logging.warning("skipped %s: %s", name, e)
  return paths


def run_sweep(cfg, root: str, n_passes, train_depths=(), depth_fields=(), baseline=False) -> list[dict]:
  """Trains every point of the sweep (resuming finished ones) and writes the table and figures."""
  from launch import experiment
  from sleep_jax.train import metrics as metrics_lib

  for n in n_passes:
    if int(n) < 0:
      raise ValueError(f"--n_passes entries must be >= 0, got {n}")
  task = str(cfg.task)
  fields = tuple(depth_fields) or DEPTH_FIELDS.get(task, ())
  if train_depths and not fields:
    raise ValueError(f"no depth fields known for task {task!r}; pass --depth_fields")
  os.makedirs(root, exist_ok=True)
  rows, curves, results = [], {}, {}
  for name, n, depth, plain in sweep_points(n_passes, train_depths, baseline):
    c = copy.deepcopy(cfg)
    with c.unlocked():
      c.sleep.n_passes = n
      c.plain_transformer = plain
      for field in fields if depth is not None else ():
        if field not in c.task_config:
          raise ValueError(f"--depth_fields: task_config has no field {field!r}")
        setattr(c.task_config, field, int(depth))
    workdir = os.path.join(root, name)
    print(f"== {name}: N={n}" + ("" if depth is None else f", depth {depth}") + (" (plain transformer)"
                                                                               if plain else ""), flush=True)
    result = experiment.run(c, workdir)
    label = ("transformer" if plain else f"N={n}") + ("" if depth is None else f", d={depth}")
    curves[label] = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    results[label] = result.eval
    tokens = max((r.get("tokens", 0) for r in curves[label]), default=0)
    rows.extend(result_rows(name, n, depth, result.eval, tokens, result.step))
  csv_path, md_path = write_table(rows, root)
  import tasks
  figs = draw(root, curves, results, rows, tasks.get_task(task).depth_name)
  print(open(md_path).read())
  print("wrote", csv_path, md_path, *figs, sep="\n  ")
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  from sleep_jax.train import checkpoint as ckpt_lib
  from sleep_jax.train import metrics as metrics_lib

  for name in ("absl", "jax"):  # keep the console to progress and results
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    run_sweep(_CONFIG.value, _WORKDIR.value, _N_PASSES.value, _TRAIN_DEPTHS.value, _DEPTH_FIELDS.value,
              _BASELINE.value)
  except (ValueError, metrics_lib.NonFiniteError, ckpt_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
