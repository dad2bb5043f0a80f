"""RESULTS.md's tables, generated from the committed result files under ``results/``.

Every table in RESULTS.md sits between two markers and is written by this
module, never by hand::

    <!-- table: demo -->
    | variant | t=4 | ...
    <!-- /table: demo -->

Commands (from the repository root)::

    python3 -m launch.report            # rewrite every marked block of RESULTS.md
    python3 -m launch.report --check    # compare only; exit 1 and show the drift
    python3 -m launch.report --print=demo

``tests/test_results_report.py`` runs the check in the default test suite, so
RESULTS.md cannot disagree with the committed files.

Adding a table (e.g. for a new task's sweep): commit its run directories under
``results/<name>/`` (``config.json``, ``eval.json``, ``sweep_point.json``;
evaluations over training as ``metrics.jsonl`` or ``evals.json``, never
checkpoints), write a function ``() -> str`` below that reads them with the
helpers here (:func:`runs`, :func:`demo_table`, :func:`runs_table`), register it
with ``@table("<name>")``, put the two markers where it belongs in RESULTS.md
and run ``python3 -m launch.report``.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from launch import sweep_results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(REPO, "RESULTS.md")
DEMO = os.path.join(REPO, "results", "rule110_demo")
TABLES: dict[str, Callable[[], str]] = {}
_BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table: (?P=name) -->)", re.S)


def table(name: str):
  """Registers a ``() -> str`` table generator under ``name`` (its RESULTS.md markers)."""
  def register(fn):
    TABLES[name] = fn
    return fn
  return register


@functools.cache
def runs(root: str) -> dict[str, results_lib.RunRecord]:
  """``{run name: record}`` of the sweep run directories under ``root``."""
  return {r.name: r for r in results_lib.read_runs(root)}


def _fmt(v, spec=".3f") -> str:
  return results_lib._fmt(results_lib._number(v), spec)


def _head(depths: Sequence, depth_name: str) -> list[str]:
  return ["all" if d == "all" else f"{depth_name}={d}" for d in depths]


def _acc(result: dict, d) -> float:
  return result.get("accuracy" if d == "all" else f"accuracy/depth={d}")


def demo_table(records: Sequence[results_lib.RunRecord], depths: Sequence) -> str:
  """Mean over seeds ± its standard error [every seed] per variant, with one baseline row per eval set mean."""
  rows = [row for r in records for row in results_lib.run_rows(r)]
  lines = results_lib.accuracy_table(results_lib.summarize(rows), rows, depth_name=records[0].depth_name,
                                     depths=depths)
  return "\n".join(lines) + "\n"


def runs_table(records: Sequence[results_lib.RunRecord], depths: Sequence, *,
               extra: Sequence[tuple[str, Callable]] = ()) -> str:
  """One row per run (its final evaluation), then the majority baseline of each eval set the runs used."""
  depth_name = records[0].depth_name
  cols = ["run", "eval seed", *(name for name, _ in extra), *_head(depths, depth_name)]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for r in records:
    lines.append("| " + " | ".join([r.name, str(r.eval_seed), *(fn(r) for _, fn in extra),
                                     *(_fmt(_acc(r.result, d)) for d in depths)]) + " |")
  for seed in dict.fromkeys(r.eval_seed for r in records):
    res = next(r.result for r in records if r.eval_seed == seed)
    lines.append(f"| *majority* | {seed} | " + "| " * len(extra)
                 + " | ".join(_fmt(res.get("majority" if d == "all" else f"majority/depth={d}")) for d in depths)
                 + " |")
  return "\n".join(lines) + "\n"


def parameter_count(workdir: str) -> int:
  """Parameters of a run's model, from its ``config.json`` (shapes only; nothing is initialised)."""
  import jax
  from flax import nnx

  from launch import experiment
  from sleep_jax.model import HybridLM
  with open(os.path.join(workdir, "config.json")) as f:
    exp = experiment.experiment_from_config(json.load(f))
  model = nnx.eval_shape(lambda: HybridLM(exp.model, rngs=nnx.Rngs(0)))
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _select(root: str, names: Sequence[str]) -> list[results_lib.RunRecord]:
  got = runs(root)
  missing = [n for n in names if n not in got]
  if missing:
    raise FileNotFoundError(f"no committed run directories {missing} under {root}")
  return [got[n] for n in names]


# -- the Rule 110 demo -------------------------------------------------------------------------------
DEMO_RUNS = os.path.join(DEMO, "runs")


@table("demo")
def _demo() -> str:
  names = [f"n{n}_s{s}" for n in (1, 2, 4) for s in (0, 1, 2)]
  return demo_table(_select(DEMO_RUNS, names), (4, 5, 6, "all"))


@table("unseen_seeds")
def _unseen_seeds() -> str:
  return runs_table(_select(DEMO_RUNS, ["n1_s3", "n4_s3", "n1_s4", "n4_s4"]), (4, 5, 6, "all"))


@table("controls")
def _controls() -> str:
  names = ["n4_s0", "n1_compute_s0", "replay2_s0", "n2_s0", "transformer_s0", "deep4_s0", "n1_s0"]
  extra = [("steps", lambda r: f"{r.steps:,}"), ("training FLOPs (analytic)", lambda r: f"{r.train_flops:.3g}"),
           ("parameters", lambda r: f"{parameter_count(r.workdir):,}")]
  return runs_table(_select(DEMO_RUNS, names), (3, 4, 5, 6, "all"), extra=extra)


