r"""The sleep trade-off: accuracy at the deepest depth against serving and training compute.

Every trained recipe of the Rule 110 demo setting (fixed ``N``, randomised ``N``, the "sleep longer" recipes,
the compute-matched and deep ``N = 1`` controls, the plain transformer) is a set of points, one per way it was
served (``N`` passes, or adaptive sleep at a tolerance), each the mean over the seeds that have it. Three costs
sit on three axes:

* **wake FLOPs per token**: the ordinary forward pass, what every token pays (``N``-independent; a deeper model
  pays more);
* **sleep FLOPs per window**: what consolidating one window costs, ``(p - 1)`` sleep passes plus the coda for
  ``p`` passes (for adaptive sleep ``p`` is the measured mean, and a sleep pass that reads predictions also runs
  the coda and the output projection);
* **training FLOPs** of the whole run (forward + backward, the expectation over a drawn ``N``).

All counts come from ``sleep_jax.cost`` (analytic; see its docstring). Read from committed result directories
only (``results/rule110_demo/runs``, ``results/rule110_sleep_longer``); nothing is evaluated here.

Commands (from the repository root)::

    python3 -m launch.tradeoff                      # print the table, write results/tradeoff.png
    python3 -m launch.tradeoff --output=/tmp/t.png

``launch.report`` renders the same table into RESULTS.md (``<!-- table: tradeoff -->``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence

from launch import sweep_results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RUNS = os.path.join(REPO, "results", "rule110_demo", "runs")
LONGER_RUNS = os.path.join(REPO, "results", "rule110_sleep_longer")
DEFAULT_OUTPUT = os.path.join(REPO, "results", "tradeoff.png")
EXIT_FILE = "eval_exit_{measure}.json"
EXIT_MEASURES = ("fast_weights", "kl", "argmax")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A trained recipe: ``<variant>_s<seed>`` run directories under ``root``.

  ``home`` is the serving the wake and training panels show: the trained ``N`` (for a drawn ``N``, about its
  mean).
  """
  variant: str
  label: str
  root: str
  seeds: tuple[int, ...]
  home: str = "N=4"


RECIPES = (
    Recipe("n1", "fixed N = 1", DEMO_RUNS, (0, 1, 2, 3, 4), home="N=1"),
    Recipe("n2", "fixed N = 2", DEMO_RUNS, (0, 1, 2), home="N=2"),
    Recipe("n4", "fixed N = 4", DEMO_RUNS, (0, 1, 2, 3, 4)),
    Recipe("nrand4", "randomised N in 1..4", DEMO_RUNS, (0, 1, 2)),
    Recipe("heavy", "heavy-tailed N (mean 4)", LONGER_RUNS, (0, 1, 2)),
    Recipe("reinject", "re-injection, fixed N = 4", LONGER_RUNS, (0, 1, 2)),
    Recipe("prog", "progressive loss, fixed N = 4", LONGER_RUNS, (0, 1, 2)),
    Recipe("heavyprog", "heavy-tailed N + progressive loss", LONGER_RUNS, (0, 1, 2)),
    Recipe("combined", "sleep-longer recipes combined", LONGER_RUNS, (0, 1, 2)),
    Recipe("floor", "N drawn from 4..8", LONGER_RUNS, (0, 1, 2), home="N=6"),
    Recipe("wfloor", "N drawn from 4..8, weighted to 4", LONGER_RUNS, (0, 1, 2), home="N=5"),
    Recipe("n1_compute", "N = 1, compute-matched to N = 4", DEMO_RUNS, (0,), home="N=1"),
    Recipe("deep4", "deep N = 1 (4x the layers)", DEMO_RUNS, (0,), home="N=1"),
    Recipe("transformer", "plain transformer", DEMO_RUNS, (0,), home="-"),
)


@dataclasses.dataclass(frozen=True)
class Point:
  """One recipe served one way, over the seeds that have it.

  Attributes:
    recipe: the trained recipe's label.
    served: ``N=<k>`` or ``<measure> tol=<x>`` (adaptive sleep, capped at its ``max_passes``).
    adaptive: whether ``served`` is adaptive sleep.
    passes: mean passes per sleeping window (wake pass included), per seed.
    accuracy: accuracy at the deepest depth, per seed.
    majority: the majority baseline at that depth (mean over the seeds' eval sets).
    wake_per_token: wake FLOPs per token.
    sleep_per_window: sleep FLOPs per sleeping window (mean over seeds).
    train_flops: training FLOPs of the run (mean over seeds).
    seeds: the seeds.
    home: ``served`` is the recipe's home serving (:attr:`Recipe.home`).
  """
  recipe: str
  served: str
  adaptive: bool
  passes: tuple[float, ...]
  accuracy: tuple[float, ...]
  majority: float
  wake_per_token: float
  sleep_per_window: float
  train_flops: float
  seeds: tuple[int, ...]
  home: bool = False

  @property
  def mean_accuracy(self) -> float:
    return sum(self.accuracy) / len(self.accuracy)

  @property
  def mean_passes(self) -> float:
    return sum(self.passes) / len(self.passes)


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _deepest(result: dict) -> int:
  depths = [int(k.split("=", 1)[1]) for k in result if k.startswith("accuracy/depth=")]
  if not depths:
    raise ValueError("an evaluation without per-depth accuracy")
  return max(depths)


