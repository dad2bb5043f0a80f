r"""Cost of the paper's configs: one jitted training step timed on CPU at a small batch, extrapolated.

  python -m launch.paper_cost [--batch=2] [--steps=3] [--n_passes=1,4] [--json=out.json]
  python -m launch.paper_cost --batch=2,gsm_math_paper=1   # T = 3300 at batch 1

For each paper config (``rule110_paper``, ``depo_paper``, ``gsm_math_paper``
with hard eviction and with ``--config.task_preset=paper_sliding``) and each
``N`` (``--n_passes`` plus the config's own), the experiment is built from the
same command-line overrides ``launch.train`` would parse (the printed command)
with only ``train.batch_size`` reduced; the training step is the trainer's
(``make_train_step`` jitted over the data mesh, as ``sleep_jax.train.loop``
builds it). After compiling, up to ``--steps`` steps are timed (fewer when a
step is slower than ``--budget_s`` allows).

The table reports, per row, the measured seconds per step in two clocks
(wall time, on the machine as loaded, and core time, the process's CPU
seconds over all its threads, which a loaded machine inflates far less), the
analytic training FLOPs per step (``sleep_jax.cost``: forward + backward,
remat not counted) at the CPU and at the paper batch, the achieved GFLOP per
core-second, the paper's steps and tokens, and two *extrapolations* of one
full run: the paper run's FLOPs at the measured CPU rate (FLOPs are linear in
the batch, so this is ``core-s/step x paper batch / CPU batch x steps``) and
at an assumed sustained accelerator rate (``--accel_tflops``). Neither is a
measurement of a full run.

Each row runs in its own process (niced with the caller) so a config that
runs out of memory, compiles for more than ``--compile_limit_s`` CPU seconds
or takes more than ``--row_limit_s`` is reported as such and the others still
run. Before a step runs, XLA's memory analysis of the compiled step is
compared with the memory available; a step that would not fit is reported
instead of run. Compiled steps go to the persistent compilation cache, as
with ``launch.train``, so a rerun skips most compiles (run with
``SLEEP_JAX_COMPILATION_CACHE=`` set empty for compile times that are compiles).

Peak memory: after the timed steps, the same step is lowered and compiled
at the *paper's* batch from abstract inputs (``jax.ShapeDtypeStruct``: the
state's shapes and shardings, the batch's with its leading axis set to the
paper batch), so nothing of paper size is allocated or run. Its peak is
XLA's compiled memory analysis, ``argument + output + temp - alias`` bytes
(:class:`StepMemory`): parameters, optimizer state and batch in, the new
state and metrics out, less the donated input buffers the outputs reuse,
plus scratch; generated code is not counted. This compile is held to
``--compile_limit_s`` too; past it the row keeps its timing and reports the
paper-batch figure as not measured. The figure is the CPU compiler's buffer
assignment, an estimate of what one step needs on an accelerator, not a
measurement there.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable, ContextManager, Sequence

from launch import cli

CONFIG_DIR = "launch/configs"
# The accelerator the estimate assumes. The models are small (d <= 768), run
# sequential scans (windows, sleep passes, the delta rule) and ship in float32,
# so a sustained 100 TFLOP/s (~10% of an H100's ~990 TFLOP/s dense bf16 peak)
# is the working assumption; 30-40% MFU would be ~300-400 TFLOP/s.
DEFAULT_ACCEL_TFLOPS = 100.0
ACCEL_NOTE = ("H100-class GPU, sustained {tflops:g} TFLOP/s (~{mfu:.0%} MFU of ~990 TFLOP/s dense bf16 peak; "
              "at 35% MFU (~350 TFLOP/s) divide by {ratio:.1f})")
_RESULT_TAG = "PAPER_COST_RESULT "


def _path_or_empty(value: str) -> str:
  """argparse type of an optional output path: absolute, or '' when unset."""
  return cli.user_path(value) or ""


@dataclasses.dataclass(frozen=True)
class PaperConfig:
  """One paper configuration as ``launch.train`` runs it.

  Attributes:
    label: the table's name for it.
    config: the config file's name in ``launch/configs`` (without ``.py``).
    overrides: ``--config.*`` overrides that select the variant (none for the
      file as shipped).
  """
  label: str
  config: str
  overrides: tuple[str, ...] = ()

  @property
  def path(self) -> str:
    return f"{CONFIG_DIR}/{self.config}.py"


PAPER_CONFIGS = (
    PaperConfig("rule110_paper", "rule110_paper"),
    PaperConfig("depo_paper", "depo_paper"),
    PaperConfig("gsm_math_paper (hard)", "gsm_math_paper"),
    PaperConfig("gsm_math_paper (sliding)", "gsm_math_paper", ("--config.task_preset=paper_sliding",)),
)


def run_overrides(paper: PaperConfig, n_passes: int, config_n_passes: int) -> list[str]:
  """The ``--config.*`` overrides of one row's run (``N`` only when it differs from the file's)."""
  out = list(paper.overrides)
  if n_passes != config_n_passes:
    out.append(f"--config.sleep.n_passes={n_passes}")
  return out


def workdir_name(paper: PaperConfig, n_passes: int) -> str:
  """``workdirs/<config>[_<preset>]_n<N>``."""
  preset = [o.split("=", 1)[1] for o in paper.overrides if o.startswith("--config.task_preset=")]
  return "workdirs/" + "_".join([paper.config, *preset, f"n{n_passes}"])


def train_command(paper: PaperConfig, n_passes: int, config_n_passes: int) -> str:
  """The exact ``python -m launch.train`` command of a paper run with ``N = n_passes``."""
  return " ".join(["python -m launch.train", f"--config={paper.path}",
                   *run_overrides(paper, n_passes, config_n_passes),
                   f"--workdir={workdir_name(paper, n_passes)}"])


def load_config(path: str, overrides: Sequence[str]):
  """The locked ConfigDict ``launch.train`` builds from ``--config=path`` and ``overrides``.

  Parsed by ml_collections' ``config_flags`` on a private flag set, as the
  ``launch.train`` command line is.
  """
  from absl import flags
  from ml_collections import config_flags
  argv = ["paper_cost", f"--config={path}", *overrides]
  fv = flags.FlagValues()
  # sys_argv: the overrides are found in the argv given here, not the process's.
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def _per(flops: float, seconds: float | None) -> float | None:
  return None if not seconds else flops / seconds


@dataclasses.dataclass(frozen=True)
class Extrapolation:
  """What one measured CPU step says about one paper run.

  Two clocks: wall time (what the step took on the machine as loaded) and
  core time (the process's CPU seconds summed over its threads, which the
  load inflates far less). The extrapolations scale the paper run's analytic
  FLOPs by the measured rate; FLOPs are linear in the batch, so this is the
  measured step time x paper batch / CPU batch x steps.

  Attributes:
    cpu_batch: the measured step's batch.
    paper_batch: the config's batch.
    cpu_step_s: measured wall seconds per step at ``cpu_batch`` (``None``:
      not measured).
    cpu_step_core_s: measured CPU core-seconds per step at ``cpu_batch``.
    seq_flops: analytic training FLOPs of one sequence.
    seq_len: tokens per sequence.
    num_steps: the config's training steps.
    accel_flops_per_s: the assumed sustained accelerator rate.
  """
  cpu_batch: int
  paper_batch: int
  cpu_step_s: float | None
  cpu_step_core_s: float | None
  seq_flops: float
  seq_len: int
  num_steps: int
  accel_flops_per_s: float

  @property
  def cpu_step_flops(self) -> float:
    return self.seq_flops * self.cpu_batch

  @property
  def paper_step_flops(self) -> float:
    return self.seq_flops * self.paper_batch

  @property
  def run_flops(self) -> float:
    return self.paper_step_flops * self.num_steps

  @property
  def run_tokens(self) -> int:
    return self.num_steps * self.paper_batch * self.seq_len

  @property
  def cpu_flops_per_s(self) -> float | None:
    """Analytic FLOPs per wall second, as measured on the loaded machine."""
    return _per(self.cpu_step_flops, self.cpu_step_s)

  @property
  def cpu_flops_per_core_s(self) -> float | None:
    """Analytic FLOPs per CPU core-second."""
    return _per(self.cpu_step_flops, self.cpu_step_core_s)

  @property
  def cpu_run_s(self) -> float | None:
    """Extrapolated wall seconds of the paper run on the machine as loaded."""
    rate = self.cpu_flops_per_s
    return None if rate is None else self.run_flops / rate

  @property
  def cpu_run_core_s(self) -> float | None:
    """Extrapolated CPU core-seconds of the paper run (an idle core's wall time)."""
    rate = self.cpu_flops_per_core_s
    return None if rate is None else self.run_flops / rate

  @property
  def accel_step_s(self) -> float:
    return self.paper_step_flops / self.accel_flops_per_s

  @property
  def accel_run_s(self) -> float:
    """Estimated: the paper run's FLOPs at the assumed accelerator rate."""
    return self.run_flops / self.accel_flops_per_s


def format_duration(seconds: float | None) -> str:
  """``"12 s"``, ``"4.2 min"``, ``"3.1 h"``, ``"2.5 d"``, ``"1.3 y"``; ``"-"`` for ``None``."""
  if seconds is None:
    return "-"
  for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.1f} {unit}"
  return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def format_count(x: float) -> str:
  """``1.2e9`` -> ``"1.2G"`` (k, M, G, T, P)."""
  for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= size:
      return f"{x / size:.3g}{unit}"
  return f"{x:.3g}"