def settings_table(variants: dict[str, str], seeds: Sequence[int], labels: Callable[[str], bool],
                   depths: Sequence, runs_dir: str = DEMO_RUNS) -> str:
  """Checkpoints evaluated at other sleep settings (``launch.eval``): mean over seeds [every seed].

  Args:
    variants: ``{variant: label}`` of the runs (``<variant>_s<seed>`` under ``runs_dir``); a variant's
      seeds without a run directory are left out of its rows.
    seeds: the seeds.
    labels: which settings (``N=<k>``, ``tol=<x>``; see ``sweep_results.sleep_settings``) to show.
    depths: the accuracy columns.
    runs_dir: where the runs are (default: the demo's).
  """
  cell = lambda vals, spec=".3f": (f"{_fmt(sum(vals) / len(vals), spec)} [{' '.join(_fmt(v, spec) for v in vals)}]"
                                   if vals else "-")
  cols = ["trained", "setting", "mean passes", *_head(depths, "t")]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for variant, label in variants.items():
    per_seed = [results_lib.sleep_settings(os.path.join(runs_dir, f"{variant}_s{s}")) for s in seeds
                if os.path.isdir(os.path.join(runs_dir, f"{variant}_s{s}"))]
    if not per_seed:  # no run of this variant committed yet
      continue
    for setting in [k for k in per_seed[0] if labels(k)]:
      got = [st[setting] for st in per_seed if setting in st]
      lines.append(f"| {label} | {setting} | {cell([g['sleep/passes'] for g in got], '.2f')} | "
                   + " | ".join(cell([_acc(g, d) for g in got]) for d in depths) + " |")
  # The baselines depend on the eval examples only: any setting of each seed's run has them.
  first = next(iter(variants))
  base = [next(iter(results_lib.sleep_settings(os.path.join(runs_dir, f"{first}_s{s}")).values())) for s in seeds
          if os.path.isdir(os.path.join(runs_dir, f"{first}_s{s}"))]
  majority = lambda d: sum(b["majority" if d == "all" else f"majority/depth={d}"] for b in base) / len(base)
  maj_keys = lambda b: {k: v for k, v in b.items() if k.startswith("majority")}
  sets = "one eval set" if all(maj_keys(b) == maj_keys(base[0]) for b in base) else f"mean of {len(base)} eval sets"
  lines.append(f"| *majority* ({sets}) | | | "
               + " | ".join(_fmt(majority(d)) for d in depths) + " |")
  return "\n".join(lines) + "\n"


_TRAINED = {"n4": "fixed N = 4", "nrand4": "randomised N in {1,2,3,4}"}


@table("test_time_n")
def _test_time_n() -> str:
  return settings_table(_TRAINED, (0, 1, 2), lambda k: k.startswith("N="), (5, 6, "all"))


@table("sleep_longer")
def _sleep_longer() -> str:
  variants = {"combined": "all recipes combined (`rule110_sleep_longer_combined.py`)",
              "reinject": "fixed N = 4 with `sleep_reinject=\"embedding\"` alone",
              "heavy": "the heavy-tailed N draw alone (mean 4, sigma 0.5, cap 10), full gradients",
              "prog": "fixed N = 4 with the progressive loss alone (`rule110_sleep_longer_progressive.py`)",
              "heavyprog": "heavy-tailed N draw + progressive loss, full gradients, no re-injection",
              "floor": "N drawn uniformly from 4..8, full gradients (`rule110_sleep_longer.py`)",
              "wfloor": "N drawn from 4..8 weighted 3:2:1:1:1 (mean 5.4), full gradients"}
  return settings_table(variants, (0, 1, 2), lambda k: k.startswith("N="), (5, 6, "all"),
                        runs_dir=os.path.join(REPO, "results", "rule110_sleep_longer"))


@table("tradeoff")
def _tradeoff() -> str:
  from launch import tradeoff
  return tradeoff.markdown(tradeoff.points())


def exit_table(variants: dict[str, str], seeds: Sequence[int], runs_dir: str, depths: Sequence[int]) -> str:
  """Adaptive sleep per exit measure (``launch.tradeoff.served_settings``): mean passes at each depth, accuracy.

  One row per trained variant, measure and tolerance: mean passes per sleeping window at each of ``depths``
  and over all, accuracy at the deepest depth and over all; mean over seeds [every seed].
  """
  from launch import tradeoff
  cell = lambda vals, spec: f"{_fmt(sum(vals) / len(vals), spec)} [{' '.join(_fmt(v, spec) for v in vals)}]"
  deepest = max(depths)
  cols = ["trained", "exit", *(f"passes t={d}" for d in depths), "passes all", f"t={deepest}", "all"]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  majorities = {}
  for variant, label in variants.items():
    dirs = [os.path.join(runs_dir, f"{variant}_s{s}") for s in seeds]
    per_seed = [tradeoff.served_settings(d) for d in dirs if os.path.isdir(d)]
    if not per_seed:
      continue
    for setting in [k for k in per_seed[0] if " tol=" in k]:
      got = [st[setting][1] for st in per_seed if setting in st]
      majorities.setdefault(label, (got[0][f"majority/depth={deepest}"], got[0]["majority"]))
      lines.append(f"| {label} | {setting} | "
                   + " | ".join(cell([g[f"sleep/passes/depth={d}"] for g in got], ".2f") for d in depths)
                   + f" | {cell([g['sleep/passes'] for g in got], '.2f')} | "
                   + f"{cell([_acc(g, deepest) for g in got], '.3f')} | {cell([_acc(g, 'all') for g in got], '.3f')} |")
  for label, (deep, overall) in majorities.items():
    lines.append(f"| *majority* ({label}'s eval set) | |" + " |" * (len(depths) + 1) + f" {_fmt(deep)} | {_fmt(overall)} |")
  return "\n".join(lines) + "\n"