def served_settings(workdir: str) -> dict[str, tuple[dict, dict]]:
  """``{served label: (sleep-config changes, evaluation result)}`` of one run directory.

  The trained ``N`` (``eval.json``), fixed ``N`` and fast-weight tolerances of ``launch.eval`` (see
  ``sweep_results.sleep_settings``), and the adaptive evaluations per exit measure
  (``eval_exit_<measure>.json``, written by ``launch.eval --halt_tol=... --output=...``).
  """
  cfg = _read(os.path.join(workdir, "config.json"))
  out = {}
  trained_n = int(cfg["sleep"]["n_passes"])
  final = {k: v for k, v in _read(os.path.join(workdir, "eval.json")).items() if k != "step"}
  if cfg.get("plain_transformer"):
    return {"-": ({}, final)}
  out[f"N={trained_n}"] = ({"n_passes": trained_n, "halt_tol": None}, {"sleep/passes": float(trained_n), **final})
  halting_cap = None
  path = os.path.join(workdir, results_lib.SETTINGS_FILES[1])
  if os.path.exists(path):
    halting_cap = _read(path).get("max_passes")
  for label, result in results_lib.sleep_settings(workdir).items():
    if label.startswith("N="):
      out[label] = ({"n_passes": int(label[2:]), "halt_tol": None}, result)
    else:
      out[f"fast_weights {label}"] = ({"halt_tol": float(label[4:]), "halt_measure": "fast_weights",
                                       "max_passes": halting_cap}, result)
  for measure in EXIT_MEASURES:
    path = os.path.join(workdir, EXIT_FILE.format(measure=measure))
    if os.path.exists(path):
      d = _read(path)
      for tol, result in sorted(d.get("adaptive", {}).items(), key=lambda kv: -float(kv[0])):
        out[f"{measure} tol={float(tol):g}"] = ({"halt_tol": float(tol), "halt_measure": measure,
                                                 "max_passes": d.get("max_passes")}, result)
  return out


@functools.lru_cache(maxsize=None)
def _run_costs(workdir: str):
  """``(experiment, wake FLOPs per token, training FLOPs)`` of a run: read once, shared by its servings."""
  from launch import experiment
  from sleep_jax import cost
  rec = results_lib.read_run(workdir)
  exp = experiment.experiment_from_config(_read(os.path.join(workdir, "config.json")))
  seq_len = exp.task.seq_len(exp.task_config)
  schedule = [False] * len(cost.window_spans(seq_len, exp.sleep.window))
  # The wake pass alone: no window sleeps, whatever N the run trained or serves with.
  awake = exp.sleep if exp.plain_transformer else dataclasses.replace(exp.sleep.with_n_passes(1), halt_tol=None)
  wake = cost.sequence_flops(exp.model, awake, schedule, seq_len).forward / seq_len
  return exp, wake, rec.train_flops


def _costs(workdir: str, changes: dict, passes: float) -> tuple[float, float, float]:
  """``(wake FLOPs per token, sleep FLOPs per sleeping window at mean passes, training FLOPs)``."""
  from sleep_jax import cost
  exp, wake, train = _run_costs(workdir)
  if exp.plain_transformer:
    return wake, 0.0, train
  served = dataclasses.replace(exp.sleep.with_n_passes(1),
                               **{"halt_tol": None, **{k: v for k, v in changes.items() if k != "n_passes"}})
  window = cost.window_flops(exp.model, served, exp.sleep.window)
  return wake, float(window.sleep(passes)), train


def points(recipes: Sequence[Recipe] = RECIPES) -> list[Point]:
  """Every recipe's served settings, in the recipes' order; a recipe without run directories is left out."""
  out = []
  for recipe in recipes:
    dirs = {s: os.path.join(recipe.root, f"{recipe.variant}_s{s}") for s in recipe.seeds}
    dirs = {s: d for s, d in dirs.items() if os.path.isfile(os.path.join(d, "config.json"))}
    per_seed = {s: served_settings(d) for s, d in dirs.items()}
    labels = list(dict.fromkeys(label for settings in per_seed.values() for label in settings))
    for label in labels:
      have = [s for s in dirs if label in per_seed[s]]
      accs, passes, majs, wakes, sleeps, trains = [], [], [], [], [], []
      for s in have:
        changes, result = per_seed[s][label]
        depth = _deepest(result)
        p = float(result.get("sleep/passes", 1.0))
        wake, sleep, train = _costs(dirs[s], changes, p)
        accs.append(float(result[f"accuracy/depth={depth}"]))
        majs.append(float(result[f"majority/depth={depth}"]))
        passes.append(p)
        wakes.append(wake)
        sleeps.append(sleep)
        trains.append(train)
      mean = lambda xs: sum(xs) / len(xs)
      out.append(Point(recipe=recipe.label, served=label, adaptive="tol=" in label, passes=tuple(passes),
                       accuracy=tuple(accs), majority=mean(majs), wake_per_token=mean(wakes),
                       sleep_per_window=mean(sleeps), train_flops=mean(trains), seeds=tuple(have),
                       home=label == recipe.home))
  return out