def format_bytes(n: float | None) -> str:
  """``3.5 * 2**30`` -> ``"3.5 GiB"`` (KiB, MiB, GiB, TiB); ``"-"`` for ``None``."""
  if n is None:
    return "-"
  for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.3g} {unit}"
  return f"{n:.0f} B"


COLUMNS = (("config", "<"), ("N", ">"), ("paper B", ">"), ("CPU B", ">"), ("wall s/step", ">"),
           ("core-s/step", ">"), ("timed", ">"), ("FLOP/step CPU B", ">"), ("FLOP/step paper B", ">"),
           ("GFLOP/core-s", ">"), ("paper steps", ">"), ("paper tokens", ">"),
           ("compile core-s", ">"), ("peak mem CPU B", ">"), ("peak mem paper B", ">"),
           ("CPU run, core-time (extrapolated)", ">"), ("accel run (estimate)", ">"))


def table_row(row: dict) -> list[str]:
  """The table's cells of one result row (see :func:`make_row`)."""
  ex = Extrapolation(**row["extrapolation"])
  compile_core = f"{row['compile_core_s']:.0f}" if row.get("compile_core_s") is not None else "-"
  if row.get("error"):
    wall, core, timed, rate, cpu_run = "n/a", "n/a", "-", "-", "n/a"
  else:
    wall, core = f"{ex.cpu_step_s:.3g}", f"{ex.cpu_step_core_s:.3g}"
    timed = str(row["timed_steps"]) if row["timed_steps"] else "1*"
    rate, cpu_run = f"{ex.cpu_flops_per_core_s / 1e9:.1f}", format_duration(ex.cpu_run_core_s)
  # "-": not in the row (a result file from before the column, or a row that failed earlier);
  # "n/a": tried and not obtained (the reason is listed under the table).
  if row.get("paper_step_memory"):
    paper_mem = format_bytes(row["paper_step_memory"]["peak_bytes"])
  else:
    paper_mem = "n/a" if row.get("paper_memory_error") else "-"
  return [row["label"], str(row["n_passes"]), str(ex.paper_batch), str(ex.cpu_batch), wall, core, timed,
          format_count(ex.cpu_step_flops), format_count(ex.paper_step_flops), rate, f"{ex.num_steps:,}",
          format_count(ex.run_tokens), compile_core, format_bytes(row.get("step_bytes")), paper_mem, cpu_run,
          format_duration(ex.accel_run_s)]


