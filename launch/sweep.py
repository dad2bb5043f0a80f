r"""Sweeps one config over variants (sleep passes N and controls) and seeds; one table and figures.

  python -m launch.sweep --config=launch/configs/rule110_small.py --workdir=workdirs/r110 \
      --variants=n1,n2,n4,n1_compute,replay4,deep4,nrand4,transformer --seeds=0,1,2 --parallel=2 \
      [--tokens=6.5e6] [--fixed_data=20000] [--config.train.eval_every=100]
  python -m launch.sweep --workdir=workdirs/r110 --report    # tables and figures only, no training
  python -m launch.sweep ... --dry_run                       # the plan: runs, steps, tokens, FLOPs

Variants (``--variants``, comma-separated):

* ``n<K>``: ``N = K`` sleep passes (``n1`` is the plain hybrid).
* ``n1_compute`` (or ``n1_compute<K>``): ``N = 1`` trained for as many
  training FLOPs as ``N = K`` from more steps (``K`` defaults to the largest
  ``N`` of the sweep's ``n<K>`` / ``replay<K>`` variants). The step multiplier
  is the ratio of the analytic training FLOPs per sequence
  (``sleep_jax/cost.py``); more steps also means more tokens.
* ``replay<K>``: ``N = K`` with ``sleep.replay = True`` (every sleep pass
  re-reads the window; same FLOPs as ``n<K>``).
* ``deep<K>``: ``N = 1`` with ``K`` times the layers (the layout repeated, the
  alternating default when the config leaves it empty).
* ``nrand<K>``: randomised ``N``: each training step draws ``N`` uniformly
  from ``1..K`` (``sleep.n_passes_train``, deterministic in seed and step);
  evaluation runs ``N = K``. Its training FLOPs are the draw's expectation.
* ``transformer``: the all-attention baseline that sees the whole sequence.

The majority and chance baselines are not runs: they come from each
evaluation's ``majority`` / ``chance`` keys and stand beside the accuracies.

Other axes: ``--seeds`` (``config.train.seed``: initialisation and data),
``--tokens`` (``num_steps = ceil(tokens / (batch_size * T))``, training
tokens as the trainer counts them), ``--fixed_data`` (a finite train set of
that many examples, repeated for as many epochs as the steps need, for every
variant), ``--train_depths`` (one run per training depth). ``--config.*``
overrides apply to every run, and so do JAX's flags (``--jax_*``, see
``launch/cli.py``).

Runs. Each point trains in ``<workdir>/<variant>[_d<depth>]_s<seed>`` as a
separate process (``launch.sweep_run`` on the point's fully resolved config,
``sweep_config.json``), ``--parallel`` at a time. On CPU each process is held
to one core (``--one_core_per_run``, the default): pinned with ``taskset``
to its own core when ``taskset`` exists and this process may use at least
``--parallel`` cores (``SLEEP_JAX_NO_PIN=1`` turns pinning off), and XLA /
BLAS told to use one thread. Re-running the sweep skips finished runs (their
``eval.json`` holds the final step), resumes interrupted ones from their
checkpoints, and refuses a run directory whose config differs from the
point's (a changed ``--tokens`` would otherwise resume on a different
schedule). A failed run does not stop the others; its log is
``<run dir>/train.log``.

Results (rebuilt from the run directories after every sweep, and by
``--report``): ``results.csv`` (one row per run and depth plus depth "all":
accuracy, majority, chance, count, stderr, loss, tokens, steps, train_flops,
wall_s; see ``launch/sweep_results.py``), ``results.md`` (per variant and
depth the mean over seeds ± its standard error, every seed's value, the
baselines; one line per run), and ``accuracy_vs_depth.png``,
``accuracy_vs_tokens.png``, ``accuracy_vs_flops.png`` (the latter two from the
runs' eval records: set ``--config.train.eval_every`` for curves with more
than the final point). Runs evaluated by ``launch.eval --n_passes`` /
``--halt_tol`` add ``sleep_settings.md``: per variant, each setting's mean
passes and accuracy, mean over seeds with every seed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

from launch import cli
from launch import sweep_results as results_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a launch/configs/*.py file.")
_WORKDIR = cli.define_path("workdir", None, "Sweep root directory (one sub-directory per run).")
_VARIANTS = flags.DEFINE_list("variants", ["n1", "n2", "n4"],
                              "n<K>, n1_compute[<K>], replay<K>, deep<K>, nrand<K>, transformer (see the module doc).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "config.train.seed values (initialisation and data).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time, each its own process.")
_TOKENS = flags.DEFINE_float("tokens", None, "Training-token budget per run (sets num_steps); default: the "
                             "config's num_steps.")
_FIXED_DATA = flags.DEFINE_integer("fixed_data", 0, "A finite train set of this many examples for every run "
                                   "(task_config.num_train_examples); 0: the task's default.")
_TRAIN_DEPTHS = flags.DEFINE_list("train_depths", [], "Training depths, one run each (empty: the config's range).")
_DEPTH_FIELDS = flags.DEFINE_list("depth_fields", [],
                                  "task_config fields set to each training depth (default per task).")
_ONE_CORE = flags.DEFINE_bool("one_core_per_run", True,
                              "Pin each run to one core (taskset) and one XLA/BLAS thread; off: runs use "
                              "all threads (GPU/TPU, or --parallel=1 on a free machine).")
_REPORT = flags.DEFINE_bool("report", False, "Only rebuild results.csv/md and the figures from the run "
                            "directories under --workdir (no training; --config not needed).")
_REPORT_DIR = cli.define_path("report_dir", None, "With --report: write the files here instead of --workdir "
                              "(the committed demo keeps its runs in results/rule110_demo/runs and its tables one "
                              "level up).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the planned runs (steps, tokens, FLOPs, status) and exit.")

# task_config fields that pin the depth knob of each task to one value.
DEPTH_FIELDS = {"rule110": ("t_min", "t_max"), "gsm_math": ("op_min", "op_max"), "depo": ("k_max",)}
NO_PIN_ENV = "SLEEP_JAX_NO_PIN"
# XLA:CPU and BLAS thread settings of a one-core run.
ONE_THREAD_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# TrainConfig fields that do not change what a run computes: a run directory
# that differs from its point only in these is resumed, not refused.
BOOKKEEPING_FIELDS = ("progress", "log_every", "checkpoint_every", "max_to_keep", "sync_every", "eval_every")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- variants and points ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
  """What one variant changes in the config.

  Attributes:
    name: the name given in ``--variants``.
    n_passes: sleep passes ``N``.
    replay: ``sleep.replay`` (sleep passes re-read the window).
    depth_multiplier: the layers are this many times the config's.
    plain_transformer: the all-attention baseline.
    compute_match: ``K``: train for the FLOPs of the ``N = K`` run (more
      steps); ``None``: the sweep's step count.
    n_passes_train: training draws ``N`` per step from these (``None``:
      every step runs ``n_passes``).
  """
  name: str
  n_passes: int = 1
  replay: bool = False
  depth_multiplier: int = 1
  plain_transformer: bool = False
  compute_match: int | None = None
  n_passes_train: tuple[int, ...] | None = None


_VARIANT_RE = re.compile(r"^(?:(n)(\d+)|(n1_compute)(\d*)|(replay)(\d+)|(deep)(\d+)|(transformer)|(nrand)(\d+))$")
_KNOWN = "n<K>, n1_compute[<K>], replay<K>, deep<K>, nrand<K>, transformer"


def parse_variants(names: Sequence[str]) -> list[Variant]:
  """Parses ``--variants``.

  Raises:
    ValueError: an unknown or repeated name, ``n1_compute`` without a larger
      ``N`` to match, or a multiplier < 1.
  """
  names = [n.strip() for n in names if n.strip()]
  if not names:
    raise ValueError("--variants is empty")
  if len(set(names)) != len(names):
    raise ValueError(f"--variants repeats a name: {names}")
  parsed = []
  for name in names:
    m = _VARIANT_RE.match(name)
    if not m:
      raise ValueError(f"unknown variant {name!r}; known: {_KNOWN}")
    parsed.append((name, m))
  largest = max([int(m.group(2)) for _, m in parsed if m.group(1)] +
                [int(m.group(6)) for _, m in parsed if m.group(5)], default=1)
  out = []
  for name, m in parsed:
    if m.group(1):
      out.append(Variant(name, n_passes=int(m.group(2))))
    elif m.group(3):
      k = int(m.group(4)) if m.group(4) else largest
      if k <= 1:
        raise ValueError(f"{name}: no N > 1 to match; add n<K> with K > 1 or write n1_compute<K>")
      out.append(Variant(name, compute_match=k))
    elif m.group(5):
      k = int(m.group(6))
      if k < 1:
        raise ValueError(f"{name}: replay needs N >= 1")
      out.append(Variant(name, n_passes=k, replay=True))
    elif m.group(7):
      k = int(m.group(8))
      if k < 1:
        raise ValueError(f"{name}: the layer multiplier must be >= 1")
      out.append(Variant(name, depth_multiplier=k))
    elif m.group(10):
      k = int(m.group(11))
      if k < 2:
        raise ValueError(f"{name}: randomised N needs K >= 2 (nrand1 is n1)")
      out.append(Variant(name, n_passes=k, n_passes_train=tuple(range(1, k + 1))))
    else:
      out.append(Variant(name, plain_transformer=True))
  return out


def variant_sort_key(name: str) -> tuple:
  """Table order: n<K> by K, then n1_compute, replay, deep, nrand, transformer, anything else by name."""
  m = _VARIANT_RE.match(name)
  if not m:
    return (6, 0, name)
  for rank, (g, k) in enumerate(((1, 2), (3, 4), (5, 6), (7, 8), (10, 11), (9, None))):
    if m.group(g):
      return (rank, int(m.group(k) or 0) if k else 0, name)
  return (6, 0, name)  # pragma: no cover


def variant_overrides(variant: Variant, cfg) -> dict[str, object]:
  """The config fields a variant sets, ``{"section.field": value}`` (steps aside: see :func:`point_steps`)."""
  out: dict[str, object] = {"sleep.n_passes": variant.n_passes, "plain_transformer": variant.plain_transformer}
  if variant.replay or "replay" in cfg.sleep:
    out["sleep.replay"] = variant.replay
  if variant.n_passes_train is not None:
    out["sleep.n_passes_train"] = variant.n_passes_train
  if variant.depth_multiplier != 1:
    out["model.n_layers"] = int(cfg.model.n_layers) * variant.depth_multiplier
    layout = str(cfg.model.get("layout", "") or "")
    if layout:
      blocks = [b.strip() for b in layout.split(",") if b.strip()]
      out["model.layout"] = ",".join(blocks * variant.depth_multiplier)
  return out


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep.

  Attributes:
    variant: its variant.
    seed: ``config.train.seed``.
    train_depth: the training depth, or ``None`` (the config's range).
  """
  variant: Variant
  seed: int
  train_depth: int | None = None

  @property
  def name(self) -> str:
    """The run directory's name."""
    depth = "" if self.train_depth is None else f"_d{self.train_depth}"
    return f"{self.variant.name}{depth}_s{self.seed}"


