r"""What the fast weights do across sleep passes: their change per pass, and whether they reach a fixed point.

For a trained run and the first examples of its eval split, the consolidation windows (every window before
the last one that sleeps) are slept with ``N = 1, 2, ..., M`` passes, and the fast weights after each ``N``
are compared:

* ``change``: ``|S_N - S_{N-1}| / |S_N|`` (Frobenius norm over every GDN state of the model, per example,
  then the mean over examples): how much pass ``N`` rewrites; a fixed point drives it to 0. (The delta rule
  writes nothing where ``v = S k`` already holds, so converged fast weights stop changing by construction.)
* ``to_last``: ``|S_N - S_M| / |S_M|``: how far pass ``N`` is from the last one computed.
* ``norm``: ``|S_N| / |S_1|``: whether the passes grow the fast weights (a change per pass that falls like
  ``1 / N`` with a norm growing like ``N`` is a constant write per pass, not convergence).
* ``accuracy``: the full sequence (eval answers) served at ``N`` passes, per depth, as ``launch.eval``
  would score answer tokens.

Each is also split by the depth of the example's answers, which shows whether harder examples keep changing
longer (they can only where the depth is visible before sleep, e.g. ``Rule110Config.announce_t``).

    python3 -m launch.fixed_point --workdir=<run> [--max_passes=16] [--examples=512]

Prints a table and writes ``<workdir>/fixed_point.json`` and ``.png`` (or ``--output``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from launch import cli


def _examples(exp, n: int) -> dict[str, np.ndarray]:
  seed = exp.train.seed if exp.train.eval_seed is None else exp.train.eval_seed
  exs = [exp.task.make_example(exp.task_config, seed, i, "eval") for i in range(n)]
  return {k: np.stack([e[k] for e in exs]) for k in ("tokens", "targets", "loss_mask", "depth")}


def _state_matrix(fast_weights, batch: int) -> np.ndarray:
  """Every fast-weight leaf of each example, flattened and concatenated: ``[B, size]`` float64."""
  import jax
  leaves = [np.asarray(x, np.float64).reshape(batch, -1) for x in jax.tree.leaves(fast_weights)]
  if not leaves:
    raise ValueError("the model has no fast weights")
  return np.concatenate(leaves, axis=1)


def trajectory(workdir: str, *, max_passes: int = 16, n_examples: int = 512, step: int | None = None) -> dict:
  """The fast weights' change per pass and the accuracy at each ``N`` (see the module docstring).

  Returns:
    ``{"passes": [1..M], "depths": [...], "change": {depth or "all": [M]}, "to_last": {...}, "norm": {...}, "accuracy":
    {...}, "majority": {...}, "count": {...}, "step": int, "sleep_windows": int}``; ``change[..][0]`` is NaN
    (the wake pass has no predecessor).

  Raises:
    ValueError: ``max_passes < 2``, ``n_examples < 1``, a plain-transformer run, or a run whose task has no
      window that sleeps.
  """
  import jax
  from flax import nnx
  from launch import experiment
  from sleep_jax.model import HybridLM
  from sleep_jax.train import checkpoint as ckpt_lib
  from sleep_jax import windowed

  if max_passes < 2:
    raise ValueError(f"max_passes must be >= 2 (pass 1 is the wake pass), got {max_passes}")
  if n_examples < 1:
    raise ValueError(f"examples must be >= 1, got {n_examples}")
  exp = experiment.experiment_from_config(experiment.load_run_config(workdir))
  if exp.plain_transformer:
    raise ValueError(f"{workdir} is the plain transformer: it has no fast weights or sleep passes")
  schedule = experiment.task_schedule(exp)
  if not any(schedule):
    raise ValueError(f"{workdir}: no window of its task sleeps")
  model = HybridLM(exp.model, rngs=nnx.Rngs(0))
  params, loaded = ckpt_lib.load_params(workdir, nnx.split(model, nnx.Param, ...)[1], step=step, return_step=True)
  nnx.update(model, params)
  model.eval()

  data = _examples(exp, n_examples)
  window = exp.sleep.window
  last = max(i for i, s in enumerate(schedule) if s)
  prefix = (last + 1) * window  # every window up to the last one that sleeps
  depth = np.where(data["loss_mask"] > 0, data["depth"], -1).max(axis=1)  # one depth per example
  depths = sorted(int(d) for d in set(depth.tolist()) if d >= 0)
  groups = {"all": np.ones_like(depth, bool), **{d: depth == d for d in depths}}

  states, correct = [], []
  from tasks import example as ex_lib
  mask = ex_lib.scored_mask(data["loss_mask"], data["depth"]) > 0  # auxiliary targets are not scored
  for n in range(1, max_passes + 1):
    sleep = dataclasses.replace(exp.sleep.with_n_passes(n), halt_tol=None)  # fixed N, no training draw
    out = windowed.windowed_forward(model, data["tokens"][:, :prefix], None, sleep,
                                    return_logits="none", sleep_schedule=tuple(schedule[:last + 1]))
    states.append(_state_matrix(out.fast_weights, n_examples))
    full = windowed.windowed_forward(model, data["tokens"], data["loss_mask"], sleep, sleep_schedule=schedule)
    pred = np.asarray(jax.numpy.argmax(full.logits, axis=-1))
    ok = np.where(mask, pred == data["targets"], True).all(axis=1)  # every answer of the example right
    correct.append(ok)

  norm = lambda x: np.linalg.norm(x, axis=1)
  eps = 1e-30
  change = [np.full(n_examples, np.nan)] + [norm(states[i] - states[i - 1]) / (norm(states[i]) + eps)
                                            for i in range(1, max_passes)]
  to_last = [norm(s - states[-1]) / (norm(states[-1]) + eps) for s in states]
  growth = [norm(s) / (norm(states[0]) + eps) for s in states]
  key = lambda g: "all" if g == "all" else str(g)
  first_answer = data["targets"][np.arange(n_examples), np.argmax(mask, axis=1)]
  result = {"passes": list(range(1, max_passes + 1)), "depths": depths, "step": int(loaded),
            "sleep_windows": int(sum(schedule)), "examples": n_examples,
            "change": {}, "to_last": {}, "norm": {}, "accuracy": {}, "count": {}, "majority": {}}
  for g, sel in groups.items():
    result["change"][key(g)] = [float(np.mean(c[sel])) for c in change]
    result["to_last"][key(g)] = [float(np.mean(t[sel])) for t in to_last]
    result["norm"][key(g)] = [float(np.mean(x[sel])) for x in growth]
    result["accuracy"][key(g)] = [float(np.mean(c[sel])) for c in correct]
    result["count"][key(g)] = int(sel.sum())
    # The majority answer of the group (first answer token): the baseline beside every accuracy.
    answers = first_answer[sel]
    result["majority"][key(g)] = float(np.bincount(answers).max() / max(len(answers), 1))
  return result


def report(result: dict) -> str:
  """One line per pass: change, distance to the last pass, accuracy (all, then the deepest depth)."""
  deepest = str(max(result["depths"])) if result["depths"] else "all"
  lines = [f"{'N':>3} {'change':>9} {'to_last':>9} {'norm':>7} {'acc all':>8} {'acc d=' + deepest:>9}   "
           f"change by depth ({', '.join(map(str, result['depths']))})"]
  for i, n in enumerate(result["passes"]):
    by_depth = " ".join(f"{result['change'][str(d)][i]:.3f}" for d in result["depths"])
    lines.append(f"{n:>3} {result['change']['all'][i]:>9.4f} {result['to_last']['all'][i]:>9.4f} "
                 f"{result['norm']['all'][i]:>7.3f} "
                 f"{result['accuracy']['all'][i]:>8.3f} {result['accuracy'][deepest][i]:>9.3f}   {by_depth}")
  lines.append(f"majority: all {result['majority']['all']:.3f}, depth {deepest} {result['majority'][deepest]:.3f}"
               f" ({result['examples']} eval examples, checkpoint step {result['step']})")
  return "\n".join(lines)


def figure(result: dict, title: str = ""):
  """Two panels: the change per pass and the distance to the last pass (log scale), and accuracy per depth."""
  from launch import plotting  # noqa: F401  (the Agg backend)
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
  x = result["passes"]
  cmap = plt.get_cmap("viridis")
  ds = result["depths"]
  for i, d in enumerate(ds):
    colour = cmap(i / max(len(ds) - 1, 1))
    a.plot(x[1:], result["change"][str(d)][1:], "o-", color=colour, ms=3, label=f"change, depth {d}")
    b.plot(x, result["accuracy"][str(d)], "o-", color=colour, ms=3, label=f"depth {d}")
    b.axhline(result["majority"][str(d)], color=colour, ls=":", alpha=0.5)
  a.plot(x, result["to_last"]["all"], "k--", label=f"distance to pass {x[-1]}")
  a.plot(x, result["norm"]["all"], "k:", label="norm / norm after the wake pass")
  a.set_yscale("log")
  a.set_xlabel("passes N (wake pass included)")
  a.set_ylabel("relative change of the fast weights")
  a.grid(alpha=0.3)
  a.legend(fontsize=7)
  b.set_xlabel("passes N served")
  b.set_ylabel("accuracy (dotted: majority per depth)")
  b.set_ylim(0, 1.02)
  b.grid(alpha=0.3)
  b.legend(fontsize=7)
  fig.suptitle(title or f"fast weights across sleep passes (step {result['step']})")
  fig.tight_layout()
  return fig


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.fixed_point", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, type=cli.user_path, help="a launch.train run directory")
  p.add_argument("--max_passes", type=int, default=16, help="the largest N (>= 2)")
  p.add_argument("--examples", type=int, default=512, help="eval examples (the first ones of the split)")
  p.add_argument("--output", default=None, type=cli.user_path, help="JSON path (default <workdir>/fixed_point.json)")
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.workdir, "config.json")):
    p.error(f"--workdir={args.workdir} has no config.json; is it a launch/train.py run directory?")
  try:
    result = trajectory(args.workdir, max_passes=args.max_passes, n_examples=args.examples)
  except ValueError as e:
    p.error(str(e))
  print(report(result))
  out = args.output or os.path.join(args.workdir, "fixed_point.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {out}")
  from launch import plotting
  print(f"wrote {plotting.save(figure(result, os.path.basename(os.path.normpath(args.workdir))), os.path.splitext(out)[0] + '.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