def format_table(rows: Sequence[dict]) -> str:
  """Fixed-width table of result rows, then each row's error (if any) and its command."""
  cells = [[name for name, _ in COLUMNS]] + [table_row(r) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
  lines = []
  for k, c in enumerate(cells):
    lines.append("  ".join(f"{v:{a}{w}}" for v, (_, a), w in zip(c, COLUMNS, widths)).rstrip())
    if k == 0:
      lines.append("  ".join("-" * w for w in widths))
  notes = [f"  {r['label']} N={r['n_passes']}: {r['error']}" for r in rows if r.get("error")]
  notes += [f"  {r['label']} N={r['n_passes']} peak mem paper B: {r['paper_memory_error']}"
            for r in rows if r.get("paper_memory_error")]
  if notes:
    lines += ["", "not measured:", *notes]
  lines += ["", "commands (paper batch, as shipped):"]
  lines += [f"  {r['label']} N={r['n_passes']}: {r['command']}" for r in rows]
  return "\n".join(lines)


def header(*, accel_tflops: float, load: Sequence[float], cores: int, backend: str, cpus_allowed: int | None = None,
           nice: int | None = None) -> str:
  """What the numbers are and are not: measured, extrapolated, assumed; how loaded the CPU was.

  ``cpus_allowed`` (the cores the run was pinned to) and ``nice`` are said
  when known (result files from before they were recorded lack them).
  """
  mfu = accel_tflops / 990.0
  pinned = f"; this ran pinned to {cpus_allowed} of them" if cpus_allowed and cpus_allowed < cores else ""
  niced = f", at nice {nice}" if nice else ""
  return "\n".join([
      f"Paper configs: the trainer's step measured on {backend} ({cores} cores) at a reduced batch (CPU B).",
      f"The machine was loaded by other jobs (load average {min(load):.1f}-{max(load):.1f} on {cores} cores "
      f"during the measurements{pinned}{niced}): the numbers are rough.",
      "wall s/step: measured wall time per step as loaded. core-s/step: this process's CPU seconds per step (all "
      "its threads), which the load inflates far less; an idle machine takes between core-s/cores and core-s.",
      "FLOPs: analytic training FLOPs (sleep_jax.cost: forward + backward, remat not counted). "
      "GFLOP/core-s = FLOP/step CPU B / core-s/step.",
      "CPU run, core-time (extrapolated): the paper run's FLOPs (paper batch x paper steps) at the measured "
      "GFLOP/core-s, in core time (one idle core's wall time); not measured.",
      "accel run (estimate): the paper run's FLOPs at an assumed rate: "
      + ACCEL_NOTE.format(tflops=accel_tflops, mfu=mfu, ratio=350.0 / accel_tflops) + "; not measured. "
      "A small model's step (d = 256, T = 100) is bound by kernel launches and sequential scans more than by "
      "FLOPs: read its estimate as a lower bound.",
      "timed: steps timed after compile and one warm-up step (1*: only the first step after compile, "
      "which includes one-off overhead, timed because a step took longer than the time budget).",
      "peak mem: XLA's compiled memory analysis of one training step, argument + output + temp - alias bytes "
      "(state and batch in, new state and metrics out, less the donated buffers reused, plus scratch; code not "
      "counted), at the CPU batch (the step timed) and at the paper batch (compiled from abstract shapes, not "
      "run). The CPU compiler's buffer assignment: an estimate for an accelerator, not measured there. "
      "'-': not in the result (an older file, or the row failed first); n/a: tried, reason below.",
  ])


def commits_line(rows: Sequence[dict]) -> str:
  """Which code the rows measured: ``"code: commit abc (3 rows), not recorded (2 rows)"``."""
  counts = {}
  for r in rows:
    key = f"commit {r['commit']}" if r.get("commit") else "not recorded"
    counts[key] = counts.get(key, 0) + 1
  return "code measured: " + ", ".join(f"{k} ({n} row{'s' * (n != 1)})" for k, n in counts.items())


def report(doc: dict) -> str:
  """The header and the table of a result document (what ``--json`` writes)."""
  return (header(accel_tflops=doc["accel_tflops"], load=doc["load_average"], cores=doc["cores"],
                 backend=doc["backend"], cpus_allowed=doc.get("cpus_allowed"), nice=doc.get("nice"))
          + "\n" + commits_line(doc["rows"]) + "\n\n" + format_table(doc["rows"]))


def merge_reports(docs: Sequence[dict]) -> dict:
  """One result document from several runs' (rows in order, every load average kept).

  A row of the same config and ``N`` as an earlier one is a rerun: it takes
  the earlier row's place.

  Raises:
    ValueError: for no documents, or documents that assume different
      accelerator rates or ran on different machines.
  """
  if not docs:
    raise ValueError("no result documents to merge")
  for key in ("accel_tflops", "cores", "backend"):
    if len({json.dumps(d[key]) for d in docs}) > 1:
      raise ValueError(f"the documents differ in {key!r}: {[d[key] for d in docs]}")
  # Pinning and niceness are said only when every run shares them (older files lack them).
  shared = {key: docs[0].get(key) if len({json.dumps(d.get(key)) for d in docs}) == 1 else None
            for key in ("cpus_allowed", "nice")}
  rows = {}
  for row in (r for d in docs for r in d["rows"]):
    rows[row["label"], row["n_passes"]] = row  # a rerun keeps the first run's place in the order
  return {**docs[0], **shared, "cpu_batch": [d["cpu_batch"] for d in docs],
          "load_average": [x for d in docs for x in d["load_average"]], "rows": list(rows.values())}


def make_row(paper: PaperConfig, n_passes: int, *, config_n_passes: int, paper_batch: int, cpu_batch: int,
             seq_flops: float, seq_len: int, num_steps: int, accel_tflops: float, measured: dict) -> dict:
  """One JSON-able result row; ``measured`` is :func:`measure`'s result (or ``{"error": ...}``)."""
  ex = Extrapolation(cpu_batch=cpu_batch, paper_batch=paper_batch, cpu_step_s=measured.get("step_s"),
                     cpu_step_core_s=measured.get("step_core_s"), seq_flops=seq_flops, seq_len=seq_len,
                     num_steps=num_steps, accel_flops_per_s=accel_tflops * 1e12)
  row = {"label": paper.label, "config": paper.path, "n_passes": n_passes,
         "command": train_command(paper, n_passes, config_n_passes), "extrapolation": dataclasses.asdict(ex),
         "cpu_step_flops": ex.cpu_step_flops, "paper_step_flops": ex.paper_step_flops, "run_flops": ex.run_flops,
         "run_tokens": ex.run_tokens, "cpu_flops_per_s": ex.cpu_flops_per_s,
         "cpu_flops_per_core_s": ex.cpu_flops_per_core_s, "cpu_run_s_extrapolated_loaded": ex.cpu_run_s,
         "cpu_run_core_s_extrapolated": ex.cpu_run_core_s, "accel_step_s_estimate": ex.accel_step_s,
         "accel_run_s_estimate": ex.accel_run_s}
  row.update(measured)
  return row


# -- measuring (one process per row) ------------------------------------------------------------------
def _mem_available() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's compiled memory analysis of one step, in bytes.

  Attributes:
    argument_bytes: the inputs (state and batch).
    output_bytes: the outputs (new state and metrics).
    alias_bytes: outputs written into donated input buffers (counted in
      both of the above, held once).
    temp_bytes: scratch buffers, after XLA's liveness-based reuse.
    generated_code_bytes: the executable's code (not part of the peak).
  """
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int

  @property
  def peak_bytes(self) -> int:
    """``argument + output + temp - alias``: everything the step holds at once, at most."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @classmethod
  def of(cls, compiled) -> StepMemory | None:
    """The analysis of a ``jax.stages.Compiled``; ``None`` where the backend reports none."""
    try:
      m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend / version reports it)
      return None
    if m is None:
      return None
    return cls(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
               generated_code_bytes=int(m.generated_code_size_in_bytes))

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}