def expand_points(variants: Sequence[Variant], seeds: Sequence[int], train_depths: Sequence[int] = ()) -> list[Point]:
  """Every (seed, training depth, variant), seed-major: the first seed of every variant runs first.

  Raises:
    ValueError: an empty or repeated seed list.
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("--seeds is empty")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds repeats a value: {seeds}")
  depths = [int(d) for d in train_depths] or [None]
  return [Point(v, s, d) for s in seeds for d in depths for v in variants]


def set_fields(cfg, values: Mapping[str, object]):
  """A deep copy of the ConfigDict ``cfg`` with ``{"a.b": value}`` set (new fields allowed).

  Raises:
    ValueError: a path through a missing section.
  """
  c = copy.deepcopy(cfg)
  with c.unlocked():
    for path, value in values.items():
      keys = path.split(".")
      node = c
      for k in keys[:-1]:
        if k not in node:
          raise ValueError(f"config has no section {'.'.join(keys[:-1])!r} (setting {path})")
        node = node[k]
      node[keys[-1]] = value
  return c


def steps_for_tokens(tokens: float, batch_size: int, seq_len: int) -> int:
  """``ceil(tokens / (batch_size * seq_len))``: the steps that train on ``tokens`` tokens.

  Raises:
    ValueError: a non-positive budget.
  """
  if not tokens > 0:
    raise ValueError(f"--tokens must be > 0, got {tokens}")
  return max(1, int(math.ceil(tokens / (batch_size * seq_len) - 1e-9)))


def base_overrides(point: Point, cfg, *, fixed_data: int = 0, depth_fields: Sequence[str] = ()) -> dict:
  """The point's fields apart from the step count: variant, seed, data, training depth."""
  out = {**variant_overrides(point.variant, cfg), "train.seed": point.seed, "train.progress": False}
  if fixed_data:
    if fixed_data < 1:
      raise ValueError(f"--fixed_data must be >= 1, got {fixed_data}")
    out["task_config.num_train_examples"] = int(fixed_data)
  if point.train_depth is not None:
    if not depth_fields:
      raise ValueError(f"no depth fields known for task {cfg.task!r}; pass --depth_fields")
    for field in depth_fields:
      if field not in cfg.task_config:
        raise ValueError(f"--depth_fields: task_config has no field {field!r}")
      out[f"task_config.{field}"] = int(point.train_depth)
  return out


