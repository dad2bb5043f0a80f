"""Where one training step's time goes: hybrid N = 1, N = 4 and a plain transformer of the same size.

  python -m launch.bench train [--quick] [--preset=paper] [--batch_size=32] [--rounds=5] [--steps=4]
      [--config=launch/configs/rule110_small.py] [--no-profile]

Every variant is the trainer's own jitted, data-parallel step
(``sleep_jax.train.parallel.make_data_parallel_train_step``) on the same model
config, trained on batches drawn once up front (data generation is timed
separately, as host work). ``--preset`` replaces the config file's task by a
preset of the same task, whole (default ``paper``: the paper's Rule 110 shapes,
4 states of 24 bits, T = 100, L = 24); ``--preset=''`` keeps the config's task.

(1) Throughput. The variants' steps run interleaved, round by round (each
    round times ``--steps`` steps of every variant), so load on a shared
    machine hits them alike; medians over rounds, of wall-clock and of process
    CPU time. Ratios: tokens/s against the transformer (target for hybrid
    N = 1: >= 0.9) and step time against N = 1 beside the analytic training
    FLOP ratio (``sleep_jax/cost.py``; target for N = 4: time ratio /
    FLOP ratio <= 1.15).

(2) Breakdown, from a ``jax.profiler`` trace of the compiled step: every
    executed XLA thunk's self time (its duration less that of the thunks
    nested in it, e.g. a while loop's body), summed per category. A thunk's
    category comes from the Python stack recorded in its HLO metadata
    (forward and backward ops keep the stack of the forward op): the innermost
    frame in ``sleep_jax/ops/gated_delta`` or ``nn/gated_deltanet.py`` is GDN,
    ``nn/attention.py`` / ``nn/rope.py`` attention, ``nn/mlp.py`` MLP,
    ``model.py`` the embedding, output head, block pre-norms and residuals,
    ``windowed.py`` / ``consolidate.py`` the loss and the window / pass loop,
    ``cost.py`` the step's compute accounting, ``optax`` the optimizer, and
    ``train/step.py`` the step's own glue (gradient norm, finite guards,
    metrics). Profiling adds a fixed cost per thunk, so the shares of many
    small thunks are overstated a little. Host rows are measured directly:
    the Python dispatch of one step (call to return, queue empty), the cost of
    reading the metrics back after every step instead of every 16
    (``TrainConfig.sync_every``), and the trainer's per-step data work (draw,
    schedule check, ``shard_batch``), which overlaps the device's step when
    dispatch is asynchronous.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import importlib.util
import json
import linecache
import os
import re
import statistics
import tempfile
import time

# Innermost matching frame wins; frames in nn/norms.py are skipped so a norm counts towards its caller.
# jax records only frames outside jax / flax / optax, so an nnx.Linear counts towards the module calling it.
CATEGORIES = (
    ("GDN", ("sleep_jax/ops/gated_delta/", "sleep_jax/nn/gated_deltanet.py")),
    ("attention", ("sleep_jax/nn/attention.py", "sleep_jax/nn/rope.py")),
    ("MLP", ("sleep_jax/nn/mlp.py",)),
    ("embed/head/norms/res", ("sleep_jax/model.py",)),
    ("loss + window loop", ("sleep_jax/windowed.py", "sleep_jax/consolidate.py")),
    ("cost accounting", ("sleep_jax/cost.py",)),
    ("step glue", ("sleep_jax/train/",)),
)
SKIPPED_FRAMES = ("sleep_jax/nn/norms.py", "sleep_jax/array_typing.py")
# Lines of the train step that run the optimizer (optax's frames are not recorded).
STEP_FILE = "sleep_jax/train/step.py"
OPTIMIZER_LINES = ("tx.update", "apply_updates", "keep(", "tree.norm")
OTHER = "other"


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def variant_config(path: str, preset: str, n_passes: int, plain: bool, batch_size: int, sleep: dict | None = None):
  """The config file's ConfigDict with the task preset, N, model kind, batch size and sleep fields of one variant."""
  cfg = _load_config(path)
  if preset:
    cfg.task_preset = preset
    for key in cfg.task_config:  # the preset whole: drop the fields the config file set over its own
      cfg.task_config[key] = None
  cfg.sleep.n_passes = n_passes
  cfg.sleep.update(sleep or {})
  cfg.plain_transformer = plain
  if batch_size:
    cfg.train.batch_size = batch_size
  return cfg