@table("exit_passes")
def _exit_passes() -> str:
  return exit_table({"heavy": "heavy-tailed N draw alone", "combined": "all combined (`rule110_sleep_longer_combined.py`)"},
                    (0, 1, 2), os.path.join(REPO, "results", "rule110_sleep_longer"), (1, 3, 6))


@table("announce_exit")
def _announce_exit() -> str:
  return exit_table({"ann_heavy": "heavy-tailed N, depth announced (`announce_t`)"}, (0, 1, 2),
                    os.path.join(REPO, "results", "rule110_sleep_longer"), (1, 2, 3, 4, 5, 6))


@table("announce")
def _announce() -> str:
  return settings_table({"ann_heavy": "heavy-tailed N draw alone, depth announced (`announce_t`)"}, (0, 1, 2),
                        lambda k: k.startswith("N="), (5, 6, "all"),
                        runs_dir=os.path.join(REPO, "results", "rule110_sleep_longer"))


@table("fixed_point")
def _fixed_point() -> str:
  """``launch.fixed_point`` per recipe: change per pass, norm growth, accuracy at t = 6; mean over seeds [every seed]."""
  root = os.path.join(REPO, "results", "rule110_sleep_longer")
  variants = {"reinject": "fixed N = 4, re-injection", "heavy": "heavy-tailed N draw alone",
              "combined": "all combined (`rule110_sleep_longer_combined.py`)", "prog": "fixed N = 4, progressive loss",
              "heavyprog": "heavy-tailed N + progressive loss", "floor": "N drawn from 4..8"}
  passes = (2, 4, 8, 12, 16)
  cols = ["trained", "measure", *(f"N={n}" for n in passes)]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  cell = lambda vals, spec: f"{_fmt(sum(vals) / len(vals), spec)} [{' '.join(_fmt(v, spec) for v in vals)}]"
  majority = []
  for variant, label in variants.items():
    got = []
    for seed in (0, 1, 2):
      path = os.path.join(root, f"{variant}_s{seed}", "fixed_point.json")
      if os.path.exists(path):
        with open(path) as f:
          got.append(json.load(f))
    if not got:
      continue
    deepest = str(max(got[0]["depths"]))
    majority.append(got[0]["majority"][deepest])
    rows = (("change per pass", lambda r, i: r["change"]["all"][i], ".3f"),
            ("norm / wake", lambda r, i: r["norm"]["all"][i], ".2f"),
            (f"accuracy t={deepest}", lambda r, i: r["accuracy"][deepest][i], ".3f"))
    for name, value, spec in rows:
      lines.append(f"| {label} | {name} | " + " | ".join(cell([value(r, n - 1) for r in got], spec) for n in passes)
                   + " |")
  if majority:
    lines.append(f"| *majority* (first 512 eval examples) | accuracy | {_fmt(majority[0])} |" + " |" * (len(passes) - 1))
  return "\n".join(lines) + "\n"


@table("adaptive")
def _adaptive() -> str:
  return settings_table(_TRAINED, (0, 1, 2), lambda k: k in ("N=4", "N=8") or k.startswith("tol="), (6, "all"))


@table("retrofit_continue")
def _retrofit_continue() -> str:
  return runs_table(_select(DEMO_RUNS, ["n1_s0", "retro_n1_s0", "retro_n4_s0"]), (4, 5, 6, "all"),
                    extra=[("steps", lambda r: f"{r.steps:,}"), ("N", lambda r: str(r.n_passes))])


@table("retrofit_insert")
def _retrofit_insert() -> str:
  root = os.path.join(DEMO, "retrofit_insert")
  read = lambda *p: json.load(open(os.path.join(root, *p)))
  evals = [("inserted, before training (`base`)", read("base", "eval_step0.json")),
           ("N = 1 continuation (`n1`)", read("n1", "eval.json")), ("N = 4 continuation (`n4`)", read("n4", "eval.json"))]
  depths = (1, 2, 3, 4, 5, 6, "all")
  lines = ["| model | step | " + " | ".join(_head(depths, "t")) + " |", "|---|---|" + "---|" * len(depths)]
  for label, res in evals:
    lines.append(f"| {label} | {res['step']:,} | " + " | ".join(_fmt(_acc(res, d)) for d in depths) + " |")
  res = evals[0][1]
  lines.append("| *majority* | | " + " | ".join(_fmt(res.get("majority" if d == "all" else f"majority/depth={d}"))
                                             for d in depths) + " |")
  return "\n".join(lines) + "\n"