def abstract_step_args(state, batch: dict, batch_size: int) -> tuple:
  """``(state, batch)`` as ``jax.ShapeDtypeStruct``s, the batch's leading axis set to ``batch_size``.

  Shardings are kept, so the step lowers as it does on the arrays given.
  Every batch entry is split along its leading (batch) axis (``parallel.shard_batch``).
  """
  import jax
  struct = lambda x, shape: jax.ShapeDtypeStruct(shape, x.dtype, sharding=getattr(x, "sharding", None))
  return (jax.tree.map(lambda x: struct(x, x.shape), state),
          {k: struct(v, (batch_size, *v.shape[1:])) for k, v in batch.items()})


def step_memory_at_batch(step_fn, state, batch: dict, batch_size: int) -> StepMemory | None:
  """Peak memory of ``step_fn(state, batch)`` at ``batch_size``, compiled from abstract inputs, not run.

  Args:
    step_fn: the jitted step (``jax.jit`` output: has ``.lower``).
    state: the state (arrays or ``ShapeDtypeStruct``s).
    batch: one batch at any batch size (arrays or ``ShapeDtypeStruct``s).
    batch_size: the batch size to compile for.
  """
  return StepMemory.of(step_fn.lower(*abstract_step_args(state, batch, batch_size)).compile())


