r"""Depo: a checkpoint's accuracy per hop count ``k``, split by the order in which the path's edges are listed.

A ``k``-hop query from ``x`` walks the edges ``e_1 = (x -> c_1), e_2 = (c_1 -> c_2), ..., e_k``. The edges are
listed in random order, so for ``k >= 2`` the path is listed

- ``"path order"``: ``e_1`` before ``e_2`` before ... (each hop after the one it extends),
- ``"reverse order"``: ``e_k`` before ... before ``e_1`` (each hop before the one it extends),
- ``"mixed"``: anything else (``k >= 3``).

Why it matters. One pass of the gated delta rule is not one lookup: each write multiplies what was written
before by ``(I - beta k k^T)``, so an earlier write's effective key picks up a component of a later write's key
when the two keys overlap. If a later write's key mixes two nodes (its convolution sees ``x -> y``), an earlier
write stored under ``y`` (the edge ``y -> z``) becomes partly readable under ``x``: a two-hop link written in
one pass, but only when ``y -> z`` is listed before ``x -> y``. A model that composes hops this way is accurate
in one listing order and at the one-lookup level in the other; a model that composes across sleep passes does
not care about the order.

    python -m launch.depo_probe --workdir=workdirs/depo_demo/n1_s0 [--n_passes=1,4] [--eval_batches=16]

Prints, per ``N``, accuracy and count in each (``k``, order) cell beside the run's majority and chance
baselines, and writes ``<workdir>/depo_order.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys

import numpy as np
from launch import cli

ORDERS = ("path order", "reverse order", "mixed")
# Codes in the evaluator's depth slot: 10 * k + order index (k = 1: order 0).
_CODE = 10


def path_order(example_meta: dict, source: int, k: int) -> int:
  """The index in :data:`ORDERS` of the listing of the ``k``-hop path from ``source`` (``0`` for ``k = 1``).

  Args:
    example_meta: a Depo example's ``meta`` (``n``, ``cycle``, ``edge_order``).
    source: the query's source (a pool index).
    k: the hop count.
  """
  n = int(example_meta["n"])
  start = [int(c) for c in example_meta["cycle"]].index(int(source))
  # edge_order lists cycle indices i (the edge cycle[i] -> cycle[i + 1]) in listing order.
  listed_at = {int(i): p for p, i in enumerate(example_meta["edge_order"])}
  positions = [listed_at[(start + h) % n] for h in range(k)]
  if all(a < b for a, b in zip(positions, positions[1:])):
    return 0
  if all(a > b for a, b in zip(positions, positions[1:])):
    return 1
  return 2


def coded_batches(batches, task_config, seed: int):
  """The eval batches with each answer's depth replaced by its (k, order) code; checks the examples match."""
  from tasks import depo
  from tasks import example as ex_lib
  index = 0
  for batch in batches:
    batch = dict(batch)
    depth = np.array(batch["depth"], copy=True)
    for row in range(depth.shape[0]):
      ex = depo.make_example(task_config, seed, index, "eval")
      if not np.array_equal(ex["tokens"], np.asarray(batch["tokens"][row])):
        raise ValueError(f"eval example {index} is not the split's example {index}: the probe needs the eval "
                         "split in index order")
      # The scored answers only: edge targets (``edge_targets``) are trained on and keep their depth -1.
      pos = np.nonzero(ex_lib.scored_mask(ex["loss_mask"], ex["depth"]))[0]
      if len(pos) != len(ex["meta"]["queries"]):
        raise ValueError(f"eval example {index} has {len(pos)} scored answers and {len(ex['meta']['queries'])} "
                         "queries")
      for p, (s, k, _) in zip(pos, ex["meta"]["queries"]):
        depth[row, p] = _CODE * k + path_order(ex["meta"], s, k)
      index += 1
    batch["depth"] = depth
    yield batch


def _coded_eval_data(eval_data, task_config, seed: int):
  return coded_batches(eval_data(), task_config, seed)


def probe(workdir: str, n_passes=None, eval_batches=None) -> dict:
  """Accuracy per (k, listing order) of a Depo run's checkpoint at each sleep-pass count.

  Returns:
    ``{N: {"cells": {"k=<k> <order>": {"accuracy", "count", "k", "majority"}}, "chance": float}}``; ``k = 1``
    has the one cell ``"k=1 all"``.
  """
  from launch import experiment
  from sleep_jax.train import loop

  cfg = experiment.load_run_config(workdir)
  base = experiment.experiment_from_config(cfg)
  if base.task.name != "depo":
    raise ValueError(f"{workdir} is a {base.task.name!r} run; the probe reads Depo's edge order")
  seed = base.train.seed if base.train.eval_seed is None else base.train.eval_seed
  results = {}
  for n in n_passes or [base.sleep.n_passes]:
    exp = experiment.experiment_from_config(experiment.apply_overrides(cfg.to_dict(), [f"sleep.n_passes={int(n)}"]))
    spec = experiment.build_run_spec(exp)
    spec = dataclasses.replace(spec, eval_data=functools.partial(_coded_eval_data, spec.eval_data,
                                                                 exp.task_config, seed))
    _, result = loop.evaluate_checkpoint(spec, exp.train, workdir, max_batches=eval_batches)
    cells = {}
    for key, value in result.items():
      if key.startswith("accuracy/depth="):
        code = int(key.split("=")[1])
        k, order = divmod(code, _CODE)
        cells[f"k={k} {ORDERS[order] if k > 1 else 'all'}"] = {
            "accuracy": float(value), "count": int(result.get(f"count/depth={code}", 0)), "k": k,
            "majority": float(result.get(f"majority/depth={code}", float("nan")))}
    results[int(n)] = {"cells": dict(sorted(cells.items(), key=lambda kv: (kv[1]["k"], kv[0]))),
                       "chance": float(result.get("chance", float("nan")))}
  return results


def report(results: dict) -> str:
  lines = [f"{'N':>3} {'cell':<24} {'count':>6} {'accuracy':>9} {'majority':>9} {'chance':>7}"]
  for n, r in results.items():
    for name, c in r["cells"].items():
      lines.append(f"{n:>3} {name:<24} {c['count']:>6} {c['accuracy']:>9.3f} {c['majority']:>9.3f} "
                   f"{r['chance']:>7.3f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m launch.depo_probe", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, type=cli.user_path, help="a Depo run directory")
  p.add_argument("--n_passes", default="", help="comma-separated sleep-pass counts (default: the run's)")
  p.add_argument("--eval_batches", type=int, default=0, help="eval batches (0: the whole eval split)")
  args = p.parse_args(argv)
  workdir = args.workdir
  try:
    n_passes = [int(n) for n in args.n_passes.split(",") if n.strip()] or None
  except ValueError:
    p.error(f"--n_passes must be comma-separated integers, got {args.n_passes!r}")
  if n_passes and min(n_passes) < 0:
    p.error(f"--n_passes entries must be >= 0, got {n_passes}")
  results = probe(workdir, n_passes, args.eval_batches or None)
  print(report(results))
  path = os.path.join(workdir, "depo_order.json")
  with open(path, "w") as f:
    json.dump({str(n): r for n, r in results.items()}, f, indent=1)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