def evals_table(root: str, runs_: dict[str, str], depths: Sequence, depth_name: str,
                extra: Sequence[tuple[str, str]] = ()) -> str:
  """Accuracy over training: per run, its evaluations (``evals.json``: a list of eval records) ``a / b / ...``,
  then the last evaluation's majority baseline at that depth; ``extra`` adds ``(metric key, column title)``
  columns over the same evaluations (empty where a run has no such metric)."""
  cols = len(depths) + len(extra)
  lines = ["| run | steps | " + " | ".join(list(_head(depths, depth_name)) + [t for _, t in extra]) + " |",
           "|---|---|" + "---|" * cols]
  for name, label in runs_.items():
    with open(os.path.join(root, name, "evals.json")) as f:
      evals = sorted(json.load(f), key=lambda r: r["step"])
    def cell(d):
      if all(_acc(r, d) is None for r in evals):
        return ""
      majority = evals[-1].get("majority" if d == "all" else f"majority/depth={d}")
      return (" / ".join(_fmt(_acc(r, d)) for r in evals)
              + ("" if majority is None else f" (majority {_fmt(majority)})"))
    def extra_cell(key):
      return "" if all(key not in r for r in evals) else " / ".join(_fmt(r.get(key)) for r in evals)
    lines.append(f"| {label} | " + " / ".join(f"{r['step']:,}" for r in evals) + " | "
                 + " | ".join([cell(d) for d in depths] + [extra_cell(k) for k, _ in extra]) + " |")
  return "\n".join(lines) + "\n"


# -- the Depo small search ----------------------------------------------------------------------------
@table("depo_search")
def _depo_search() -> str:
  runs_ = {"depo_lr3e3": "default decay init (`depo_lr3e3`)",
           "depo_lr3e3_slowdecay": "`--config.model.gdn_decay_init=(0.02,0.2)` (`depo_lr3e3_slowdecay`)",
           "depo_k1": "`--config.task_config.k_max=1`, k = 1 only (`depo_k1`)",
           "depo_kw_n1": "`k_weights=(8,4,3,2,2,1,1,1)` (`depo_kw_n1`)"}
  return evals_table(os.path.join(REPO, "results", "depo_small_search"), runs_, (1, 2, 4, 8), "k")


@table("depo_search_one_window")
def _depo_search_one_window() -> str:
  runs_ = {"depo_1win_kw": "one window (`context_len=64 window=64`), `k_weights=(8,4,3,2,2,1,1,1)`, lr 3e-3",
           "depo_1win_k2": "one window, `k_max=2` (half the queries k = 2), lr 3e-3",
           "depo_1win_k2_gdnfirst": "the same, `layout=gdn,attn,gdn,attn`"}
  return evals_table(os.path.join(REPO, "results", "depo_small_search"), runs_, (1, 2, 4, 8), "k")


@table("depo_small_d4")
def _depo_small_d4() -> str:
  runs_ = {"depo_d4_alt4_n1": "the D4 task (7-8 nodes, one window, 5 hidden-answer queries on one source, k 1..3), "
                              "`depo_small`'s 4-block alternating model, N = 1, batch 64"}
  return evals_table(os.path.join(REPO, "results", "depo_small_search"), runs_, (1, 2, 3), "k")


@table("depo_d4_lr")
def _depo_d4_lr() -> str:
  runs_ = {"d4_n4_s1_lr2e3": "the Depo demo (D4), N = 4, seed 1, AdamW 2e-3 (the demo's 1e-3 learned nothing on this seed)"}
  return evals_table(os.path.join(REPO, "results", "depo_demo_search"), runs_, (1, 2, 3), "k")


@table("depo_small_preset")
def _depo_small_preset() -> str:
  runs_ = {"depo_d4_alt4_lr2e3": "seed 0, lr 2e-3, 2,000 steps (the cosine decays over 2,000; the preset's other settings)",
           "depo_d4_alt4_lr2e3_canon4": "seed 0, lr 2e-3, `model.canon_size=4` (stopped at 1,250)",
           "depo_d4_alt4_lr2e3_s1": "seed 1, lr 2e-3",
           "depo_d4_alt4_lr2e3_kw_s1": "seed 1, `k_weights=(1,2,1)` (stopped at 1,000)",
           "depo_d4_alt4_lr2e3_kwc_s1": "seed 1, `k_weights=(1,2,1)`, `canon_size=4` (stopped at 750)",
           "depo_d4_alt4_lr3e3_s1": "seed 1, lr 3e-3 (stopped at 1,250)",
           "depo_small_k2_s1": "**k in 1..2 (the preset as shipped)**, seed 1",
           "depo_small_k2_s0": "**k in 1..2 (the preset as shipped)**, seed 0",
           "depo_small_k2_s2": "**k in 1..2 (the preset as shipped)**, seed 2"}
  return evals_table(os.path.join(REPO, "results", "depo_small_search"), runs_, (1, 2, 3), "k")