def markdown(pts: Sequence[Point]) -> str:
  """One row per point: accuracy at the deepest depth [every seed], passes and the three costs."""
  cols = ["trained", "served", "seeds", "mean passes", "deepest-depth accuracy", "wake FLOPs / token",
          "sleep FLOPs / window", "training FLOPs"]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for p in pts:
    accs = " ".join(f"{a:.3f}" for a in p.accuracy)
    lines.append(f"| {p.recipe} | {p.served} | {','.join(map(str, p.seeds))} | {p.mean_passes:.2f} | "
                 f"{p.mean_accuracy:.3f} [{accs}] | {p.wake_per_token:.3g} | {p.sleep_per_window:.3g} | "
                 f"{p.train_flops:.3g} |")
  majorities = sorted({round(p.majority, 3) for p in pts})
  lines.append(f"| *majority* | | | | {' / '.join(f'{m:.3f}' for m in majorities)} | | | |")
  return "\n".join(lines) + "\n"


def figure(pts: Sequence[Point], *, title: str = "Rule 110 demo: accuracy at t = 6 against cost"):
  """Three panels sharing the accuracy axis: wake FLOPs per token, sleep FLOPs per window, training FLOPs.

  The wake and training panels show each recipe once, at its home serving (:attr:`Recipe.home`); the sleep
  panel shows every serving: fixed ``N`` as filled markers joined in order of ``N``, adaptive sleep as open
  markers. The dashed line is the majority baseline.
  """
  import matplotlib.pyplot as plt
  if not pts:
    raise ValueError("no points to draw")
  recipes = list(dict.fromkeys(p.recipe for p in pts))
  # One colour and one marker per recipe: tab20's ten dark shades first, then its ten light ones.
  colours, markers = plt.get_cmap("tab20"), "osD^vP*Xph<>d8H"
  style = {r: (colours((2 * i) % 20 + (i // 10) % 2), markers[i % len(markers)]) for i, r in enumerate(recipes)}
  fig, axes = plt.subplots(1, 3, figsize=(18, 6), sharey=True)
  homes = [p for p in pts if p.home]
  for ax, x_of, xlabel in ((axes[0], lambda p: p.wake_per_token, "wake FLOPs per token"),
                           (axes[2], lambda p: p.train_flops, "training FLOPs (whole run)")):
    for p in homes:
      colour, marker = style[p.recipe]
      ax.plot([x_of(p)], [p.mean_accuracy], marker, color=colour, ms=8, label=f"{p.recipe} ({p.served})")
      ax.plot([x_of(p)] * len(p.accuracy), p.accuracy, marker, color=colour, ms=3, alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
  ax = axes[1]
  for recipe in recipes:
    colour, marker = style[recipe]
    mine = [p for p in pts if p.recipe == recipe]
    fixed = sorted((p for p in mine if not p.adaptive), key=lambda p: p.mean_passes)
    ax.plot([p.sleep_per_window for p in fixed], [p.mean_accuracy for p in fixed], "-" + marker, color=colour,
            ms=6, lw=1.2, label=recipe)
    adaptive = [p for p in mine if p.adaptive]
    ax.plot([p.sleep_per_window for p in adaptive], [p.mean_accuracy for p in adaptive], marker, color=colour,
            ms=7, mfc="none")
  ax.set_xlabel("sleep FLOPs per sleeping window")
  majority = sum(p.majority for p in pts) / len(pts)
  for ax in axes:
    ax.axhline(majority, linestyle="--", color="black", alpha=0.6, label="majority")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy at the deepest depth (mean over seeds; small: each seed)")
  axes[0].set_title("serving: the wake pass, each recipe at its trained N", fontsize=9)
  axes[1].set_title("serving: sleep (filled: fixed N, joined by N; open: adaptive sleep)", fontsize=9)
  axes[2].set_title("training", fontsize=9)
  axes[1].legend(fontsize=7, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  from launch import cli
  parser.add_argument("--output", default=DEFAULT_OUTPUT, type=cli.user_path, help="PNG path of the figure")
  args = parser.parse_args(argv)
  pts = points()
  print(markdown(pts))
  from launch import plotting
  print(f"wrote {plotting.save(figure(pts), args.output)}")
  if not all(math.isfinite(p.mean_accuracy) for p in pts):
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
