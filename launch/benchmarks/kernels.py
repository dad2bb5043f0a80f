"""Gated delta rule kernels, side by side: ``python -m launch.bench kernels [--quick] [--auto-table]``.

Times, in one process on the same inputs and interleaved round by round (so a
load change hits every row alike), the forward and forward+backward (the VJP
with cotangents on both outputs, i.e. the gradient of ``sum(o * do) +
sum(S * dS)`` with respect to q, k, v, log_alpha, beta and initial_state) of

* ``reference``: the per-token ``lax.scan`` oracle (its step rematerialised);
* ``naive-scan``: the same scan without rematerialisation, for context;
* ``chunked``: the default chunked form (one scan over chunks, the body holding
  all the chunk math, rematerialised), at the chunk size ``impl="auto"`` uses;
* ``chunked-c64``: the same at chunk 64;
* ``parallel`` / ``parallel+vjp``: the previous chunk-parallel form (all
  chunks' matmuls batched, then a scan over ``S' = D S + E``; autodiff or
  hand-written VJP), chunk 64;
* ``fla-naive-chunk``: flash-linear-attention's PyTorch
  ``naive_chunk_gated_delta_rule`` (chunk 64) when ``torch`` and ``fla`` are
  importable (``pip install torch fla-core``); otherwise the row says so;

each as wall-clock and process CPU time (medians). Then the achieved GFLOP/s of
``chunked`` on analytically counted FLOPs next to a large float32 matmul timed
in the same rounds, the ``impl="auto"`` table for short windows (``--auto-table``
measures it: fwd and fwd+bwd of every candidate per window length, and prints
the dict to paste into ``sleep_jax/ops/gated_delta/api.py``), and the Pallas
kernel (interpret mode on CPU) at a short length.

Targets (issue "speed where researchers wait"): chunked fwd+bwd >= 30% of the
matmul GFLOP/s on executed FLOPs; chunked fwd >= 3x the reference's fwd;
chunked fwd+bwd >= 3x fla's naive chunk.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.gated_delta import api
from sleep_jax.ops.gated_delta import chunked
from sleep_jax.ops.gated_delta import reference

# Training window shapes the auto table is measured on: (B, T, H, Dk, Dv).
AUTO_TABLE_SHAPES = ((128, 16, 2, 32, 32), (128, 24, 2, 32, 32), (128, 32, 2, 32, 32), (128, 64, 2, 32, 32),
                     (128, 75, 4, 64, 64))
AUTO_TABLE_CHUNKS = (8, 16, 32, 64)


def _numpy_inputs(b, t, h, dk, dv, seed=0):
  rng = np.random.default_rng(seed)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  args = (unit(rng.normal(size=(b, t, h, dk))), unit(rng.normal(size=(b, t, h, dk))),
          rng.normal(size=(b, t, h, dv)), -rng.uniform(0.0, 0.2, (b, t, h)), rng.uniform(0.0, 1.0, (b, t, h)),
          rng.normal(size=(b, h, dk, dv)))
  cts = (rng.normal(size=(b, t, h, dv)), rng.normal(size=(b, h, dk, dv)))
  return tuple(x.astype(np.float32) for x in args), tuple(x.astype(np.float32) for x in cts)


def _inputs(b, t, h, dk, dv, seed=0):
  args, cts = _numpy_inputs(b, t, h, dk, dv, seed)
  return tuple(jnp.asarray(x) for x in args), tuple(jnp.asarray(x) for x in cts)


def _naive_scan(q, k, v, la, be, s0):
  """The per-token scan without rematerialisation (the oracle minus its checkpoint)."""
  def step(s, xs):
    o, s = reference.gated_delta_step_reference(*xs, s)
    return s, o

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, la, be))
  final, o = jax.lax.scan(step, s0, xs)
  return jnp.moveaxis(o, 0, 1), final


def _chunked_rule(**kwargs):
  return lambda q, k, v, la, be, s0: chunked.gated_delta_rule_chunked(q, k, v, la, be, initial_state=s0, **kwargs)


def _rule(name, t):
  """The ``(q, k, v, la, be, s0) -> (o, S)`` function a row times."""
  if name == "reference":
    return lambda q, k, v, la, be, s0: gated_delta_rule(q, k, v, la, be, initial_state=s0, impl="reference")
  if name == "naive-scan":
    return _naive_scan
  if name == "chunked":
    return _chunked_rule(chunk_size=api.auto_choice(t, "cpu")[1] or 32)
  if name.startswith("chunked-c"):
    return _chunked_rule(chunk_size=int(name[len("chunked-c"):]))
  if name == "parallel":
    return _chunked_rule(chunk_size=64, form="parallel")
  if name == "parallel+vjp":
    return _chunked_rule(chunk_size=64, form="parallel", use_custom_vjp=True)
  if name == "pallas":
    return lambda q, k, v, la, be, s0: gated_delta_rule(q, k, v, la, be, initial_state=s0, impl="pallas")
  raise ValueError(name)


def jax_programs(rule, args, cts):
  """Two zero-argument callables: the jitted forward and forward+backward."""
  fwd = jax.jit(rule)

  @jax.jit
  def fwd_bwd(args, cts):
    out, vjp = jax.vjp(rule, *args)
    return out, vjp(cts)

  return (lambda: fwd(*args)), (lambda: fwd_bwd(args, cts))


def fla_programs(np_args, np_cts, chunk_size=64):
  """fla's PyTorch naive chunk rule as two callables, or a reason string."""
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("fla") is None:
    return "not importable (pip install torch fla-core to time it)"
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule  # pylint: disable=import-outside-toplevel
  except Exception as err:  # pylint: disable=broad-except
    return f"not importable ({type(err).__name__}: {err})"
  args = [torch.from_numpy(np.ascontiguousarray(x)) for x in np_args]
  cts = [torch.from_numpy(np.ascontiguousarray(x)) for x in np_cts]
  q, k, v, g, beta, s0 = args

  def fwd():
    with torch.no_grad():
      return naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size, initial_state=s0,
                                          output_final_state=True)

  def fwd_bwd():
    leaves = [x.detach().clone().requires_grad_(True) for x in args]
    o, s = naive_chunk_gated_delta_rule(*leaves[:5], chunk_size=chunk_size, initial_state=leaves[5],
                                        output_final_state=True)
    torch.autograd.backward([o, s], cts)
    return [x.grad for x in leaves]

  return fwd, fwd_bwd