@table("gsm_small_search")
def _gsm_small_search() -> str:
  runs_ = {"g1": "op = 1, `+` only, mod 7, topological, T = 128, L = 64, batch 64, lr 3e-3 (stopped after step 500)",
           "g2": "op = 1, `+` only, mod 5, topological, T = 64, L = 32, batch 128, lr 3e-3 (stopped after step 1,000)",
           "g3": "as g2 with `canon_size=4`, batch 64, lr 2e-3 (stopped after step 1,000)",
           "g4": "as g2 with `n_queries=4` (four questions and answers per example), T = 96, three windows of 32, "
                 "batch 64, lr 2e-3 (stopped after step 1,250)",
           "g5": "as g2 with `line_values=True` (every operation line's value a hidden target), 2,000 steps",
           "g6": "the preset's task (op 1..8, mod 23, `+ - *`, T = 256, L = 64) in topological order with "
                 "`line_values=True`, batch 64, lr 2e-3 (stopped after step 250)",
           "g7": "as g5 with op 1..2 and `p_distractor_const=1.0` (every distractor a constant, so only the core's "
                 "one or two lines are line-value targets) (stopped after step 1,250)",
           "g8": "as g5 with op 1..2, 1,200 steps (stopped after step 1,000)",
           "g9": "as g8 with `d_model=128`, 4 heads (0.8 steps/s against g8's 1.8; stopped after step 200)",
           "g10": "as g8 with `distractor_reads=constants` (every distractor operation reads two constants), "
                  "1,200 steps",
           "g11": "as g10 with batch 64 and 2,000 steps (128 k training examples against g10's 154 k; 9 minutes on "
                  "one core; evaluated on 512 examples where the runs above use 1,024)",
           "g12": "as g11 with lr 5e-3 (stopped after step 1,000)",
           "g13": "as g11 with the cosine over 3,000 steps (stopped after step 2,500; its first 2,000 steps are "
                  "the shipped preset's, seed 0; 512 eval examples)",
           "g14": "as g11 with batch 32, lr 2e-3, 4,000 steps (1,024 eval examples; stopped after step 3,500)",
           "preset_s1": "**the preset as shipped**, seed 1 (fixed before it ran)",
           "preset_s2": "**the preset as shipped**, seed 2 (fixed before it ran)",
           "preset_s1_3000": "seed 1 continued from its step-2,000 checkpoint to 3,000, the end of its cosine",
           "preset_s3": "**the preset as shipped**, seed 3 (fixed before it ran)",
           "preset_n4_s1": "the preset as shipped at N = 4 (`--config.sleep.n_passes=4`), seed 1"}
  return evals_table(os.path.join(REPO, "results", "gsm_small_search"), runs_, (1, 2), "op",
                     extra=(("aux_accuracy", "line values (aux)"),))


# -- the Depo sleep demo -------------------------------------------------------------------------------
DEPO_DEMO = os.path.join(REPO, "results", "depo_demo_search")
DEPO_DEPTHS = (1, 2, 3, 4, "all")


def final_evals_table(root: str, runs_: dict[str, str], depths: Sequence, depth_name: str) -> str:
  """One row per run (its last evaluation in ``evals.json``), then majority and chance of the first run's eval set."""
  lines = ["| run | step | " + " | ".join(_head(depths, depth_name)) + " |", "|---|---|" + "---|" * len(depths)]
  last = {}
  for name, label in runs_.items():
    with open(os.path.join(root, name, "evals.json")) as f:
      last[name] = max(json.load(f), key=lambda r: r["step"])
    lines.append(f"| {label} | {last[name]['step']:,} | " + " | ".join(_fmt(_acc(last[name], d)) for d in depths)
                 + " |")
  first = last[next(iter(runs_))]
  for base in ("majority", "chance"):
    lines.append(f"| *{base}* | | " + " | ".join(_fmt(first.get(base if d == "all" else f"{base}/depth={d}"))
                                                for d in depths) + " |")
  return "\n".join(lines) + "\n"


@table("depo_demo_v1")
def _depo_demo_v1() -> str:
  runs_ = {"v1_n1_s0": "N = 1, seed 0", "v1_n4_s0": "N = 4, seed 0"}
  return (final_evals_table(DEPO_DEMO, runs_, DEPO_DEPTHS, "k") + "\nOver training (every 500 steps):\n\n"
          + evals_table(DEPO_DEMO, runs_, DEPO_DEPTHS[:-1], "k"))


@table("depo_passes_v1")
def _depo_passes_v1() -> str:
  return passes_block(os.path.join(DEPO_DEMO, "v1_n4_s0", "eval_n_passes.json"))


@table("depo_demo_v2")
def _depo_demo_v2() -> str:
  present = [name for name in ("v2_n1_s0", "v2_n4_s0", "v2_n1_s1", "v2_n4_s1", "v2_n2_s0")
             if os.path.exists(os.path.join(DEPO_DEMO, name, "evals.json"))]
  labels = {name: f"N = {name[4]}, seed {name[-1]}" for name in present}
  if not present:
    return "No D2 run has finished yet.\n"
  # The runs were stopped at different steps: over training only, so equal steps sit side by side.
  with open(os.path.join(DEPO_DEMO, present[0], "evals.json")) as f:
    first = json.load(f)[0]
  base = " / ".join(f"k={d}: {_fmt(first.get(f'majority/depth={d}'))}" for d in DEPO_DEPTHS[:-1])
  return (evals_table(DEPO_DEMO, labels, DEPO_DEPTHS[:-1], "k")
          + f"\nMajority {base}; chance {_fmt(first.get('chance'))} at every k.\n")