def _no_guard(on_limit: Callable[[str], dict]) -> ContextManager:
  del on_limit
  return contextlib.nullcontext()


def measure(path: str, overrides: Sequence[str], *, steps: int, budget_s: float, paper_batch: int | None = None,
            compile_guard: Callable[[Callable[[str], dict]], ContextManager] = _no_guard) -> dict:
  """Compiles and times the trainer's step of one config in this process.

  Args:
    path: the config file.
    overrides: ``--config.*`` overrides (the batch reduction included).
    steps: at most this many timed steps after one warm-up step.
    budget_s: stop timing once this much time has been spent on steps (the
      warm-up included); at least the warm-up step runs.
    paper_batch: afterwards, compile the same step at this batch from
      abstract inputs for its memory analysis (``None``: skip).
    compile_guard: ``compile_guard(on_limit)`` is a context manager around
      each lowering and compile; ``on_limit(reason)`` is the row's result
      should the guard cut the compile short.

  Returns:
    ``{"step_s", "step_core_s", "timed_steps", "compile_s", "compile_core_s",
    "first_step_s", "first_step_core_s", "step_bytes", "step_memory"}``
    (``*_s`` wall seconds, ``*_core_s`` this process's CPU seconds summed
    over its threads; ``step_bytes`` the peak of ``step_memory``, a
    :class:`StepMemory` as JSON, at the CPU batch), or ``{"error": ...}``
    when the step would not fit in memory or its loss was not finite; with
    ``paper_batch``, also ``"paper_step_memory"`` (with ``"paper_compile_s"``
    and ``"paper_compile_core_s"``) or ``"paper_memory_error"``.
  """
  import jax
  from launch import experiment
  from sleep_jax.train import loop
  from sleep_jax.train import parallel

  exp = experiment.experiment_from_config(load_config(path, overrides))
  spec = experiment.build_run_spec(exp)
  # The trainer's own step assembly (loop.train's), and its step 0's step.
  setup = loop.setup_training(spec, exp.train)
  mesh = setup.mesh
  state = parallel.replicate(setup.state, mesh)
  fn = setup.steps(0)
  it = spec.train_data()
  batches = [parallel.shard_batch(next(it), mesh) for _ in range(2)]
  clock = lambda: (time.perf_counter(), time.process_time())
  since = lambda t: (time.perf_counter() - t[0], time.process_time() - t[1])
  t0 = clock()
  with compile_guard(lambda why: {"error": why}):
    compiled = fn.lower(state, batches[0]).compile()
  compile_s, compile_core_s = since(t0)
  memory = StepMemory.of(compiled)
  need, have = (memory.peak_bytes if memory else None), _mem_available()
  result = {"compile_s": compile_s, "compile_core_s": compile_core_s, "step_bytes": need,
            "step_memory": memory.to_json() if memory else None}
  if need is not None and have is not None and need > 0.85 * have:
    result["error"] = (f"does not fit: the compiled step needs {need / 2**30:.1f} GiB, "
                       f"{have / 2**30:.1f} GiB available")
  else:
    t0 = clock()
    state, m = compiled(state, batches[0])
    jax.block_until_ready(m)
    first_s, first_core_s = since(t0)
    spent, timed, wall, core = first_s, 0, 0.0, 0.0
    while timed < steps and spent + (wall / timed if timed else first_s) <= budget_s:
      t0 = clock()
      state, m = compiled(state, batches[(timed + 1) % 2])
      jax.block_until_ready(m)
      dw, dc = since(t0)
      wall, core, spent, timed = wall + dw, core + dc, spent + dw, timed + 1
    if not bool(m["loss_finite"]):
      result["error"] = "the loss was not finite"
    else:
      result.update(step_s=wall / timed if timed else first_s, step_core_s=core / timed if timed else first_core_s,
                    timed_steps=timed, first_step_s=first_s, first_step_core_s=first_core_s)
  if paper_batch is not None:
    del compiled  # the CPU batch's executable is not needed while the paper batch's compiles
    t0 = clock()
    cut = lambda why: {**result, "paper_memory_error": f"{why} at the paper batch"}
    with compile_guard(cut):
      paper = step_memory_at_batch(fn, state, batches[0], paper_batch)
    paper_s, paper_core_s = since(t0)
    if paper is None:
      result["paper_memory_error"] = f"no memory analysis on {jax.default_backend()}"
    else:
      result.update(paper_step_memory=paper.to_json(), paper_compile_s=paper_s, paper_compile_core_s=paper_core_s)
  return result