def compute_multiplier(cfg, n_passes: int) -> float:
  """Training FLOPs per sequence of ``cfg`` with ``N = n_passes`` over those with ``N = 1``."""
  from launch import experiment
  from launch import sweep_flops
  flops = [sweep_flops.experiment_flops(experiment.experiment_from_config(
      set_fields(cfg, {"sleep.n_passes": n, "plain_transformer": False}).to_dict())) for n in (1, n_passes)]
  return sweep_flops.compute_multiplier(flops[0], flops[1])


def point_steps(point: Point, cfg, base_steps: int) -> int:
  """The point's ``num_steps``: ``base_steps``, times the compute multiplier for ``n1_compute``."""
  from launch import sweep_flops
  k = point.variant.compute_match
  if k is None:
    return int(base_steps)
  return sweep_flops.matched_steps(base_steps, compute_multiplier(cfg, k))


def point_config(point: Point, cfg, *, tokens: float | None = None, fixed_data: int = 0,
                 depth_fields: Sequence[str] = ()):
  """The point's resolved ConfigDict and the fields it changed.

  Args:
    point: the run.
    cfg: the sweep's config (file plus ``--config.*`` overrides).
    tokens: the training-token budget (``None``: the config's ``num_steps``).
    fixed_data: a finite train set size (0: the task's).
    depth_fields: task_config fields set to ``point.train_depth``.

  Returns:
    ``(config, {"a.b": value})``.
  """
  from launch import experiment
  values = base_overrides(point, cfg, fixed_data=fixed_data, depth_fields=depth_fields)
  c = set_fields(cfg, values)
  base_steps = int(c.train.num_steps)
  if tokens is not None:
    exp = experiment.experiment_from_config(c.to_dict())
    base_steps = steps_for_tokens(tokens, exp.train.batch_size, exp.task.seq_len(exp.task_config))
  values["train.num_steps"] = point_steps(point, c, base_steps)
  return set_fields(c, {"train.num_steps": values["train.num_steps"]}), values


