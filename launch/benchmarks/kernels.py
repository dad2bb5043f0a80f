"""Gated delta rule kernels, side by side: ``python -m launch.bench kernels [--quick]``.

Times, in one process on the same inputs, the forward and forward+backward
(gradients with respect to q, k, v, log_alpha, beta and initial_state, with
cotangents on both outputs) of

* ``reference``: the per-token ``lax.scan`` oracle (its step is rematerialised,
  which makes its backward ~3x faster on CPU);
* ``naive-scan``: the same scan without rematerialisation, for context;
* ``chunked``: the WY / UT chunked form (autodiff backward, the default);
* ``chunked+vjp``: the same forward with the hand-written custom VJP;
* ``pallas``: the Pallas kernel in interpret mode (CPU; for information, at a
  smaller T because the interpreter is slow), compiled on GPU/TPU hosts;

and prints the speed-up ratios and the achieved GFLOP/s of ``chunked`` (the
FLOPs of the chunked algorithm counted analytically, beside XLA's
``cost_analysis`` figure) next to a large float32 matmul's GFLOP/s measured in
the same run. Targets (issue 2): chunked fwd+bwd >= 30x faster than the
oracle and >= 25% of the matmul GFLOP/s.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.gated_delta import chunked
from sleep_jax.ops.gated_delta import reference


def _inputs(b, t, h, dk, dv, seed=0):
  rng = np.random.default_rng(seed)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  args = (unit(rng.normal(size=(b, t, h, dk))), unit(rng.normal(size=(b, t, h, dk))),
          rng.normal(size=(b, t, h, dv)), -rng.uniform(0.0, 0.2, (b, t, h)), rng.uniform(0.0, 1.0, (b, t, h)),
          rng.normal(size=(b, h, dk, dv)))
  cts = (rng.normal(size=(b, t, h, dv)), rng.normal(size=(b, h, dk, dv)))
  return tuple(jnp.asarray(x, jnp.float32) for x in args), tuple(jnp.asarray(x, jnp.float32) for x in cts)


def _naive_scan(q, k, v, la, be, s0):
  """The per-token scan without rematerialisation (the oracle minus its checkpoint)."""
  def step(s, xs):
    o, s = reference.gated_delta_step_reference(*xs, s)
    return s, o

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, la, be))
  final, o = jax.lax.scan(step, s0, xs)
  return jnp.moveaxis(o, 0, 1), final


def _rule(name, chunk_size):
  if name == "naive-scan":
    return _naive_scan
  if name == "chunked+vjp":
    return lambda q, k, v, la, be, s0: chunked.gated_delta_rule_chunked(
        q, k, v, la, be, initial_state=s0, chunk_size=chunk_size, use_custom_vjp=True)
  return lambda q, k, v, la, be, s0: gated_delta_rule(q, k, v, la, be, initial_state=s0, impl=name,
                                                       chunk_size=chunk_size)


def _programs(rule):
  fwd = jax.jit(rule)

  def fwd_bwd(args, cts):
    out, vjp = jax.vjp(rule, *args)
    return out, vjp(cts)

  return fwd, jax.jit(fwd_bwd)


def _median_time(fn, repeats):
  """(first-call seconds incl. compile, median seconds of ``repeats`` calls)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def _xla_flops(jitted, *args):
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    return float("nan")