def code_commit() -> str | None:
  """The git commit of the checkout this module runs from (``None`` outside a git checkout).

  Rows record it: the code a row measured is the code at the row's start
  (each row is its own process), which a shared checkout may move during a run.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def _measure_main(job: dict) -> int:
  from launch import cli
  commit = code_commit()  # before the library is imported
  cli.setup_compilation_cache()  # as launch.train: a rerun loads the compiled step
  cli.quiet_logging()
  limit = float(job["compile_limit_s"])

  @contextlib.contextmanager
  def compile_guard(on_limit: Callable[[str], dict]):
    # The limit is on CPU seconds (on a loaded machine wall time says little
    # about the config). XLA's compile cannot be interrupted: past the limit
    # a watchdog prints the row's result and ends the process.
    start, stop = time.process_time(), threading.Event()

    def watch():
      while not stop.wait(1.0):
        if time.process_time() - start > limit:
          result = {**on_limit(f"not compiled within {limit:.0f} CPU s"), "commit": commit}
          print(_RESULT_TAG + json.dumps(result), flush=True)
          os._exit(3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
      yield
    finally:
      stop.set()

  try:
    result = measure(job["path"], job["overrides"], steps=int(job["steps"]), budget_s=float(job["budget_s"]),
                     paper_batch=job.get("paper_batch"), compile_guard=compile_guard)
  except Exception as e:  # noqa: BLE001  (reported in the table; the other rows still run)
    first = str(e).splitlines()[0] if str(e) else ""
    result = {"error": f"{type(e).__name__}: {first}"[:300]}
  print(_RESULT_TAG + json.dumps({**result, "commit": commit}), flush=True)
  return 0


def _run_job(job: dict, timeout_s: float) -> dict:
  cmd = [sys.executable, "-m", "launch.paper_cost", "--_measure", json.dumps(job)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"error": f"no result within {timeout_s:.0f} wall s (setup, compile and steps, machine loaded)"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(_RESULT_TAG):
      return json.loads(line[len(_RESULT_TAG):])
  if proc.returncode < 0:
    why = " (out of memory?)" if -proc.returncode == 9 else ""
    return {"error": f"killed by signal {-proc.returncode}{why}"}
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def parse_n_passes(text: str) -> list[int]:
  """``"1,4"`` -> ``[1, 4]``.

  Raises:
    ValueError: for an empty list or an ``N`` below 1.
  """
  values = [int(x) for x in text.split(",") if x.strip()]
  if not values or min(values) < 1:
    raise ValueError(f"--n_passes must be a comma-separated list of N >= 1, got {text!r}")
  return values


def parse_batches(text: str) -> tuple[int, dict[str, int]]:
  """``"2,gsm_math_paper=1"`` -> ``(2, {"gsm_math_paper": 1})``: the CPU batch, and per config file.

  Raises:
    ValueError: for a batch below 1, no default batch, or a malformed entry.
  """
  default, per = None, {}
  for item in (x.strip() for x in text.split(",") if x.strip()):
    name, _, value = item.rpartition("=")
    try:
      batch = int(value)
    except ValueError:
      raise ValueError(f"--batch entries are N or config=N, got {item!r}") from None
    if batch < 1:
      raise ValueError(f"--batch must be >= 1, got {item!r}")
    if name:
      per[name] = batch
    else:
      default = batch
  if default is None:
    raise ValueError(f"--batch needs a default batch (e.g. '2,gsm_math_paper=1'), got {text!r}")
  return default, per


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.paper_cost", description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="2",
                 help="CPU batch, optionally per config file: '2,gsm_math_paper=1' (the paper's is the config's)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per row (at most)")
  p.add_argument("--n_passes", default="1,4", help="N to measure; the config's own N is added")
  p.add_argument("--configs", default="", help="comma-separated labels' config names to keep (default: all)")
  p.add_argument("--budget_s", type=float, default=240.0, help="time spent stepping per row (at least 1 step)")
  p.add_argument("--compile_limit_s", type=float, default=180.0,
                 help="CPU seconds (all threads) lowering and compiling one step may take")
  p.add_argument("--row_limit_s", type=float, default=3600.0,
                 help="wall seconds one row (its process: setup, compile, steps) may take")
  p.add_argument("--paper_memory", action=argparse.BooleanOptionalAction, default=True,
                 help="also compile each step at the paper batch (abstract inputs, not run) for its peak memory")
  p.add_argument("--accel_tflops", type=float, default=DEFAULT_ACCEL_TFLOPS,
                 help="assumed sustained accelerator TFLOP/s for the estimate")
  p.add_argument("--json", default="", type=_path_or_empty, help="also write the rows here")
  p.add_argument("--from_json", default="",
                 help="print the table of earlier --json files (comma-separated, merged in order; a row of the "
                      "same config and N in a later file replaces the earlier one); measures nothing")
  p.add_argument("--_measure", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._measure:
    return _measure_main(json.loads(args._measure))
  if args.from_json:
    docs = []
    for path in (cli.user_path(x) for x in args.from_json.split(",") if x.strip()):
      with open(path) as f:
        docs.append(json.load(f))
    try:
      doc = merge_reports(docs)
    except ValueError as e:
      p.error(str(e))
    print(report(doc))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    return 0
  try:
    n_list = parse_n_passes(args.n_passes)
    default_batch, config_batch = parse_batches(args.batch)
  except ValueError as e:
    p.error(str(e))
  if args.steps < 1:
    p.error("--steps must be >= 1")
  keep = {c.strip() for c in args.configs.split(",") if c.strip()}
  names = {pc.config for pc in PAPER_CONFIGS} | {pc.label for pc in PAPER_CONFIGS}
  unknown = sorted((keep | set(config_batch)) - names)
  if unknown:
    p.error(f"unknown paper config(s) {unknown}; known: {sorted({pc.config for pc in PAPER_CONFIGS})}")
  papers = [pc for pc in PAPER_CONFIGS if not keep or pc.config in keep or pc.label in keep]

  from launch import experiment, sweep_flops
  cli.quiet_logging()
  import jax
  load0 = os.getloadavg()[0]
  rows = []
  for paper in papers:
    shipped = load_config(paper.path, list(paper.overrides))
    own_n = int(shipped.sleep.n_passes)
    batch = config_batch.get(paper.config, default_batch)
    for n in sorted(set(n_list) | {own_n}):
      overrides = run_overrides(paper, n, own_n)
      exp = experiment.experiment_from_config(load_config(paper.path, overrides))
      flops = sweep_flops.experiment_flops(exp)
      job = {"path": paper.path, "overrides": overrides + [f"--config.train.batch_size={batch}"],
             "steps": args.steps, "budget_s": args.budget_s, "compile_limit_s": args.compile_limit_s,
             "paper_batch": exp.train.batch_size if args.paper_memory else None}
      print(f"measuring {paper.label} N={n} at batch {batch} ...", flush=True)
      t0 = time.perf_counter()
      measured = _run_job(job, timeout_s=args.row_limit_s)
      paper_mem = measured.get("paper_step_memory")
      print(f"  {time.perf_counter() - t0:.0f} s: "
            + (measured["error"] if "error" in measured else
               f"{measured['step_s']:.3g} s/step, {measured['step_core_s']:.3g} core-s/step "
               f"({measured['timed_steps']} timed); compile {measured['compile_s']:.0f} s, "
               f"{measured['compile_core_s']:.0f} core-s")
            + (f"; peak mem at batch {exp.train.batch_size}: {format_bytes(paper_mem['peak_bytes'])} "
               f"(compiled in {measured['paper_compile_core_s']:.0f} core-s)" if paper_mem else "")
            + (f"; peak mem at the paper batch: {measured['paper_memory_error']}"
               if measured.get("paper_memory_error") else ""), flush=True)
      rows.append(make_row(paper, n, config_n_passes=own_n, paper_batch=exp.train.batch_size, cpu_batch=batch,
                           seq_flops=flops.train, seq_len=flops.seq_len, num_steps=exp.train.num_steps,
                           accel_tflops=args.accel_tflops, measured=measured))
  load1 = os.getloadavg()[0]
  doc = {"cpu_batch": args.batch, "accel_tflops": args.accel_tflops, "load_average": [load0, load1],
         "cores": os.cpu_count() or 1, "cpus_allowed": len(os.sched_getaffinity(0)), "nice": os.nice(0),
         "backend": jax.default_backend(), "jax": jax.__version__, "rows": rows}
  print()
  print(report(doc))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(doc, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
