"""Command line: print decoded examples of a task.

  python -m tasks list
  python -m tasks show rule110 --preset small -n 3 [--split eval] [--seed 0] [--start 0]
  python -m tasks show gsm_math --config launch/configs/gsm_math_small.py -n 2   # what a config file trains on
  python -m tasks bench [--tasks rule110,depo] [--presets paper,small] [--seconds 2] [--workers 0,2]

Each example prints its input text (runs of ``<pad>`` collapsed), the answer
tokens with their positions, depth and answer id, and the structured ground
truth (``meta``).

A task preset is where a config file starts; ``--config`` shows the task as a
launch config file sets it (its ``task_config`` overrides laid over its preset).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import tasks


def _collapse_pads(words: list[str]) -> str:
  out, run = [], 0
  for w in words + [None]:
    if w == "<pad>":
      run += 1
      continue
    if run:
      out.append(f"<pad>x{run}")
      run = 0
    if w is not None:
      out.append(w)
  return " ".join(out)


def _format_meta(meta: dict, limit: int = 400) -> str:
  parts = []
  for k, v in meta.items():
    text = np.array2string(v, max_line_width=10_000) if isinstance(v, np.ndarray) else repr(v)
    if len(text) > limit:
      text = text[:limit] + f"... ({len(text)} chars)"
    parts.append(f"    {k}: {text}")
  return "\n".join(parts)


def config_file_task(path: str, task_name: str):
  """The task config a launch config file (``get_config()``) trains on; raises ValueError if it is another task's."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f"--config {path!r}: no such file")
  spec = importlib.util.spec_from_file_location("_tasks_show_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r} has no get_config(): not a launch config file")
  from launch import experiment  # pylint: disable=g-import-not-at-top  (only this option needs launch)
  exp = experiment.experiment_from_config(module.get_config())
  if exp.task.name != task_name:
    raise ValueError(f"--config {path!r} trains task {exp.task.name!r}, not {task_name!r}")
  return exp.task_config


def show(task_name: str, preset: str, n: int, split: str, seed: int, start: int, config=None,
         source: str | None = None) -> str:
  """Returns the printout of examples ``start .. start + n - 1``.

  ``config`` (a task config, e.g. from :func:`config_file_task`) replaces the
  preset; ``source`` names where it came from in the header.
  """
  task = tasks.get_task(task_name)
  config = task.preset(preset) if config is None else config
  tok = task.tokenizer(config)
  origin = f"preset {preset!r}" if source is None else f"config {source}"
  lines = [f"task {task.name} {origin} split {split!r} seed {seed}: T = {task.seq_len(config)}, "
           f"L = {task.window(config)} ({task.eviction(config)} eviction), vocab {task.vocab_size(config)}, "
           f"depth knob {task.depth_name}", f"  config: {config}"]
  for index in range(start, start + n):
    ex = task.make_example(config, seed, index, split)
    words = tok.decode(ex["tokens"]).split(" ")
    lines.append(f"\n[{index}] {_collapse_pads(words)}")
    for pos in np.nonzero(ex["loss_mask"])[0]:
      what = (f"({task.depth_name}={ex['depth'][pos]}, answer_id={ex['answer_id'][pos]})" if ex["depth"][pos] >= 0
              else "(auxiliary: trained on, not scored)")
      lines.append(f"  target[{pos}] = {tok.decode([ex['targets'][pos]])!r} after {words[pos]!r}  {what}")
    lines.append("  meta:\n" + _format_meta(ex["meta"]))
  return "\n".join(lines)


def _rate(fn, seconds: float) -> float:
  """Calls ``fn`` (which returns an item count) for about ``seconds``; items per second."""
  fn()  # warm-up (imports, first allocation)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += fn()
  return count / (time.perf_counter() - start)


def bench(task_names: list[str], presets: list[str], seconds: float, workers: list[int],
          batch_size: int) -> str:
  """Example-generation throughput, bare and through the grain pipeline.

  For each task preset: examples/s and tokens/s of ``make_example`` in this
  process, then of ``make_dataset`` iteration for each worker count, with the
  ratio to bare generation side by side.
  """
  if any(w > 0 for w in workers):
    from absl import flags  # pylint: disable=g-import-not-at-top
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
  rows = [f"{'task':10s} {'preset':14s} {'T':>5s} {'gen ex/s':>9s} {'gen tok/s':>10s}"
          + "".join(f" {f'pipe w={w} ex/s':>15s} {'ratio':>6s}" for w in workers)]
  for name in task_names:
    task = tasks.get_task(name)
    for preset in presets:
      if preset not in task.presets:
        continue
      config = task.preset(preset)
      counter = iter(range(1 << 62))
      gen = _rate(lambda: task.make_example(config, 0, next(counter)) and 1, seconds)
      row = f"{name:10s} {preset:14s} {task.seq_len(config):5d} {gen:9.1f} {gen * task.seq_len(config):10.0f}"
      for w in workers:
        it = iter(tasks.make_dataset(name, config, "train", seed=0, batch_size=batch_size, worker_count=w))
        pipe = _rate(lambda: next(it)["tokens"].shape[0], seconds)
        row += f" {pipe:15.1f} {pipe / gen:6.2f}"
      rows.append(row)
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="list tasks and their presets")
  p_show = sub.add_parser("show", help="print decoded examples")
  p_show.add_argument("task", choices=tasks.list_tasks())
  p_show.add_argument("--preset", default="small")
  p_show.add_argument("--config", default=None,
                      help="a launch config file (launch/configs/*.py): show the task as it sets it, not --preset")
  p_show.add_argument("-n", type=int, default=3, help="number of examples")
  p_show.add_argument("--split", default="train", choices=("train", "eval"))
  p_show.add_argument("--seed", type=int, default=0)
  p_show.add_argument("--start", type=int, default=0, help="first example index")
  p_bench = sub.add_parser("bench", help="example-generation throughput")
  p_bench.add_argument("--tasks", default=",".join(tasks.list_tasks()))
  p_bench.add_argument("--presets", default="paper,small")
  p_bench.add_argument("--seconds", type=float, default=2.0)
  p_bench.add_argument("--workers", default="0", help="comma-separated grain worker counts")
  p_bench.add_argument("--batch-size", type=int, default=16)
  args = parser.parse_args(argv)
  if args.command == "bench":
    print(bench(args.tasks.split(","), args.presets.split(","), args.seconds,
                [int(w) for w in args.workers.split(",")], args.batch_size))
    return 0
  if args.command == "list":
    for name in tasks.list_tasks():
      print(f"{name}: presets {', '.join(tasks.get_task(name).presets)}")
    return 0
  try:
    config = None if args.config is None else config_file_task(args.config, args.task)
    print(show(args.task, args.preset, args.n, args.split, args.seed, args.start, config=config,
               source=args.config))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