@table("depo_demo_v3")
def _depo_demo_v3() -> str:
  runs_ = {"v3_n1_s0": "N = 1, seed 0", "v3_n1_s1": "N = 1, seed 1", "v3_n4_s0": "N = 4, seed 0"}
  partial = {"v3_n2_s0": "N = 2, seed 0 (stopped at step 2,200)"}
  depths = (1, 2, 3, "all")
  return (final_evals_table(DEPO_DEMO, runs_, depths, "k") + "\nOver training (every 500 steps):\n\n"
          + evals_table(DEPO_DEMO, {**runs_, **partial}, depths[:-1], "k"))


def passes_block(path: str) -> str:
  """A checkpoint's ``launch.eval --n_passes`` record: accuracy per depth at each N, and the deepest depth answered."""
  from launch import tables
  with open(path) as f:
    doc = json.load(f)
  results_ = {int(n): r for n, r in doc["results"].items()}
  answered = ", ".join(f"N={n}: {tables.depth_answered(r)}" for n, r in results_.items())
  return ("```\n" + tables.passes_table(results_, "k") + "\n```\n\nDeepest k answered (accuracy >= (1 + majority) / 2 "
          f"there and at every shallower k): {answered}.\n")


def order_block(paths: dict[str, str]) -> str:
  """``launch.depo_probe`` records (``depo_order.json``): per run and N, accuracy in each (k, listing order) cell
  [its count], then the majority of each cell (of the first record: every run here shares one eval split)."""
  docs = {}
  for label, path in paths.items():
    with open(path) as f:
      docs[label] = json.load(f)
  first = next(iter(next(iter(docs.values())).values()))["cells"]
  cells = [c for c in first if not c.startswith("k=1")]
  lines = ["| run | N | " + " | ".join(cells) + " |", "|---|---|" + "---|" * len(cells)]
  for label, doc in docs.items():
    for n, r in doc.items():
      lines.append(f"| {label} | {n} | " + " | ".join(
          f"{_fmt(r['cells'][c]['accuracy'])} [{r['cells'][c]['count']:,}]" for c in cells) + " |")
  lines.append("| *majority* | | " + " | ".join(_fmt(first[c]["majority"]) for c in cells) + " |")
  return "\n".join(lines) + "\n"


@table("depo_demo_d5_d6_search")
def _depo_demo_d5_d6_search() -> str:
  runs_ = {"d5_pilot_n4_s1": "D5 pilot: the D4 task with k in 1..2, lr 2e-3, 2,000 steps (cosine over 2,000), "
                             "N = 4, seed 1",
           "d5_pilot_n4_s2": "D5 pilot, N = 4, seed 2",
           "d5_n1_s0": "D5 (k in 1..2, lr 2e-3, 3,000 steps), N = 1, seed 0 (stopped after step 2,400)",
           "d5_n4_s0": "D5, N = 4, seed 0 (stopped after step 800)",
           "d6_pilot_st1_n1_s0": "two-stage pilot, stage 1: the D4 task (k_max 3) with `k_weights=(1,1,0)`, lr 2e-3, "
                                 "2,000 steps, N = 1, seed 0",
           "d6_pilot_st2_n1_s0": "stage 2: k in 1..3, parameters from stage 1 (`train.init_from`), a new optimizer "
                                 "and cosine, 2,000 steps, N = 1, seed 0",
           "d6_pilot_st1_n4_s0": "two-stage pilot, stage 1, N = 4, seed 0",
           "d6_pilot_st2_n4_s0": "stage 2, N = 4, seed 0 (stopped after step 600)",
           "d6a_n1_s0": "D6a: the curriculum under one cosine (k in 1..2 for 2,000 steps, then 1..3; lr 2e-3, "
                        "cosine over 3,500 steps, no restart), N = 1, seed 0",
           "d6a_n4_s0": "D6a, N = 4, seed 0",
           "d6a_n1_s1": "D6a, N = 1, seed 1 (stopped after step 900)",
           "d6a_n4_s1": "D6a, N = 4, seed 1 (stopped after step 1,100)",
           "d6_cont_n1_s0": "the committed D6 run N = 1, seed 0, continued: 2,000 more steps on k in 1..3 "
                            "(`train.init_from`, a new optimizer and cosine)",
           "d6_cont_n4_s0": "the same continuation of D6 N = 4, seed 0"}
  return evals_table(DEPO_DEMO, runs_, (1, 2, 3), "k")


EDGE_TARGETS_COLUMN = (("aux_accuracy", "edge targets"),)  # evals_table's extra column for Depo's edge targets


@table("depo_d7_pilot")
def _depo_d7_pilot() -> str:
  runs_ = {"d7_pilot_n4_s1": "D7 pilot: D6 with `edge_targets = 1` (3,000 steps), N = 4, seed 1",
           "d7_pilot_n4_s3": "D7 pilot, N = 4, seed 3"}
  return evals_table(DEPO_DEMO, runs_, (1, 2, 3), "k", extra=EDGE_TARGETS_COLUMN)