def chunked_flops(b, t, h, dk, dv, chunk_size, base_block=chunked._BASE_BLOCK):  # pylint: disable=protected-access
  """Matmul FLOPs of the chunked forward (2 per multiply-add), counted analytically.

  Per chunk of ``C`` tokens and head: ``K K^T``, ``Q K^T``, ``W``, ``Uw``,
  ``P W``, ``P Uw``, ``Qe S``, ``Kd^T W``, ``Kd^T Uw``, the block inverse, and
  one ``[Dk, Dk] x [Dk, Dv]`` product in the chunk scan. Elementwise work is
  not counted.
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
  per_chunk = (2 * c * c * dk) * 4 + (2 * c * c * dv) * 2 + 2 * c * dk * dk + 2 * c * dk * dv * 2
  per_chunk += 2 * dk * dk * dv + inverse
  return b * h * n * per_chunk


def _matmul_gflops(size, repeats):
  a = jnp.asarray(np.random.default_rng(1).normal(size=(size, size)), jnp.float32)
  mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  _, sec = _median_time(lambda: mm(a, a), repeats)
  return 2 * size ** 3 / sec / 1e9, sec


def _gpu_section():
  backend = jax.default_backend()
  if backend != "gpu":
    print(f"GPU section: skipped (jax.default_backend() is {backend!r}: no GPU on this machine, so neither "
          "the compiled Pallas Triton kernel nor flash-linear-attention's Triton chunk kernel can run)")
    return
  if importlib.util.find_spec("fla") is None:
    print("GPU section: flash-linear-attention (fla) is not installed; only the Pallas kernel is timed "
          "above (install flash-linear-attention and torch to time fla's chunk kernel beside it)")
    return
  print("GPU section: fla is installed but a side-by-side fla timing is not implemented yet")


def main(argv):
  parser = argparse.ArgumentParser(prog="python -m launch.bench kernels", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="B=2, T=512, H=2 instead of B=4, T=2048, H=4")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--seq", type=int, default=None)
  parser.add_argument("--heads", type=int, default=None)
  parser.add_argument("--dk", type=int, default=64)
  parser.add_argument("--dv", type=int, default=64)
  parser.add_argument("--chunk-size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--reference-repeats", type=int, default=3)
  parser.add_argument("--pallas-seq", type=int, default=256,
                      help="T for the pallas timing (interpret mode on CPU is slow); 0 skips it")
  parser.add_argument("--matmul-size", type=int, default=2048)
  args = parser.parse_args(argv)
  b = args.batch or (2 if args.quick else 4)
  t = args.seq or (512 if args.quick else 2048)
  h = args.heads or (2 if args.quick else 4)
  dk, dv, c = args.dk, args.dv, args.chunk_size
  backend = jax.default_backend()
  print(f"gated delta rule kernels | backend={backend} devices={jax.device_count()} | "
        f"B={b} T={t} H={h} Dk={dk} Dv={dv} chunk={c} | float32 | median of {args.repeats} "
        f"(reference: {args.reference_repeats})")

  inputs, cts = _inputs(b, t, h, dk, dv)
  results = {}
  for name in ("reference", "naive-scan", "chunked", "chunked+vjp"):
    fwd, fwd_bwd = _programs(_rule(name, c))
    reps = args.reference_repeats if name in ("reference", "naive-scan") else args.repeats
    f_first, f_sec = _median_time(lambda: fwd(*inputs), reps)  # pylint: disable=cell-var-from-loop
    g_first, g_sec = _median_time(lambda: fwd_bwd(inputs, cts), reps)  # pylint: disable=cell-var-from-loop
    results[name] = dict(fwd=f_sec, fwd_bwd=g_sec, fwd_first=f_first, fwd_bwd_first=g_first,
                         xla_fwd=_xla_flops(fwd, *inputs), xla_fwd_bwd=_xla_flops(fwd_bwd, inputs, cts))
    print(f"  {name:<12s} fwd {1e3 * f_sec:10.2f} ms   fwd+bwd {1e3 * g_sec:10.2f} ms   "
          f"(first call incl. compile: fwd {f_first:.2f} s, fwd+bwd {g_first:.2f} s)", flush=True)

  ref, ch = results["reference"], results["chunked"]
  print(f"speed-up chunked vs reference: fwd {ref['fwd'] / ch['fwd']:.1f}x   "
        f"fwd+bwd {ref['fwd_bwd'] / ch['fwd_bwd']:.1f}x   (target fwd+bwd >= 30x)")
  nv = results["naive-scan"]
  print(f"speed-up chunked vs naive scan (no remat): fwd {nv['fwd'] / ch['fwd']:.1f}x   "
        f"fwd+bwd {nv['fwd_bwd'] / ch['fwd_bwd']:.1f}x")
  cv = results["chunked+vjp"]
  print(f"chunked autodiff vs custom VJP: fwd+bwd {1e3 * ch['fwd_bwd']:.2f} ms vs {1e3 * cv['fwd_bwd']:.2f} ms "
        f"({cv['fwd_bwd'] / ch['fwd_bwd']:.2f}x)")

  mm_gflops, mm_sec = _matmul_gflops(args.matmul_size, args.repeats)
  flops = chunked_flops(b, t, h, dk, dv, c)
  # Reverse mode costs two matmuls of the same size per forward matmul: 3x the forward.
  fwd_gflops = flops / ch["fwd"] / 1e9
  bwd_gflops = 3 * flops / ch["fwd_bwd"] / 1e9
  print(f"matmul {args.matmul_size}x{args.matmul_size} float32: {mm_gflops:.1f} GFLOP/s ({1e3 * mm_sec:.1f} ms)")
  print(f"chunked analytic FLOPs: fwd {flops / 1e9:.3f} GFLOP, fwd+bwd {3 * flops / 1e9:.3f} GFLOP (3x fwd)")
  print(f"chunked XLA cost_analysis FLOPs: fwd {ch['xla_fwd'] / 1e9:.3f} GFLOP, "
        f"fwd+bwd {ch['xla_fwd_bwd'] / 1e9:.3f} GFLOP (XLA counts a scan / loop body once)")
  print(f"chunked achieved (analytic): fwd {fwd_gflops:.1f} GFLOP/s = {100 * fwd_gflops / mm_gflops:.1f}% of matmul; "
        f"fwd+bwd {bwd_gflops:.1f} GFLOP/s = {100 * bwd_gflops / mm_gflops:.1f}% of matmul (target >= 25%)")
  print(f"chunked achieved (XLA count): fwd {ch['xla_fwd'] / ch['fwd'] / 1e9:.1f} GFLOP/s, "
        f"fwd+bwd {ch['xla_fwd_bwd'] / ch['fwd_bwd'] / 1e9:.1f} GFLOP/s")
  # XLA's cost_analysis counts a scan body once, so the oracle is counted by hand:
  # per token and head, decay K V, prediction 2 K V, write 2 K V, read 2 K V.
  ref_flops = 7 * b * t * h * dk * dv
  ref_gflops = 3 * ref_flops / ref["fwd_bwd"] / 1e9
  print(f"reference analytic FLOPs: fwd {ref_flops / 1e9:.3f} GFLOP; achieved fwd+bwd {ref_gflops:.2f} GFLOP/s = "
        f"{100 * ref_gflops / mm_gflops:.2f}% of matmul")
  print(f"FLOP ratio chunked / reference: {flops / ref_flops:.2f} (the WY form trades extra FLOPs for matmuls; "
        f"the speed-up is bounded by {ref['fwd_bwd'] * mm_gflops * 1e9 / (3 * flops):.1f}x even at 100% "
        f"of the matmul rate)")
  if args.pallas_seq > 0 and importlib.util.find_spec("sleep_jax.ops.gated_delta.pallas") is not None:
    tp = min(args.pallas_seq, t)
    mode = "interpret mode" if backend == "cpu" else "compiled"
    print(f"pallas ({mode}, for information) at T={tp} (other dims as above):")
    p_inputs, p_cts = _inputs(b, tp, h, dk, dv)
    p_res = {}
    for name in ("reference", "chunked", "pallas"):
      fwd, fwd_bwd = _programs(_rule(name, c))
      reps = max(1, min(args.repeats, 3))
      _, f_sec = _median_time(lambda: fwd(*p_inputs), reps)  # pylint: disable=cell-var-from-loop
      _, g_sec = _median_time(lambda: fwd_bwd(p_inputs, p_cts), reps)  # pylint: disable=cell-var-from-loop
      p_res[name] = (f_sec, g_sec)
      print(f"  {name:<12s} fwd {1e3 * f_sec:10.2f} ms   fwd+bwd {1e3 * g_sec:10.2f} ms", flush=True)
    pr, pp = p_res["reference"], p_res["pallas"]
    print(f"  speed-up pallas vs reference at T={tp}: fwd {pr[0] / pp[0]:.2f}x   fwd+bwd {pr[1] / pp[1]:.2f}x")
  elif args.pallas_seq > 0:
    print("pallas: skipped (sleep_jax/ops/gated_delta/pallas.py is not available)")
  _gpu_section()
  return 0