def _block(x):
  if hasattr(x, "block_until_ready") or isinstance(x, (tuple, list, dict)):
    return jax.block_until_ready(x)
  return x


def time_call(fn):
  """(wall seconds, process CPU seconds) of one call, results ready."""
  w0, c0 = time.perf_counter(), time.process_time()
  _block(fn())
  return time.perf_counter() - w0, time.process_time() - c0


def time_rows(programs, rounds, repeats):
  """Times every program ``repeats`` times per round, round-robin over rows.

  Args:
    programs: ``{row: callable}``; each is called once untimed first (compile).
    rounds: interleaved rounds.
    repeats: calls per row per round.

  Returns:
    ``({row: median wall s}, {row: median CPU s}, {row: first-call wall s})``.
  """
  first = {name: time_call(fn)[0] for name, fn in programs.items()}
  walls = {name: [] for name in programs}
  cpus = {name: [] for name in programs}
  for _ in range(rounds):
    for name, fn in programs.items():
      for _ in range(repeats):
        w, c = time_call(fn)
        walls[name].append(w)
        cpus[name].append(c)
  med = lambda d: {k: float(np.median(v)) for k, v in d.items()}  # pylint: disable=unnecessary-lambda-assignment
  return med(walls), med(cpus), first


def scan_chunk_flops(b, t, h, dk, dv, chunk_size, base_block=chunked._BASE_BLOCK):  # pylint: disable=protected-access
  """Matmul FLOPs (2 per multiply-add) of the default chunked forward, counted analytically.

  Per chunk and head: ``K K^T``, ``Q K^T``, the pairwise decay sums (a
  ``C x C`` by ``C x C`` product), the block inverse, ``W``, ``Uw``, ``W S``,
  ``Qe S``, ``P U`` and ``Kd^T U``. Elementwise work is not counted.
  """
  c = max(1, min(chunk_size, t))
  n = -(-t // c)
  cp = 1 << max(c - 1, 0).bit_length()
  s0 = min(base_block, cp)
  inverse = (cp // s0) * 2 * s0 * s0 * (s0 - 1)   # Row substitution in the s0 x s0 blocks.
  s = s0
  while s < cp:
    inverse += (cp // (2 * s)) * 2 * (2 * s ** 3)
    s *= 2
  per_chunk = 2 * c * c * dk * 3 + 2 * c * c * dv * 2 + 2 * c * dk * dv * 3 + 2 * c ** 3 + inverse
  return b * h * n * per_chunk


def reference_flops(b, t, h, dk, dv):
  """Per token and head: decay K V, prediction 2 K V, write 2 K V, read 2 K V."""
  return 7 * b * t * h * dk * dv


def _matmul_program(size):
  a = jnp.asarray(np.random.default_rng(1).normal(size=(size, size)), jnp.float32)
  mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  return lambda: mm(a, a)


def _fmt(sec):
  return f"{1e3 * sec:9.2f}"


def long_shape_section(b, t, h, dk, dv, rounds, repeats, ref_repeats, matmul_size, with_fla=True):
  """The side-by-side table at one long shape; returns the figures as a dict."""
  args, cts = _inputs(b, t, h, dk, dv)
  np_args, np_cts = _numpy_inputs(b, t, h, dk, dv)
  c_auto = api.auto_choice(t, "cpu")[1] or 32
  names = ["reference", "naive-scan", "chunked", "chunked-c64", "parallel", "parallel+vjp"]
  progs_f, progs_g = {}, {}
  for name in names:
    progs_f[name], progs_g[name] = jax_programs(_rule(name, t), args, cts)
  fla = fla_programs(np_args, np_cts) if with_fla else "skipped (--skip-fla)"
  if not isinstance(fla, str):
    progs_f["fla-naive-chunk"], progs_g["fla-naive-chunk"] = fla
  progs = {}
  for name in progs_f:
    progs[name + " fwd"] = progs_f[name]
    progs[name + " fwd+bwd"] = progs_g[name]
  progs["matmul"] = _matmul_program(matmul_size)
  # The per-token scans are slow: fewer calls each round.
  slow = {n for n in progs if n.startswith(("reference", "naive-scan", "fla"))}
  walls, cpus, first = {}, {}, {}
  fast_progs = {k: v for k, v in progs.items() if k not in slow}
  slow_progs = {k: v for k, v in progs.items() if k in slow}
  # Interleave: alternate one round of the fast rows with one of the slow rows.
  w_all = {k: [] for k in progs}
  c_all = {k: [] for k in progs}
  for group in (fast_progs, slow_progs):
    for name, fn in group.items():
      first[name] = time_call(fn)[0]
  for _ in range(rounds):
    for group, reps in ((fast_progs, repeats), (slow_progs, ref_repeats)):
      for name, fn in group.items():
        for _ in range(reps):
          w, c = time_call(fn)
          w_all[name].append(w)
          c_all[name].append(c)
  walls = {k: float(np.median(v)) for k, v in w_all.items()}
  cpus = {k: float(np.median(v)) for k, v in c_all.items()}
  print(f"  {'row':<16s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'fwd cpu ms':>11s} {'f+b cpu ms':>11s}   first call (compile) s")
  for name in progs_f:
    f, g = name + " fwd", name + " fwd+bwd"
    print(f"  {name:<16s} {_fmt(walls[f])} {_fmt(walls[g]):>11s} {_fmt(cpus[f]):>11s} {_fmt(cpus[g]):>11s}   "
          f"{first[f]:.2f} / {first[g]:.2f}", flush=True)
  if isinstance(fla, str):
    print(f"  {'fla-naive-chunk':<16s} {fla}")
  mm_gflops = 2 * matmul_size ** 3 / walls["matmul"] / 1e9
  mm_gflops_cpu = 2 * matmul_size ** 3 / cpus["matmul"] / 1e9
  ch_f, ch_g = walls["chunked fwd"], walls["chunked fwd+bwd"]
  ref_f, ref_g = walls["reference fwd"], walls["reference fwd+bwd"]
  flops = scan_chunk_flops(b, t, h, dk, dv, c_auto)
  # Reverse mode: two products per forward product, plus the rematerialised
  # forward of every chunk: 4x the forward executed (3x of them useful).
  exec_fb = 4 * flops
  out = dict(shape=dict(B=b, T=t, H=h, Dk=dk, Dv=dv), chunk=c_auto, wall_s=walls, cpu_s=cpus,
             first_call_s=first, matmul_gflops=mm_gflops, chunked_fwd_flops=flops, fla=fla if isinstance(fla, str)
             else "timed")
  print(f"speed-up chunked (C={c_auto}) vs reference, wall: fwd {ref_f / ch_f:.2f}x (target >= 3x), "
        f"fwd+bwd {ref_g / ch_g:.2f}x;  CPU time: fwd {cpus['reference fwd'] / cpus['chunked fwd']:.2f}x, "
        f"fwd+bwd {cpus['reference fwd+bwd'] / cpus['chunked fwd+bwd']:.2f}x")
  pf, pg = walls["parallel fwd"], walls["parallel fwd+bwd"]
  print(f"speed-up chunked vs the previous parallel form (C=64): fwd {pf / ch_f:.2f}x, fwd+bwd {pg / ch_g:.2f}x")
  if "fla-naive-chunk fwd" in walls:
    ff, fg = walls["fla-naive-chunk fwd"], walls["fla-naive-chunk fwd+bwd"]
    print(f"speed-up chunked vs fla naive_chunk_gated_delta_rule (torch {_torch_version()}, C=64): "
          f"fwd {ff / ch_f:.2f}x, fwd+bwd {fg / ch_g:.2f}x (target >= 3x); CPU time: fwd+bwd "
          f"{cpus['fla-naive-chunk fwd+bwd'] / cpus['chunked fwd+bwd']:.2f}x")
  print(f"matmul {matmul_size}x{matmul_size} float32: {mm_gflops:.1f} GFLOP/s wall ({1e3 * walls['matmul']:.1f} ms), "
        f"{mm_gflops_cpu:.1f} GFLOP/s per CPU-second")
  print(f"chunked analytic FLOPs (C={c_auto}): fwd {flops / 1e9:.3f} GFLOP; fwd+bwd executed {exec_fb / 1e9:.3f} "
        f"GFLOP (4x fwd: rematerialised forward + two products per product), useful {3 * flops / 1e9:.3f}")
  f_rate, g_rate = flops / ch_f / 1e9, exec_fb / ch_g / 1e9
  print(f"chunked achieved (wall): fwd {f_rate:.1f} GFLOP/s = {100 * f_rate / mm_gflops:.1f}% of matmul; "
        f"fwd+bwd {g_rate:.1f} GFLOP/s executed = {100 * g_rate / mm_gflops:.1f}% of matmul (target >= 30%), "
        f"{100 * 0.75 * g_rate / mm_gflops:.1f}% on useful FLOPs")
  g_cpu = exec_fb / cpus["chunked fwd+bwd"] / 1e9
  print(f"chunked achieved (per CPU-second): fwd+bwd {g_cpu:.1f} GFLOP/s = {100 * g_cpu / mm_gflops_cpu:.1f}% of "
        f"the matmul's per-CPU-second rate")
  rf = reference_flops(b, t, h, dk, dv)
  print(f"reference analytic FLOPs: fwd {rf / 1e9:.3f} GFLOP (chunked / reference = {flops / rf:.2f}); "
        f"achieved fwd {rf / ref_f / 1e9:.2f} GFLOP/s")
  return out


def _torch_version():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    return torch.__version__
  except ImportError:
    return "?"


def auto_table_section(rounds, repeats, shapes=AUTO_TABLE_SHAPES, chunks=AUTO_TABLE_CHUNKS):
  """Times every candidate at every training window shape; returns the winners.

  The criterion is fwd+bwd process CPU time (what a training step on a busy,
  pinned core pays), wall-clock printed beside it.
  """
  table = {}
  print("impl='auto' table: fwd / fwd+bwd per candidate (wall ms; CPU ms), training window shapes")
  for b, t, h, dk, dv in shapes:
    args, cts = _inputs(b, t, h, dk, dv)
    cands = {"reference": (api.Impl.REFERENCE, None)}
    for c in chunks:
      eff = min(c, t)
      cands.setdefault(f"chunked-c{eff}", (api.Impl.CHUNKED, eff))
    progs = {}
    for name, (impl, c) in cands.items():
      rule = _rule("reference", t) if impl is api.Impl.REFERENCE else _chunked_rule(chunk_size=c)
      progs[name + " fwd"], progs[name + " fwd+bwd"] = jax_programs(rule, args, cts)
    walls, cpus, _ = time_rows(progs, rounds, repeats)
    best = min(cands, key=lambda n: cpus[n + " fwd+bwd"])
    cells = "  ".join(f"{n}: {_fmt(walls[n + ' fwd']).strip()}/{_fmt(walls[n + ' fwd+bwd']).strip()} "
                      f"({_fmt(cpus[n + ' fwd']).strip()}/{_fmt(cpus[n + ' fwd+bwd']).strip()})" for n in cands)
    current = api.auto_choice(t, "cpu")
    print(f"  B={b} T={t} H={h} D={dk}: {cells}\n    fastest fwd+bwd: {best}; the table in api.py picks "
          f"{current[0].value}{'' if current[1] is None else f' C={current[1]}'}", flush=True)
    table[next((key for key in sorted(api.AUTO_TABLE_CPU) if t <= key), t)] = cands[best]
  print("paste into api.py (AUTO_TABLE_CPU):")
  print("  {" + ", ".join(f"{t}: ({impl.value!r}, {c})" for t, (impl, c) in table.items()) + "}")
  return table


def print_auto_table():
  """The table currently in the code, as the benchmark prints it."""
  print("impl='auto' on CPU (api.AUTO_TABLE_CPU; T up to the key -> impl, chunk): " +
        ", ".join(f"T<={t}: {impl}{'' if c is None else f' C={c}'}" for t, (impl, c) in api.AUTO_TABLE_CPU.items())
        + f", longer: chunked C={api.LONG_CHUNK_CPU}")


def pallas_section(b, t, h, dk, dv, rounds, repeats):
  if importlib.util.find_spec("sleep_jax.ops.gated_delta.pallas") is None:
    print("pallas: skipped (sleep_jax/ops/gated_delta/pallas.py is not available)")
    return
  mode = "interpret mode" if jax.default_backend() == "cpu" else "compiled"
  print(f"pallas ({mode}, for information) at B={b} T={t} H={h} D={dk}:")
  args, cts = _inputs(b, t, h, dk, dv)
  progs = {}
  for name in ("reference", "chunked", "pallas"):
    progs[name + " fwd"], progs[name + " fwd+bwd"] = jax_programs(_rule(name, t), args, cts)
  walls, _, _ = time_rows(progs, rounds, repeats)
  for name in ("reference", "chunked", "pallas"):
    print(f"  {name:<12s} fwd {_fmt(walls[name + ' fwd'])} ms   fwd+bwd {_fmt(walls[name + ' fwd+bwd'])} ms")


def main(argv):
  parser = argparse.ArgumentParser(prog="python -m launch.bench kernels", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="B=2, T=512, H=2, one round, no auto table")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--seq", type=int, default=None)
  parser.add_argument("--heads", type=int, default=None)
  parser.add_argument("--dk", type=int, default=64)
  parser.add_argument("--dv", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
  parser.add_argument("--repeats", type=int, default=3, help="calls per fast row per round")
  parser.add_argument("--reference-repeats", type=int, default=1, help="calls per per-token row per round")
  parser.add_argument("--matmul-size", type=int, default=2048)
  parser.add_argument("--auto-table", action="store_true",
                      help="measure the impl='auto' table at the training window shapes (a few minutes)")
  parser.add_argument("--auto-table-only", action="store_true", help="only measure the auto table")
  parser.add_argument("--skip-fla", action="store_true")
  parser.add_argument("--pallas-seq", type=int, default=128, help="T for the pallas rows; 0 skips them")
  args = parser.parse_args(argv)
  b = args.batch or (2 if args.quick else 4)
  t = args.seq or (512 if args.quick else 2048)
  h = args.heads or (2 if args.quick else 4)
  rounds = args.rounds or (1 if args.quick else 3)
  backend = jax.default_backend()
  print(f"gated delta rule kernels | backend={backend} devices={jax.device_count()} jax={jax.__version__} | "
        f"float32 | medians over {rounds} interleaved rounds | load average at start: {_loadavg()}")
  if not args.auto_table_only:
    print(f"B={b} T={t} H={h} Dk={args.dk} Dv={args.dv}:")
    long_shape_section(b, t, h, args.dk, args.dv, rounds, args.repeats, args.reference_repeats, args.matmul_size,
                       with_fla=not args.skip_fla)
  print_auto_table()
  if args.auto_table or args.auto_table_only:
    auto_table_section(rounds, args.repeats)
  if args.pallas_seq > 0 and not args.auto_table_only:
    pallas_section(b, min(args.pallas_seq, t), h, args.dk, args.dv, 1, 2)
  if backend != "gpu":
    print("GPU rows: run `python -m launch.bench gpu` on a CUDA host (compiled Pallas Triton kernel, chunked XLA "
          "and fla's Triton kernel side by side)")
  print(f"load average at end: {_loadavg()}")
  return 0


def _loadavg():
  try:
    with open("/proc/loadavg", encoding="utf-8") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"