@table("depo_order_v3")
def _depo_order_v3() -> str:
  return order_block({"D3 N = 1, seed 1": os.path.join(DEPO_DEMO, "v3_n1_s1", "depo_order.json")})


@table("depo_passes_v3")
def _depo_passes_v3() -> str:
  return passes_block(os.path.join(DEPO_DEMO, "v3_n4_s0", "eval_n_passes.json"))


# -- the Depo demo (D4, the committed config) ----------------------------------------------------------------
DEPO_RUNS = os.path.join(REPO, "results", "depo_demo_d4", "runs")
DEPO_DEMO_DEPTHS = (1, 2, 3, "all")


def _present(root: str, names: Sequence[str]) -> list[str]:
  return [n for n in names if os.path.exists(os.path.join(root, n, "eval.json"))]


@table("depo_demo")
def _depo_demo_d4() -> str:
  names = _present(DEPO_RUNS, [f"n{n}_s{s}" for n in (1, 2, 4) for s in (0, 1, 2)])
  return demo_table(_select(DEPO_RUNS, names), DEPO_DEMO_DEPTHS)


@table("depo_demo_over_training")
def _depo_demo_over_training() -> str:
  names = _present(DEPO_RUNS, [f"n{n}_s{s}" for n in (1, 2, 4) for s in range(5)])
  return evals_table(DEPO_RUNS, {n: f"N = {n[1]}, seed {n[-1]}" for n in names}, DEPO_DEMO_DEPTHS[:-1], "k")


@table("depo_unseen_seeds")
def _depo_unseen_seeds() -> str:
  names = _present(DEPO_RUNS, ["n1_s3", "n4_s3", "n1_s4", "n4_s4"])
  return runs_table(_select(DEPO_RUNS, names), DEPO_DEMO_DEPTHS) if names else "No run has finished yet.\n"


@table("depo_passes")
def _depo_passes() -> str:
  return passes_block(os.path.join(DEPO_RUNS, "n4_s0", "eval_n_passes.json"))


@table("depo_order")
def _depo_order() -> str:
  paths = {f"N = {n[1]}, seed {n[-1]}": os.path.join(DEPO_RUNS, n, "depo_order.json")
           for n in ("n1_s0", "n1_s1", "n1_s2", "n1_s3", "n1_s4", "n2_s0", "n4_s0", "n4_s1", "n4_s2", "n4_s3", "n4_s4")}
  return order_block({k: v for k, v in paths.items() if os.path.exists(v)})


# -- the Depo demos with a curriculum over k: D6, and D7 (the committed config: D6 with edge targets) ----------
def depo_curriculum_tables(prefix: str, runs_dir: str, demo_seeds: Sequence[int], unseen_seeds: Sequence[int],
                           passes_runs: Sequence[str], edge_targets: bool = False) -> None:
  """Registers ``<prefix>_{demo,over_training,unseen_seeds,passes,order}`` over the sweep runs in ``runs_dir``
  (``edge_targets``: the runs trained on Depo's edge targets; over training shows their accuracy too)."""
  all_seeds = (*demo_seeds, *unseen_seeds)
  label = lambda n: {"n1_compute4_s0": "N = 1 compute-matched to N = 4, seed 0",
                     "deep4_s0": "N = 1, four times the layers, seed 0"}.get(n, f"N = {n[1]}, seed {n.split('_s')[1]}")

  @table(f"{prefix}_demo")
  def _demo() -> str:
    names = _present(runs_dir, [f"n{n}_s{s}" for n in (1, 2, 4) for s in demo_seeds])
    return demo_table(_select(runs_dir, names), DEPO_DEMO_DEPTHS) if names else "No run has finished yet.\n"

  @table(f"{prefix}_over_training")
  def _over_training() -> str:
    names = _present(runs_dir, [f"n{n}_s{s}" for n in (1, 2, 4) for s in all_seeds] + ["n1_compute4_s0", "deep4_s0"])
    if not names:
      return "No run has finished yet.\n"
    return evals_table(runs_dir, {n: label(n) for n in names}, DEPO_DEMO_DEPTHS[:-1], "k",
                       extra=EDGE_TARGETS_COLUMN if edge_targets else ())

  @table(f"{prefix}_unseen_seeds")
  def _unseen() -> str:
    names = _present(runs_dir, [f"n{n}_s{s}" for s in unseen_seeds for n in (1, 2, 4)])
    return runs_table(_select(runs_dir, names), DEPO_DEMO_DEPTHS) if names else "No run has finished yet.\n"

  @table(f"{prefix}_passes")
  def _passes() -> str:
    out = []
    for run in passes_runs:
      path = os.path.join(runs_dir, run, "eval_n_passes.json")
      if os.path.exists(path):
        out.append(f"{label(run)}:\n\n" + passes_block(path))
    return "\n".join(out) if out else "Not evaluated yet.\n"

  @table(f"{prefix}_order")
  def _order() -> str:
    names = _present(runs_dir, [f"n{n}_s{s}" for n in (1, 2, 4) for s in all_seeds])
    paths = {label(n): os.path.join(runs_dir, n, "depo_order.json") for n in names}
    paths = {k: v for k, v in paths.items() if os.path.exists(v)}
    return order_block(paths) if paths else "Not probed yet.\n"