@contextlib.contextmanager
def separate_projections(on: bool = True):
  """While active (and ``on``), GDN blocks trace one matmul per projection, as before the fused one.

  The compiled step keeps what it was traced with, so a variant built inside
  this context runs the old projections for the whole benchmark.
  """
  from sleep_jax.nn import gated_deltanet
  fused = gated_deltanet.fused_linear
  if on:
    gated_deltanet.fused_linear = lambda x, layers, dtype: [layer(x) for layer in layers]
  try:
    yield
  finally:
    gated_deltanet.fused_linear = fused


# -- one variant ------------------------------------------------------------------------------------
class Variant:
  """A compiled train step of one config, its state and a few batches."""

  def __init__(self, name: str, cfg, n_batches: int = 4):
    import jax
    from launch import experiment
    from launch import sweep_flops
    from sleep_jax.train import optimizer as opt_lib
    from sleep_jax.train import parallel
    from sleep_jax.train import state as state_lib

    self.name = name
    exp = experiment.experiment_from_config(cfg)
    spec = experiment.build_run_spec(exp)
    self.exp, self.spec = exp, spec
    mesh = parallel.make_data_mesh(exp.train.num_devices)
    self.mesh = mesh
    opt = opt_lib.make_optimizer(exp.train.optimizer, exp.train.num_steps)
    graphdef, state = state_lib.create_train_state(spec.model_factory, opt.tx, exp.train.seed)
    self.params = state_lib.count_params(state.params)
    state = parallel.replicate(state, mesh)
    step = parallel.make_data_parallel_train_step(spec.loss_fn, opt, graphdef, mesh)
    self.data = spec.train_data()
    self.batches = [parallel.shard_batch(next(self.data), mesh) for _ in range(n_batches)]
    t0 = time.perf_counter()
    self.compiled = step.lower(state, self.batches[0]).compile()
    self.state, m = self.compiled(state, self.batches[0])
    jax.block_until_ready(m)
    self.compile_s = time.perf_counter() - t0
    self.i = 0
    self.seq_len = exp.task.seq_len(exp.task_config)
    self.tokens = exp.train.batch_size * self.seq_len
    self.train_flops = sweep_flops.experiment_flops(exp).train  # per sequence
    self.wall: list[float] = []
    self.cpu: list[float] = []

  def run(self, steps: int, sync_every: int = 16):
    """Runs ``steps`` steps, reading metrics back every ``sync_every``; returns the last metrics."""
    import jax
    m = None
    for k in range(steps):
      self.state, m = self.compiled(self.state, self.batches[self.i % len(self.batches)])
      self.i += 1
      if (k + 1) % sync_every == 0:  # several CPU devices deadlock with many collective steps in flight
        jax.device_get(m["loss"])
    jax.block_until_ready(m)
    return m

  def timed(self, steps: int, sync_every: int = 16) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    self.run(steps, sync_every)
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps

  def dispatch_s(self, repeats: int) -> float:
    """Median time for one step call to return, with nothing queued before it."""
    import jax
    out = []
    for _ in range(repeats):
      jax.block_until_ready(self.state)
      t0 = time.perf_counter()
      self.state, m = self.compiled(self.state, self.batches[self.i % len(self.batches)])
      out.append(time.perf_counter() - t0)
      self.i += 1
      jax.block_until_ready(m)
    return statistics.median(out)

  def host_data_s(self, repeats: int) -> float:
    """Median time of the trainer's per-step data work: draw, schedule check, ``shard_batch``."""
    from sleep_jax.train import parallel
    out = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      parallel.shard_batch(next(self.data), self.mesh)
      out.append(time.perf_counter() - t0)
    return statistics.median(out)