# -- run directories ----------------------------------------------------------------------------------
def _comparable(cfg_dict: dict) -> dict:
  """What a run computes, from its config: the experiment's dataclasses less the bookkeeping fields."""
  from launch import experiment
  exp = experiment.experiment_from_config(copy.deepcopy(cfg_dict))
  train = {f.name: getattr(exp.train, f.name) for f in dataclasses.fields(exp.train)
           if f.name not in BOOKKEEPING_FIELDS}
  return {"task": exp.task_name, "task_config": exp.task_config, "model": exp.model, "sleep": exp.sleep,
          "plain_transformer": exp.plain_transformer, "train": train}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if a == b:
      continue
    if dataclasses.is_dataclass(a) and type(a) is type(b):
      out += _differences(dataclasses.asdict(a), dataclasses.asdict(b), f"{prefix}{key}.")
    elif isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


def config_conflict(run_dir: str, cfg_dict: dict) -> str | None:
  """Why ``run_dir`` cannot continue as this point (its config differs), or ``None``.

  Configs are compared as the experiments they build, so a run differing
  only in :data:`BOOKKEEPING_FIELDS` (or in how a field is spelled) is the
  same run.
  """
  path = os.path.join(run_dir, results_lib.CONFIG_FILE)
  if not os.path.exists(path):
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
      return None
  with open(path) as f:
    old = json.load(f)
  try:
    old_c = _comparable(old)
  except ValueError as e:
    return f"its config no longer builds ({e}); use another --workdir or remove the run directory"
  diff = _differences(old_c, _comparable(cfg_dict))
  if not diff:
    return None
  return (f"it was started with a different config ({'; '.join(diff)}); use another --workdir or remove the "
          "run directory")


