"""A sweep's results: run directories read back into table rows, seed aggregates, CSV / Markdown / figures.

Everything here reads finished or partial run directories (``config.json``,
``eval.json``, ``metrics.jsonl`` and the sweep's own ``sweep_point.json`` /
``sweep_timing.json``), so a sweep can be tabulated at any time without
training (``launch.sweep --report``).

Units. ``tokens`` are training tokens as the trainer counts them (``steps *
batch_size * T``, every position). ``train_flops`` are analytic (see
``launch/sweep_flops.py``): comparable across sleep passes, depth and the
plain transformer. ``wall_s`` is the run's own wall-clock time in its training
processes (start-up, compile, steps and evaluations; summed over resumes),
``startup_s`` the part before each process's first train step (imports,
restore, compile: what a warm compilation cache shortens), ``stderr`` in a
row the binomial standard error of that run's accuracy over its ``count``
evaluated units.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from typing import Iterable, Mapping, Sequence

from launch import tables

COLUMNS = ("task", "variant", "n_passes", "seed", "eval_seed", "depth", "accuracy", "majority", "chance", "count", "stderr",
           "loss", "tokens", "steps", "train_flops", "wall_s", "train_depth", "status", "run", "startup_s")
# The files a sweep keeps in each run directory, beside the trainer's own.
POINT_FILE = "sweep_point.json"  # the sweep point: variant, seed, overrides, provenance
CONFIG_FILE = "sweep_config.json"  # the resolved config launch.sweep_run trains
TIMING_FILE = "sweep_timing.json"  # wall time of the run's processes
# The per-depth keys of an evaluation result that become table columns.
_DEPTH_KEY = re.compile(r"^(accuracy|loss|majority|chance|count)/depth=(-?\d+)$")
_VALUES = ("accuracy", "loss", "majority", "chance", "count")
NAN = float("nan")


def _number(v) -> float:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return NAN
  return v


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def binomial_stderr(p, count) -> float:
  """``sqrt(p (1 - p) / count)``; NaN when either is missing or ``count < 1``."""
  p, n = _number(p), _number(count)
  if not (math.isfinite(p) and math.isfinite(n)) or n < 1:
    return NAN
  return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def seed_stderr(values: Sequence[float]) -> float:
  """Standard error of the mean over seeds, ``std(ddof=1) / sqrt(n)``; NaN for fewer than two."""
  v = [float(x) for x in values if _finite(x)]
  if len(v) < 2:
    return NAN
  m = sum(v) / len(v)
  return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def eval_rows(result: Mapping[str, float], base: Mapping) -> list[dict]:
  """Rows of one evaluation result: one per depth (sorted), then depth "all".

  Args:
    result: an evaluator result (``eval.json`` or an eval record): the
      ``<value>/depth=<d>`` keys and the all-depth ``accuracy``, ``loss`` and,
      where the evaluator writes them, ``majority``, ``chance``, ``count``.
      Missing values are NaN.
    base: columns shared by the rows (task, variant, seed, ...).

  Returns:
    Dicts with ``base``'s columns, ``depth`` and ``accuracy``, ``loss``,
    ``majority``, ``chance``, ``count``, ``stderr`` (binomial).
  """
  per_depth: dict[int, dict[str, float]] = {}
  for k, v in result.items():
    m = _DEPTH_KEY.match(k)
    if m:
      per_depth.setdefault(int(m.group(2)), {})[m.group(1)] = _number(v)
  rows = []
  for d in sorted(per_depth):
    vals = {k: per_depth[d].get(k, NAN) for k in _VALUES}
    rows.append({**base, "depth": d, **vals, "stderr": binomial_stderr(vals["accuracy"], vals["count"])})
  total = {k: _number(result.get(k)) for k in _VALUES}
  if not math.isfinite(total["count"]):
    counts = [per_depth[d].get("count", NAN) for d in per_depth]
    if counts and all(math.isfinite(c) for c in counts):
      total["count"] = float(sum(counts))
  rows.append({**base, "depth": "all", **total, "stderr": binomial_stderr(total["accuracy"], total["count"])})
  return rows


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """One run directory of a sweep, read back.

  Attributes:
    name: the directory name.
    workdir: its path.
    point: the sweep point (``sweep_point.json``: variant, seed, ...).
    task: the task name.
    n_passes: sleep passes ``N`` of the run.
    status: "done" (the final evaluation is written), "partial" (started,
      not finished) or "new" (no training yet).
    num_steps: the configured number of steps.
    steps: the step of ``result``.
    tokens: training tokens at ``steps``.
    flops_per_step: analytic training FLOPs of one step.
    wall_s: wall-clock seconds of the run's training processes (NaN if
      unknown).
    startup_s: of which before their first train steps (NaN if unknown).
    result: the latest evaluation (the final one when done; empty if none).
    curve: ``[(step, tokens, accuracy)]`` of the eval records over training.
    depth_name: the task's depth knob.
    epochs: passes over a finite train set at ``steps`` (NaN if the set is
      effectively infinite).
    eval_seed: the seed of the run's eval split (``TrainConfig.eval_seed``, or
      the run's seed where that is unset): runs with one ``eval_seed`` were
      scored on the same examples.
  """
  name: str
  workdir: str
  point: dict
  task: str
  n_passes: int
  status: str
  num_steps: int
  steps: int
  tokens: int
  flops_per_step: float
  wall_s: float
  result: dict
  curve: list
  depth_name: str = "depth"
  epochs: float = NAN
  startup_s: float = NAN
  eval_seed: int = 0

  @property
  def variant(self) -> str:
    return str(self.point.get("variant", self.name))

  @property
  def seed(self) -> int:
    return int(self.point.get("seed", 0))

  @property
  def train_depth(self):
    d = self.point.get("train_depth")
    return "" if d is None else d

  @property
  def train_flops(self) -> float:
    return self.steps * self.flops_per_step


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def wall_seconds(workdir: str, train_records: Sequence[dict] = ()) -> tuple[float, float]:
  """``(wall_s, startup_s)`` of a run: the sweep worker's ``sweep_timing.json``, else estimated.

  The estimate (a run trained outside the sweep) sums each logging window's
  steps over its ``steps_per_s`` (training steps only; NaN without records);
  its start-up is unknown (NaN).
  """
  path = os.path.join(workdir, TIMING_FILE)
  if os.path.exists(path):
    rec = _read_json(path)
    return float(rec.get("wall_s", NAN)), float(rec.get("startup_s", NAN))
  total, prev = 0.0, 0
  for r in sorted(train_records, key=lambda r: r.get("step", 0)):
    sps = r.get("steps_per_s")
    if _finite(sps) and sps > 0:
      total += (r["step"] - prev) / sps
    prev = r.get("step", prev)
  return (total if train_records else NAN), NAN


def add_wall_time(workdir: str, seconds: float, *, finished: bool, startup_s: float | None = None) -> dict:
  """Adds one process's wall time to ``<workdir>/sweep_timing.json``; returns the new record.

  Args:
    workdir: the run directory.
    seconds: the process's wall time.
    finished: whether the run has now finished.
    startup_s: the process's time to its first train step (``None``: it took
      none, e.g. it only evaluated; its whole time then counts as start-up).
  """
  path = os.path.join(workdir, TIMING_FILE)
  record = {"wall_s": 0.0, "startup_s": 0.0, "processes": 0}
  if os.path.exists(path):
    with open(path) as f:
      record.update(json.load(f))
  record["wall_s"] = float(record["wall_s"]) + float(seconds)
  record["startup_s"] = float(record["startup_s"]) + float(seconds if startup_s is None else startup_s)
  record["processes"] = int(record["processes"]) + 1
  record["finished"] = bool(finished)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return record


def run_status(workdir: str, num_steps: int) -> str:
  """"done" when ``eval.json`` holds step ``num_steps``, "partial" when training started, else "new"."""
  path = os.path.join(workdir, "eval.json")
  if os.path.exists(path):
    try:
      if int(_read_json(path).get("step", -1)) == int(num_steps):
        return "done"
    except (ValueError, json.JSONDecodeError):
      pass
  started = any(os.path.exists(os.path.join(workdir, f)) for f in ("metrics.jsonl", "checkpoints"))
  return "partial" if started else "new"


def read_run(workdir: str) -> RunRecord | None:
  """Reads one run directory; ``None`` if it has no config (``config.json``, else ``sweep_config.json``).

  Raises:
    ValueError: the config does not build (see ``experiment_from_config``).
  """
  from launch import experiment
  from launch import sweep_flops

  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_path):
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(cfg_path):
      return None
  cfg = _read_json(cfg_path)
  point_path = os.path.join(workdir, POINT_FILE)
  point = _read_json(point_path) if os.path.exists(point_path) else {}
  exp = experiment.experiment_from_config(cfg)
  seq = sweep_flops.experiment_flops(exp)
  num_steps = exp.train.num_steps
  status = run_status(workdir, num_steps)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  records = []
  if os.path.exists(metrics_path):
    from sleep_jax.train import metrics as metrics_lib
    records = metrics_lib.read_jsonl(metrics_path)
  evals = sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["step"])
  train = [r for r in records if r.get("kind") == "train"]
  # A resumed run may have re-logged steps; the last record of a step wins.
  by_step = {r["step"]: r for r in evals}
  curve = [(s, int(r.get("tokens", 0)), _number(r.get("accuracy"))) for s, r in sorted(by_step.items())]
  if status == "done":
    final = _read_json(os.path.join(workdir, "eval.json"))
    result, steps = {k: v for k, v in final.items() if k != "step"}, int(final["step"])
  elif by_step:
    steps = max(by_step)
    result = {k: v for k, v in by_step[steps].items() if k not in ("kind", "step", "tokens")}
  else:
    result, steps = {}, max((r["step"] for r in train), default=0)
  tokens = steps * exp.train.batch_size * seq.seq_len
  n_train = exp.task_config.num_train_examples
  epochs = steps * exp.train.batch_size / n_train if n_train < (1 << 30) else NAN
  wall_s, startup_s = wall_seconds(workdir, train)
  return RunRecord(name=os.path.basename(os.path.normpath(workdir)), workdir=workdir, point=point,
                   task=exp.task_name, n_passes=exp.sleep.n_passes, status=status, num_steps=num_steps,
                   steps=steps, tokens=tokens, flops_per_step=exp.train.batch_size * seq.train,
                   wall_s=wall_s, result=result, curve=curve, depth_name=exp.task.depth_name, epochs=epochs,
                   startup_s=startup_s,
                   eval_seed=exp.train.seed if exp.train.eval_seed is None else exp.train.eval_seed)


def read_runs(root: str) -> list[RunRecord]:
  """Every run directory under ``root`` with a ``sweep_point.json`` and a config, by name."""
  out = []
  if not os.path.isdir(root):
    return out
  for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if os.path.isfile(os.path.join(d, POINT_FILE)):
      rec = read_run(d)
      if rec is not None:
        out.append(rec)
  return out


def run_rows(rec: RunRecord) -> list[dict]:
  """The table rows of one run (none without an evaluation)."""
  if not rec.result:
    return []
  base = {"task": rec.task, "variant": rec.variant, "n_passes": rec.n_passes, "seed": rec.seed,
          "eval_seed": rec.eval_seed,
          "tokens": rec.tokens, "steps": rec.steps, "train_flops": rec.train_flops, "wall_s": rec.wall_s,
          "train_depth": rec.train_depth, "status": rec.status, "run": rec.name, "startup_s": rec.startup_s}
  return eval_rows(rec.result, base)


def _depth_order(d):
  return (1, 0) if d == "all" else (0, d)


def summarize(rows: Iterable[Mapping], value: str = "accuracy") -> list[dict]:
  """Aggregates over seeds: one dict per (variant, train_depth, depth), in first-seen variant order.

  Returns:
    Dicts with ``variant``, ``train_depth``, ``depth``, ``mean``, ``seeds``
    (``{seed: value}``), ``n``, ``stderr`` (over seeds; with a single seed its
    binomial standard error), ``stderr_kind`` ("seeds", "binomial" or ""),
    and the means of ``majority`` and ``chance`` over the group's runs.
  """
  groups: dict[tuple, list[Mapping]] = {}
  for r in rows:
    groups.setdefault((r["variant"], r.get("train_depth", ""), r["depth"]), []).append(r)
  variants = list(dict.fromkeys((k[0], k[1]) for k in groups))
  out = []
  for variant, td in variants:
    for key in sorted((k for k in groups if (k[0], k[1]) == (variant, td)), key=lambda k: _depth_order(k[2])):
      rs = sorted(groups[key], key=lambda r: r["seed"])
      seeds = {r["seed"]: _number(r.get(value)) for r in rs}
      vals = [v for v in seeds.values() if math.isfinite(v)]
      mean = sum(vals) / len(vals) if vals else NAN
      if len(vals) >= 2:
        se, kind = seed_stderr(vals), "seeds"
      elif len(vals) == 1 and value == "accuracy":
        se = next((_number(r.get("stderr")) for r in rs if math.isfinite(_number(r.get(value)))), NAN)
        kind = "binomial" if math.isfinite(se) else ""
      else:
        se, kind = NAN, ""
      mean_of = lambda col: _mean(_number(r.get(col)) for r in rs)
      out.append({"variant": variant, "train_depth": td, "depth": key[2], "mean": mean, "seeds": seeds,
                  "n": len(vals), "stderr": se, "stderr_kind": kind, "majority": mean_of("majority"),
                  "chance": mean_of("chance")})
  return out


def _mean(values) -> float:
  v = [x for x in values if math.isfinite(x)]
  return sum(v) / len(v) if v else NAN


def write_csv(rows: Sequence[Mapping], path: str) -> str:
  """Writes ``rows`` with :data:`COLUMNS` (NaN as an empty cell); returns ``path``."""
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: "" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, "") for k in COLUMNS})
  return path


def read_csv(path: str) -> list[dict]:
  """Rows of a results CSV with numbers parsed (empty cells NaN; "all" and names kept)."""
  rows = []
  with open(path) as f:
    for r in csv.DictReader(f):
      row = {}
      for k, v in r.items():
        if v == "":
          row[k] = NAN if k not in ("train_depth",) else ""
          continue
        try:
          row[k] = int(v)
        except ValueError:
          try:
            row[k] = float(v)
          except ValueError:
            row[k] = v
      rows.append(row)
  return rows


def _fmt(v, spec=".3f") -> str:
  return format(v, spec) if _finite(v) else "-"


def _fmt_flops(v) -> str:
  return format(v, ".3g") if _finite(v) else "-"


def baselines(rows: Iterable[Mapping]) -> dict[str, dict]:
  """Per baseline ("majority", "chance"): ``{depth: mean over the distinct eval sets}`` and their count.

  A baseline depends on the eval examples only, so each eval set (each
  ``eval_seed``) counts once, however many runs were scored on it: with one
  eval set for the whole comparison the value is that set's own.

  Returns:
    ``{"majority": {"values": {depth: value}, "eval_sets": k}, "chance": ...}``
    (a baseline no row carries is left out).
  """
  out = {}
  for name in ("majority", "chance"):
    per_set: dict = {}
    for r in rows:
      v = _number(r.get(name))
      if math.isfinite(v):
        per_set.setdefault(r["depth"], {}).setdefault(r.get("eval_seed", r.get("seed")), v)
    if per_set:
      out[name] = {"values": {d: _mean(vals.values()) for d, vals in per_set.items()},
                   "eval_sets": max(len(vals) for vals in per_set.values())}
  return out


def baseline_label(name: str, eval_sets: int) -> str:
  """``*majority*``, or ``*majority* (mean of k eval sets)`` when the runs were scored on ``k > 1`` sets."""
  return f"*{name}*" + (f" (mean of {eval_sets} eval sets)" if eval_sets > 1 else "")


def accuracy_table(summary: Sequence[Mapping], rows: Sequence[Mapping], *, depth_name: str = "depth",
                   depths: Sequence | None = None) -> list[str]:
  """Markdown lines: the baselines, then accuracy per variant x depth over seeds.

  Args:
    summary: :func:`summarize`'s output for accuracy (its variants are the rows).
    rows: the run rows it summarises (for the baselines, see :func:`baselines`).
    depth_name: the task's depth knob (column headers).
    depths: the columns (default: every depth of ``summary``, then "all").
  """
  if depths is None:
    depths = sorted({s["depth"] for s in summary}, key=_depth_order)
  head = lambda d: "all" if d == "all" else f"{depth_name}={d}"
  lines = ["| variant | " + " | ".join(head(d) for d in depths) + " |", "|---|" + "---|" * len(depths)]
  for name, b in baselines(rows).items():
    lines.append(f"| {baseline_label(name, b['eval_sets'])} | "
                 + " | ".join(_fmt(b["values"].get(d, NAN)) for d in depths) + " |")
  keyed = {}
  for s in summary:
    keyed.setdefault((s["variant"], s["train_depth"]), {})[s["depth"]] = s
  for (variant, td), cells in keyed.items():
    label = variant + (f" (train {depth_name}={td})" if td not in ("", None) else "")
    out = []
    for d in depths:
      s = cells.get(d)
      if s is None or not s["n"]:
        out.append("-")
        continue
      mark = " b" if s["stderr_kind"] == "binomial" else ""
      se = f" ± {_fmt(s['stderr'])}{mark}" if _finite(s["stderr"]) else ""
      seeds = " ".join(_fmt(v) for v in s["seeds"].values())
      out.append(f"{_fmt(s['mean'])}{se} [{seeds}]")
    lines.append(f"| {label} | " + " | ".join(out) + " |")
  return lines


def markdown(summary: Sequence[Mapping], records: Sequence[RunRecord], *, depth_name: str = "depth",
             title: str = "Sweep", rows: Sequence[Mapping] | None = None) -> str:
  """The sweep's Markdown report: accuracy per variant x depth over seeds, then one line per run.

  Args:
    summary: :func:`summarize`'s output for accuracy.
    records: the runs.
    depth_name: the task's depth knob (column headers).
    title: the heading.
    rows: the runs' rows (default: read from ``records``), for the baselines.
  """
  rows = [row for r in records for row in run_rows(r)] if rows is None else rows
  lines = [f"# {title}", ""]
  n_done = sum(r.status == "done" for r in records)
  n_sets = len({r.eval_seed for r in records})
  lines.append(f"{len(records)} runs, {n_done} finished, scored on {n_sets} eval set{'s' * (n_sets != 1)} "
               "(one per eval seed; a baseline is the mean over them, each set once). Cells: mean over seeds ± its "
               "standard error [every seed's value]; with one seed, ± is the binomial standard error of that run "
               "(marked b). Partial runs count with their latest evaluation.")
  lines += ["", *accuracy_table(summary, rows, depth_name=depth_name)]
  lines += ["", "## Runs", "", "wall s: the run's processes, in brackets the part before their first train step "
            "(start-up and compile).", "",
            "| run | variant | N | seed | eval seed | status | steps | tokens | train FLOPs | wall s | epochs | "
            "accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    acc = _number(r.result.get("accuracy")) if r.result else NAN
    startup = f" ({_fmt(r.startup_s, '.0f')})" if _finite(r.startup_s) else ""
    lines.append(f"| {r.name} | {r.variant} | {r.n_passes} | {r.seed} | {r.eval_seed} | {r.status} | "
                 f"{r.steps}/{r.num_steps} | {r.tokens} | {_fmt_flops(r.train_flops)} | "
                 f"{_fmt(r.wall_s, '.0f')}{startup} | {_fmt(r.epochs, '.2f')} | {_fmt(acc)} |")
  return "\n".join(lines) + "\n"


SETTINGS_FILES = ("eval_n_passes.json", "eval_halting.json")


def sleep_settings(workdir: str) -> dict[str, dict]:
  """``{label: evaluation result}`` of a run evaluated at other sleep settings by ``launch.eval``.

  Read from ``eval_n_passes.json`` (``--n_passes``: labels ``N=<k>``) and
  ``eval_halting.json`` (``--halt_tol``: ``N=<k>`` for its fixed ``N`` and
  ``tol=<x>`` for adaptive sleep); the latter wins where both hold one ``N``.
  Fixed ``N`` first (ascending), then tolerances (descending: fewest passes
  first). Empty when the run has neither file.
  """
  fixed, adaptive = {}, {}
  path = os.path.join(workdir, SETTINGS_FILES[0])
  if os.path.exists(path):
    fixed.update({int(n): r for n, r in _read_json(path).get("results", {}).items()})
  path = os.path.join(workdir, SETTINGS_FILES[1])
  if os.path.exists(path):
    d = _read_json(path)
    fixed.update({int(n): r for n, r in d.get("fixed", {}).items()})
    adaptive.update({float(t): r for t, r in d.get("adaptive", {}).items()})
  out = {f"N={n}": {"sleep/passes": float(n), **r} for n, r in sorted(fixed.items())}
  out.update({f"tol={t:g}": r for t, r in sorted(adaptive.items(), reverse=True)})
  return out


def sleep_settings_markdown(records: Sequence[RunRecord], *, depth_name: str = "depth") -> str:
  """Per variant, each checkpoint at other sleep settings: the mean over seeds [every seed].

  One table per variant whose runs were evaluated by ``launch.eval
  --n_passes`` / ``--halt_tol`` (see :func:`sleep_settings`): a row per
  setting with the mean passes run per sleeping window (wake pass included),
  the accuracy at the deepest depth and over all depths, and the majority
  baseline. "" when no run has such an evaluation.
  """
  groups: dict[str, list[tuple[int, dict]]] = {}
  for rec in records:
    settings = sleep_settings(rec.workdir)
    if settings:
      groups.setdefault(rec.variant, []).append((rec.seed, settings))
  if not groups:
    return ""
  cell = lambda vals, spec=".3f": (f"{_fmt(_mean(vals), spec)} [{' '.join(_fmt(v, spec) for v in vals)}]"
                                   if vals else "-")
  out = ["# Each checkpoint at other sleep settings", "",
         "`launch.eval --n_passes=... --halt_tol=...` on the sweep's runs: `N=<k>` is a fixed N, `tol=<x>` adaptive "
         "sleep at that tolerance. Mean over seeds [every seed, in seed order]; passes are per sleeping window, the "
         "wake pass included.", ""]
  for variant, runs in groups.items():
    runs.sort(key=lambda x: x[0])
    deepest = max((d for _, st in runs for r in st.values() for d in tables.depths(r)), default=None)
    key = "" if deepest is None else f"/depth={deepest}"
    labels = list(dict.fromkeys(lbl for _, st in runs for lbl in st))
    col = f"{depth_name}={deepest}" if deepest is not None else "deepest"
    out += [f"## {variant} (seeds {', '.join(str(s) for s, _ in runs)})", "",
            f"| setting | mean passes | {col} | all |", "|---|---|---|---|"]
    for lbl in labels:
      got = [st[lbl] for _, st in runs if lbl in st]
      vals = lambda k: [v for v in (_number(r.get(k)) for r in got) if _finite(v)]
      out.append(f"| {lbl} | {cell(vals('sleep/passes'), '.2f')} | {cell(vals('accuracy' + key))} | "
                 f"{cell(vals('accuracy'))} |")
    base = [st[labels[0]] for _, st in runs if labels[0] in st]  # baselines depend on the data only
    majority = lambda k: _mean([_number(r.get(k)) for r in base])
    out += [f"| *majority* | | {_fmt(majority('majority' + key))} | {_fmt(majority('majority'))} |", ""]
  return "\n".join(out)


def curves(records: Sequence[RunRecord], axis: str) -> dict[str, dict[int, list[tuple[float, float]]]]:
  """``{variant: {seed: [(x, accuracy)]}}`` from the runs' eval records, ``x`` = "tokens" or "flops"."""
  if axis not in ("tokens", "flops"):
    raise ValueError(f"axis must be 'tokens' or 'flops', got {axis!r}")
  out: dict[str, dict[int, list]] = {}
  for r in records:
    label = r.variant + (f" (train {r.train_depth})" if r.train_depth not in ("", None) else "")
    pts = [(tok if axis == "tokens" else step * r.flops_per_step, acc) for step, tok, acc in r.curve]
    if pts:
      out.setdefault(label, {})[r.seed] = pts
  return out


def draw(root: str, rows: Sequence[Mapping], records: Sequence[RunRecord], *, depth_name: str = "depth"):
  """The sweep's figures in ``root``; returns the paths written (a figure without data is skipped)."""
  import logging

  from launch import plotting

  majority = baselines(rows).get("majority", {}).get("values", {}).get("all", NAN)
  depth_rows = [dict(r, variant=r["variant"] + (f" (train {r['train_depth']})"
                                                 if r.get("train_depth") not in ("", None) else "")) for r in rows]
  makers = {
      "accuracy_vs_depth.png": lambda: plotting.plot_depth_by_variant(depth_rows, depth_name=depth_name),
      "accuracy_vs_tokens.png": lambda: plotting.plot_seed_curves(
          curves(records, "tokens"), xlabel="training tokens", baseline=majority),
      "accuracy_vs_flops.png": lambda: plotting.plot_seed_curves(
          curves(records, "flops"), xlabel="training FLOPs (analytic)", baseline=majority),
  }
  paths = []
  for name, make in makers.items():
    try:
      paths.append(plotting.save(make(), os.path.join(root, name)))
    except ValueError as e:
      logging.warning("skipped %s: %s", name, e)
  return paths