# -- trace breakdown --------------------------------------------------------------------------------
def _frame_chains(hlo: str) -> dict[int, list[tuple[str, int]]]:
  """Stack frame id -> ``(file, line)`` from the innermost frame out, from an HLO module's text.

  The text lists ``FileNames``, ``FileLocations`` and ``StackFrames``; a
  frame's ``parent_frame_id`` is one more than its parent's id (0: none).
  """
  section = lambda name: hlo.split("\n" + name + "\n", 1)[1].split("\n\n", 1)[0] if name in hlo else ""
  files = {int(i): f for i, f in re.findall(r'^(\d+) "([^"]*)"$', section("FileNames"), re.M)}
  locations = {int(i): (files.get(int(f), ""), int(line)) for i, f, line in
               re.findall(r"^(\d+) \{file_name_id=(\d+) function_name_id=\d+ line=(\d+)", section("FileLocations"),
                          re.M)}
  frames = {int(i): (int(loc), int(parent)) for i, loc, parent in
            re.findall(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", section("StackFrames"), re.M)}
  chains = {}
  for fid in frames:
    chain, cur = [], fid
    while cur in frames and len(chain) <= len(frames):
      loc, parent = frames[cur]
      chain.append(locations.get(loc, ("", 0)))
      cur = parent - 1
    chains[fid] = chain
  return chains


def categorise(chain: list[tuple[str, int]]) -> str:
  """The category of a stack of ``(file, line)`` (innermost frame first); see :data:`CATEGORIES`."""
  fallback = OTHER
  for path, line in chain:
    if any(s in path for s in SKIPPED_FRAMES):
      continue
    if path.endswith(STEP_FILE):
      # optax's own frames are not recorded; the step's line that calls it is
      # (maybe outside a lambda of the step's own).
      if any(t in linecache.getline(path, line) for t in OPTIMIZER_LINES):
        return "optimizer"
      fallback = "step glue"
      continue
    for name, patterns in CATEGORIES:
      if any(p in path for p in patterns):
        return name
  return fallback


def instruction_categories(hlo: str) -> dict[str, str]:
  """HLO instruction name -> category.

  A fusion without a stack frame of its own takes its fused computation's
  (the root's, else the first instruction's with one); an instruction with
  no frame at all takes its first categorised operand's category, else
  :data:`OTHER`.
  """
  chains = _frame_chains(hlo)
  frame_of = lambda text: (m := re.search(r"stack_frame_id=(\d+)", text)) and int(m.group(1))
  computation_frame = {}
  for comp, body in re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S):
    roots = [ln for ln in body.splitlines() if ln.lstrip().startswith("ROOT ")]
    computation_frame[comp] = next((f for f in map(frame_of, roots + body.splitlines()) if f), None)
  out = {}
  for name, rest in re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = ([^\n]*)", hlo, re.M):
    fid = frame_of(rest)
    if not fid and (called := re.search(r"calls=%([\w.\-]+)", rest)):
      fid = computation_frame.get(called.group(1))
    if fid:
      out[name] = categorise(chains.get(fid, []))
    else:  # e.g. a dot an XLA pass rebuilt without metadata: its first categorised operand's
      operands = re.findall(r"%([\w.\-]+)", rest.split("),", 1)[0])
      out[name] = next((out[o] for o in operands if out.get(o, OTHER) != OTHER), OTHER)
  return out


def _self_times(events: list[dict]) -> list[tuple[str, float]]:
  """(name, self time in us) of complete events, nesting resolved per thread."""
  by_tid = collections.defaultdict(list)
  for e in events:
    by_tid[(e.get("pid"), e.get("tid"))].append(e)
  out = []
  for evs in by_tid.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
    stack: list[list] = []  # [name, end, self]
    for e in evs:
      ts, dur = e["ts"], e.get("dur", 0.0)
      while stack and stack[-1][1] <= ts:
        out.append((stack[-1][0], stack[-1][2]))
        stack.pop()
      if stack:
        stack[-1][2] -= min(dur, stack[-1][1] - ts)
      stack.append([e["name"], ts + dur, dur])
    out.extend((s[0], s[2]) for s in stack)
  return out


def trace_breakdown(v: Variant, steps: int) -> dict[str, float]:
  """Seconds per step by category, from a ``jax.profiler`` trace of ``steps`` steps.

  Each thunk's time per step is its fastest execution's self time in the
  trace times its executions per step: on a shared machine a thunk's wall
  time includes whatever preempted it, its fastest run does not.
  """
  import jax
  cats = instruction_categories(v.compiled.as_text())
  v.run(2)  # warm
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      v.run(steps, sync_every=1)
    paths = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
      raise RuntimeError(f"jax.profiler wrote no perfetto trace under {d}")
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_thunk = collections.defaultdict(list)
  for name, self_us in _self_times([e for e in events if e.get("ph") == "X" and e.get("name") in cats]):
    per_thunk[name].append(self_us)
  if not per_thunk:
    raise RuntimeError("no profiled XLA thunk matched an HLO instruction of the step; the trace format changed?")
  totals = collections.Counter()
  for name, times in per_thunk.items():
    totals[cats[name]] += min(times) * 1e-6 * len(times) / steps
  return dict(totals)


# -- main -------------------------------------------------------------------------------------------
def _fmt_ms(s: float) -> str:
  return f"{1e3 * s:.1f}"


def main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.bench train", description=__doc__.splitlines()[0])
  p.add_argument("--config", default="launch/configs/rule110_small.py")
  p.add_argument("--preset", default="paper", help="the task's preset, whole ('': the config file's task)")
  p.add_argument("--batch_size", type=int, default=32, help="0: the config's")
  p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  p.add_argument("--steps", type=int, default=4, help="steps per variant per round")
  p.add_argument("--trace_steps", type=int, default=5, help="steps in the profiler trace")
  p.add_argument("--no-profile", dest="profile", action="store_false", help="throughput only")
  p.add_argument("--quick", action="store_true", help="2 rounds of 2 steps, 3 traced steps")
  p.add_argument("--before", action="store_true",
                 help="also time the step without the lean paths (fuse_unslept=False, unroll=False) in the same run")
  args = p.parse_args(argv)
  if args.quick:
    args.rounds, args.steps, args.trace_steps = 2, 2, 3
  for flag in ("rounds", "steps", "trace_steps"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  import jax

  specs = [("hybrid N=1", 1, False, {}, False), ("hybrid N=4", 4, False, {}, False),
           ("transformer", 1, True, {}, False)]
  if args.before:
    # The step as it was before the lean path, measured in the same run: the window loop at N = 1 and
    # rolled pass / window scans at N = 4, and N = 1 with one matmul per GDN projection.
    specs += [("N=1 loop", 1, False, dict(fuse_unslept=False, unroll=False), False),
              ("N=4 rolled", 4, False, dict(fuse_unslept=False, unroll=False), False),
              ("N=1 sep proj", 1, False, {}, True)]
  variants = []
  for name, n, plain, sleep, separate in specs:
    with separate_projections(separate):
      variants.append(Variant(name, variant_config(args.config, args.preset, n, plain, args.batch_size, sleep)))
    print(f"compiled {name} in {variants[-1].compile_s:.1f} s", flush=True)
  for v in variants:
    v.run(2)
  for _ in range(args.rounds):
    for v in variants:
      w, c = v.timed(args.steps)
      v.wall.append(w)
      v.cpu.append(c)
  base, n4, tf = variants[:3]
  exp = base.exp
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"\n(1) train step, {args.config} preset {args.preset or exp.task_config.__class__.__name__}: "
        f"T={base.seq_len} L={exp.sleep.window} batch {exp.train.batch_size}, d={exp.model.d_model} "
        f"x{len(exp.model.block_types)} blocks, remat windows/passes {exp.sleep.remat_windows}/"
        f"{exp.sleep.remat_passes}, unroll {exp.sleep.unroll}, fuse_unslept {exp.sleep.fuse_unslept}; backend {jax.default_backend()} x{jax.device_count()}; medians of "
        f"{args.rounds} interleaved rounds x {args.steps} steps; load average {load:.1f}")
  print(f"{'variant':<12} {'params':>7} {'compile s':>9} {'ms/step':>8} {'cpu ms':>7} {'tokens/s':>9} "
        f"{'vs tf':>6} {'cpu vs tf':>9} {'t/t(N=1)':>8} {'FLOPs/FLOPs(N=1)':>16} {'t/FLOP ratio':>12}")
  med = lambda xs: statistics.median(xs)
  for v in variants:
    time_ratio, cpu_ratio = med(v.wall) / med(base.wall), med(v.cpu) / med(base.cpu)
    flop_ratio = v.train_flops / base.train_flops
    print(f"{v.name:<12} {v.params:>7} {v.compile_s:>9.1f} {_fmt_ms(med(v.wall)):>8} {_fmt_ms(med(v.cpu)):>7} "
          f"{v.tokens / med(v.wall):>9.0f} {med(tf.wall) / med(v.wall):>6.2f} {med(tf.cpu) / med(v.cpu):>9.2f} "
          f"{time_ratio:>8.2f} {flop_ratio:>16.2f} {time_ratio / flop_ratio:>12.2f}")
  print(f"targets: hybrid N=1 tokens/s vs transformer >= 0.90 (wall {med(tf.wall) / med(base.wall):.2f}, "
        f"cpu {med(tf.cpu) / med(base.cpu):.2f}); N=4 time ratio / FLOP ratio <= 1.15 "
        f"(wall {med(n4.wall) / med(base.wall) / (n4.train_flops / base.train_flops):.2f}, "
        f"cpu {med(n4.cpu) / med(base.cpu) / (n4.train_flops / base.train_flops):.2f})")
  if not args.profile:
    return 0

  rows = {}
  for v in variants:
    device = trace_breakdown(v, args.trace_steps)
    sync_w = med([v.timed(args.steps, sync_every=1)[0] for _ in range(2)])
    async_w = med([v.timed(args.steps)[0] for _ in range(2)])
    rows[v.name] = (device, {"dispatch": v.dispatch_s(5), "metrics sync every step": max(sync_w - async_w, 0.0),
                             "data (overlapped)": v.host_data_s(5)}, med(v.wall))
  names = [c for c, _ in CATEGORIES[:5]] + ["optimizer"] + [c for c, _ in CATEGORIES[5:]] + [OTHER]
  print(f"\n(2) where the step's time goes (ms per step): XLA thunk self time from a jax.profiler trace of "
        f"{args.trace_steps} step(s), by the source file of each op's stack; host rows timed directly")
  print(f"{'':<24}" + "".join(f"{v.name:>20}" for v in variants))
  for c in names:
    if any(rows[v.name][0].get(c, 0.0) for v in variants):
      cells = []
      for v in variants:
        dev = rows[v.name][0]
        x, tot = dev.get(c, 0.0), sum(dev.values())
        cells.append(f"{_fmt_ms(x):>12} ({100 * x / tot:>3.0f}%)")
      print(f"{c:<24}" + "".join(cells))
  print(f"{'device total':<24}" + "".join(f"{_fmt_ms(sum(rows[v.name][0].values())):>12}{'':>8}" for v in variants))
  for h in ("dispatch", "metrics sync every step", "data (overlapped)"):
    print(f"{'host: ' + h:<24}" + "".join(f"{_fmt_ms(rows[v.name][1][h]):>12}{'':>8}" for v in variants))
  print(f"{'step (wall, timed above)':<24}" + "".join(f"{_fmt_ms(rows[v.name][2]):>12}{'':>8}" for v in variants))
  return 0