def prepare_run(root: str, point: Point, cfg, values: dict, provenance: dict) -> tuple[str, str]:
  """Writes the point's ``sweep_point.json`` / ``sweep_config.json``; returns ``(run_dir, status)``.

  ``status`` is "done" (skip), "partial" (resume), "new", or "conflict: <why>"
  (the directory holds another config; nothing is written).
  """
  run_dir = os.path.join(os.path.abspath(root), point.name)
  cfg_dict = json.loads(json.dumps(cfg.to_dict(), default=list))
  conflict = config_conflict(run_dir, cfg_dict)
  if conflict:
    return run_dir, f"conflict: {conflict}"
  status = results_lib.run_status(run_dir, int(cfg.train.num_steps))
  os.makedirs(run_dir, exist_ok=True)
  point_rec = {"variant": point.variant.name, "seed": point.seed, "train_depth": point.train_depth,
               "overrides": values, **provenance}
  for name, obj in ((results_lib.POINT_FILE, point_rec), (results_lib.CONFIG_FILE, cfg_dict)):
    with open(os.path.join(run_dir, name), "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True, default=list)
  return run_dir, status


# -- processes ----------------------------------------------------------------------------------------
def pin_cores(parallel: int, one_core: bool) -> list[int] | None:
  """The core of each of ``parallel`` slots, or ``None`` when runs are not pinned.

  Pinned when ``one_core``, ``$SLEEP_JAX_NO_PIN`` is not "1", ``taskset`` is
  on the PATH and this process may run on at least ``parallel`` cores.
  """
  if not one_core or os.environ.get(NO_PIN_ENV, "") == "1" or shutil.which("taskset") is None:
    return None
  try:
    cores = sorted(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return None
  if len(cores) < parallel:
    print(f"note: {parallel} parallel runs on {len(cores)} cores: not pinned", flush=True)
    return None
  return cores[:parallel]


def child_env(one_core: bool, environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """The environment of a run's process: one XLA/BLAS thread when ``one_core``, the repo importable."""
  env = dict(os.environ if environ is None else environ)
  if one_core:
    xla = env.get("XLA_FLAGS", "").split()
    for flag in ONE_THREAD_XLA_FLAGS:
      if not any(f.split("=")[0] == flag.split("=")[0] for f in xla):
        xla.append(flag)
    env["XLA_FLAGS"] = " ".join(xla)
    env.update(ONE_THREAD_ENV)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
  return env


def run_command(run_dir: str, core: int | None, extra_args: Sequence[str] = ()) -> list[str]:
  """The command line that trains the run in ``run_dir`` (pinned to ``core`` if given)."""
  cmd = [sys.executable, "-m", "launch.sweep_run", f"--workdir={run_dir}", *extra_args]
  return (["taskset", "-c", str(core)] + cmd) if core is not None else cmd


def run_all(jobs: Sequence[tuple[str, str]], parallel: int, one_core: bool, extra_args: Sequence[str] = (),
            poll_s: float = 0.5) -> dict[str, int]:
  """Runs ``[(name, run_dir)]``, ``parallel`` at a time; returns ``{name: exit code}``.

  Each process appends its output to ``<run_dir>/train.log``. On an
  interruption the running processes are terminated (they record their wall
  time and resume on the next sweep).
  """
  if parallel < 1:
    raise ValueError(f"--parallel must be >= 1, got {parallel}")
  cores = pin_cores(parallel, one_core)
  env = child_env(one_core)
  pending, running, codes = list(jobs), {}, {}
  free = list(range(parallel))
  total, started = len(jobs), 0
  try:
    while pending or running:
      while pending and free:
        slot = free.pop(0)
        name, run_dir = pending.pop(0)
        core = None if cores is None else cores[slot]
        log = open(os.path.join(run_dir, "train.log"), "a")
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(run_command(run_dir, core, extra_args))}\n")
        log.flush()
        proc = subprocess.Popen(run_command(run_dir, core, extra_args), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        started += 1
        running[slot] = (name, run_dir, proc, log, time.perf_counter())
        print(f"[{started}/{total}] {name} started" + ("" if core is None else f" on core {core}"), flush=True)
      time.sleep(poll_s)
      for slot in list(running):
        name, run_dir, proc, log, t0 = running[slot]
        rc = proc.poll()
        if rc is None:
          continue
        log.close()
        del running[slot]
        free.append(slot)
        codes[name] = rc
        took = time.perf_counter() - t0
        if rc == 0:
          print(f"  {name} finished in {took:.0f} s", flush=True)
        else:
          print(f"  {name} FAILED (exit {rc}) after {took:.0f} s; last lines of {run_dir}/train.log:\n"
                + _tail(os.path.join(run_dir, "train.log")), flush=True)
  finally:
    for name, run_dir, proc, log, _ in running.values():
      proc.terminate()
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      log.close()
      print(f"  {name} stopped; re-run the sweep to resume it", flush=True)
  return codes


def _tail(path: str, n: int = 8) -> str:
  try:
    with open(path) as f:
      return "".join("    " + l for l in f.readlines()[-n:])
  except OSError:
    return ""


# -- the sweep ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """A point with its resolved config and where it stands.

  Attributes:
    point: the sweep point.
    run_dir: its directory.
    status: "done", "partial", "new" or "conflict: <why>".
    num_steps: its steps.
    tokens: its training tokens.
    train_flops: its analytic training FLOPs.
  """
  point: Point
  run_dir: str
  status: str
  num_steps: int
  tokens: int
  train_flops: float


def plan(cfg, root: str, points: Sequence[Point], *, tokens=None, fixed_data=0, depth_fields=(),
         provenance: dict | None = None, write: bool = True) -> list[PlannedRun]:
  """Resolves every point (and, with ``write``, writes its run directory's sweep files)."""
  from launch import experiment
  from launch import sweep_flops
  out = []
  for point in points:
    c, values = point_config(point, cfg, tokens=tokens, fixed_data=fixed_data, depth_fields=depth_fields)
    exp = experiment.experiment_from_config(c.to_dict())
    seq = sweep_flops.experiment_flops(exp)
    steps = exp.train.num_steps
    if write:
      run_dir, status = prepare_run(root, point, c, values, dict(provenance or {}))
    else:
      run_dir = os.path.join(os.path.abspath(root), point.name)
      cfg_dict = json.loads(json.dumps(c.to_dict(), default=list))
      conflict = config_conflict(run_dir, cfg_dict)
      status = f"conflict: {conflict}" if conflict else results_lib.run_status(run_dir, steps)
    out.append(PlannedRun(point, run_dir, status, steps, steps * exp.train.batch_size * seq.seq_len,
                          steps * exp.train.batch_size * seq.train))
  return out


def print_plan(runs: Sequence[PlannedRun]) -> None:
  print(f"{'run':<24} {'variant':<14} {'seed':>4} {'steps':>8} {'tokens':>12} {'train FLOPs':>12}  status")
  for r in runs:
    print(f"{r.point.name:<24} {r.point.variant.name:<14} {r.point.seed:>4} {r.num_steps:>8} {r.tokens:>12} "
          f"{r.train_flops:>12.3g}  {r.status}")


def report(root: str, *, quiet: bool = False, out_dir: str | None = None) -> tuple[list[dict], list[str]]:
  """Rebuilds ``results.csv``, ``results.md`` and the figures from the run directories under ``root``.

  Args:
    root: the sweep root (one directory per run).
    quiet: print nothing.
    out_dir: where the files go (default: ``root``).

  Returns:
    ``(rows, paths written)``.

  Raises:
    ValueError: no run directory of a sweep under ``root``.
  """
  records = results_lib.read_runs(root)
  if not records:
    raise ValueError(f"no sweep run directories (with {results_lib.POINT_FILE}) under {root!r}")
  records.sort(key=lambda r: (variant_sort_key(r.variant), str(r.train_depth), r.seed))
  rows = [row for r in records for row in results_lib.run_rows(r)]
  depth_name = records[0].depth_name
  tasks_seen = sorted({r.task for r in records})
  summary = results_lib.summarize(rows)
  out_dir = root if out_dir is None else out_dir
  csv_path = results_lib.write_csv(rows, os.path.join(out_dir, "results.csv"))
  md = results_lib.markdown(summary, records, depth_name=depth_name, title=f"Sweep: {', '.join(tasks_seen)}",
                            rows=rows)
  md_path = os.path.join(out_dir, "results.md")
  with open(md_path, "w") as f:
    f.write(md)
  figs = results_lib.draw(out_dir, rows, records, depth_name=depth_name) if rows else []
  written = [csv_path, md_path]
  settings_md = results_lib.sleep_settings_markdown(records, depth_name=depth_name)
  if settings_md:
    written.append(os.path.join(out_dir, "sleep_settings.md"))
    with open(written[-1], "w") as f:
      f.write(settings_md)
  if not quiet:
    print(md)
    if settings_md:
      print(settings_md)
    print("wrote", *written, *figs, sep="\n  ")
  return rows, [*written, *figs]


def run_sweep(cfg, root: str, variants: Sequence[str], seeds: Sequence[int], *, parallel: int = 1, tokens=None,
              fixed_data: int = 0, train_depths=(), depth_fields=(), one_core: bool = True,
              provenance: dict | None = None, extra_args: Sequence[str] = ()) -> int:
  """Trains every unfinished point, then writes the results; returns the number of failed or refused runs."""
  parsed = parse_variants(variants)
  fields = tuple(depth_fields) or DEPTH_FIELDS.get(str(cfg.task), ())
  points = expand_points(parsed, seeds, train_depths)
  os.makedirs(root, exist_ok=True)
  runs = plan(cfg, root, points, tokens=tokens, fixed_data=fixed_data, depth_fields=fields,
              provenance=provenance)
  print_plan(runs)
  refused = [r for r in runs if r.status.startswith("conflict")]
  for r in refused:
    print(f"refusing {r.point.name}: {r.status[len('conflict: '):]}", file=sys.stderr)
  todo = [(r.point.name, r.run_dir) for r in runs if r.status in ("new", "partial")]
  skipped = sum(r.status == "done" for r in runs)
  print(f"{len(todo)} to train, {skipped} finished, {len(refused)} refused; {parallel} at a time", flush=True)
  codes = run_all(todo, parallel, one_core, extra_args) if todo else {}
  failed = sorted(n for n, rc in codes.items() if rc != 0)
  report(root)
  if failed:
    print(f"failed: {', '.join(failed)} (logs: <run dir>/train.log)", file=sys.stderr)
  return len(failed) + len(refused)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cli.quiet_logging()
  try:
    if _REPORT.value:
      report(_WORKDIR.value, out_dir=_REPORT_DIR.value)
      return 0
    if _CONFIG.value is None:
      raise app.UsageError("--config is required (except with --report)")
    seeds = [int(s) for s in _SEEDS.value]
    fields = tuple(_DEPTH_FIELDS.value) or DEPTH_FIELDS.get(str(_CONFIG.value.task), ())
    flag = flags.FLAGS["config"]
    provenance = {"config_file": config_flags.get_config_filename(flag),
                  "config_overrides": {k: v for k, v in config_flags.get_override_values(flag).items()}}
    if _DRY_RUN.value:
      points = expand_points(parse_variants(_VARIANTS.value), seeds, _TRAIN_DEPTHS.value)
      print_plan(plan(_CONFIG.value, _WORKDIR.value, points, tokens=_TOKENS.value, fixed_data=_FIXED_DATA.value,
                      depth_fields=fields, write=False))
      return 0
    extra = []
    if cli.COMPILATION_CACHE_DIR.present:
      extra.append(f"--compilation_cache_dir={cli.COMPILATION_CACHE_DIR.value}")
    # JAX's flags given to the sweep (--jax_num_cpu_devices=4, ...) apply to every run.
    extra += [flags.FLAGS[name].serialize() for name in sorted(flags.FLAGS)
              if name.startswith("jax_") and flags.FLAGS[name].present]
    bad = run_sweep(_CONFIG.value, _WORKDIR.value, _VARIANTS.value, seeds, parallel=_PARALLEL.value,
                    tokens=_TOKENS.value, fixed_data=_FIXED_DATA.value, train_depths=_TRAIN_DEPTHS.value,
                    depth_fields=fields, one_core=_ONE_CORE.value, provenance=provenance, extra_args=extra)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted; re-run the same command to resume", file=sys.stderr)
    return 130
  return 1 if bad else 0


if __name__ == "__main__":
  cli.run(main)