DEPO_D7_RUNS = os.path.join(REPO, "results", "depo_demo", "runs")
DEPO_D7_NO_EDGE_TARGETS = os.path.join(REPO, "results", "depo_demo", "no_edge_targets")


@table("depo_d7_controls")
def _depo_d7_controls() -> str:
  """D7's controls on one table: compute-matched and deep N = 1, and D7 without its edge targets."""
  records = _select(DEPO_D7_RUNS, ["n4_s0", "n4_s1", "n1_compute4_s0", "deep4_s0", "n1_s0"])
  plain = _present(DEPO_D7_NO_EDGE_TARGETS, ["n4_s0", "n4_s1", "n1_s0"])
  records += [dataclasses.replace(r, name=f"{r.name}, no edge targets") for r in _select(DEPO_D7_NO_EDGE_TARGETS, plain)]
  extra = [("steps", lambda r: f"{r.steps:,}"), ("training FLOPs (analytic)", lambda r: f"{r.train_flops:.3g}"),
           ("parameters", lambda r: f"{parameter_count(r.workdir):,}")]
  return runs_table(records, DEPO_DEMO_DEPTHS, extra=extra)


depo_curriculum_tables("depo_d6", os.path.join(REPO, "results", "depo_demo_d6", "runs"), (0, 1, 2), (3, 4),
                       ("n4_s2", "n4_s0"))
depo_curriculum_tables("depo_d7", DEPO_D7_RUNS, (0, 1, 2), (4, 5),
                       ("n4_s0", "n4_s1", "n4_s2"), edge_targets=True)


# -- the paper configs' cost ---------------------------------------------------------------------------
PAPER_COST_FILES = ("paper_cost.json", "paper_cost_n1.json", "paper_cost_gsm_hard_b1.json")


@table("paper_cost")
def _paper_cost() -> str:
  from launch import paper_cost
  docs = [json.load(open(os.path.join(REPO, "results", "paper_cost", f))) for f in PAPER_COST_FILES]
  return "```text\n" + paper_cost.report(paper_cost.merge_reports(docs)) + "\n```\n"


# -- committing runs ---------------------------------------------------------------------------------
# What a committed run directory keeps (never checkpoints or event files); evaluations over training go to
# evals.json, extracted from metrics.jsonl.
EXPORT_FILES = ("config.json", "eval.json", "sweep_point.json", "sweep_config.json", "eval_n_passes.json",
                "eval_halting.json", "eval_n_passes.png", "eval_halting.png", "depo_order.json")


def export_run(src: str, dst: str) -> list[str]:
  """Copies a run directory's result files to ``dst``; its eval records over training as ``evals.json``.

  Returns:
    The files written.
  """
  import shutil
  os.makedirs(dst, exist_ok=True)
  written = []
  for name in EXPORT_FILES:
    if os.path.exists(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      written.append(name)
  metrics = os.path.join(src, "metrics.jsonl")
  if os.path.exists(metrics):
    with open(metrics) as f:
      evals = [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "eval"]
    with open(os.path.join(dst, "evals.json"), "w") as f:
      json.dump(evals, f, indent=1, sort_keys=True)
    written.append("evals.json")
  return written


# -- RESULTS.md --------------------------------------------------------------------------------------
def render(text: str, tables: dict[str, Callable[[], str]] | None = None) -> str:
  """``text`` with every marked block replaced by its generated table.

  Raises:
    KeyError: a block names no registered table.
  """
  tables = TABLES if tables is None else tables
  return _BLOCK.sub(lambda m: m.group(1) + tables[m.group("name")]() + m.group(4), text)


def blocks(text: str) -> list[str]:
  """The table names marked in ``text``, in order."""
  return [m.group("name") for m in _BLOCK.finditer(text)]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python3 -m launch.report", description=__doc__.split("\n")[0])
  p.add_argument("--results", default=RESULTS_MD, help="the Markdown file with marked blocks")
  p.add_argument("--check", action="store_true", help="compare only: exit 1 and print a diff on drift")
  p.add_argument("--print", dest="name", default="", help=f"print one table: {', '.join(TABLES)}")
  p.add_argument("--export", nargs=2, metavar=("RUN_DIR", "DEST"),
                 help="copy a run directory's result files (no checkpoints) to DEST, evaluations as evals.json")
  args = p.parse_args(argv)
  if args.export:
    print(f"{args.export[1]}: " + ", ".join(export_run(*args.export)))
    return 0
  if args.name:
    print(TABLES[args.name](), end="")
    return 0
  with open(args.results) as f:
    text = f.read()
  unused = sorted(set(TABLES) - set(blocks(text)))
  new = render(text)
  if args.check:
    if new != text:
      sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), args.results,
                                                 "generated"))
      return 1
    print(f"{args.results}: {len(blocks(text))} tables match the committed results")
    return 0
  if new != text:
    with open(args.results, "w") as f:
      f.write(new)
  print(f"{args.results}: {len(blocks(text))} tables written" + (f"; not placed: {unused}" if unused else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
