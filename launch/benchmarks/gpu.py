"""One-shot GPU check of the gated delta rule: ``python -m launch.bench gpu [--out=FILE.json] [--quick]``.

On a CUDA host, in one process (about 3-6 minutes; a deadline of 7 minutes
skips whatever is left and says so):

1. **Exactness of the compiled kernel.** The Pallas Triton kernel, compiled
   (``interpret=False``), against the per-token oracle, values and all six
   gradients (q, k, v, log_alpha, beta, initial_state, with cotangents on both
   outputs), over the shapes of the test grid (odd T, non-power-of-two head
   dims, gates from exactly 0 to huge decays), float32, relative RMS error
   under the tolerance table of ``sleep_jax.testing``.
2. **Speed.** Forward and forward+backward of the Pallas kernel, the chunked
   XLA form and, when ``fla`` (flash-linear-attention) and ``torch`` are
   importable, fla's Triton ``chunk_gated_delta_rule``, at B=8, H=16,
   Dk=Dv=128, T in {1024, 4096, 16384}, bfloat16 q/k/v/beta with float32
   log-gates and float32 state; plus the relative RMS distance of each output
   to the Pallas kernel's at the smallest T.

Prints one table and writes everything as JSON (``--out``). On a host without
a CUDA device it prints the plan and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from launch import cli

# The exactness grid: the shapes of tests/test_gated_delta.py's GRID and of
# tests/test_gated_delta_pallas.py (B, T, H, Dk, Dv, gates, chunk).
GRID = (
    (2, 1, 4, 16, 100, "zero", 64),
    (2, 63, 1, 60, 16, "strong", 64),
    (2, 64, 4, 64, 60, "mixed", 64),
    (2, 75, 1, 100, 64, "zero", 64),
    (2, 75, 4, 16, 16, "strong", 32),
    (2, 500, 1, 64, 64, "moderate", 64),
    (2, 64, 4, 64, 60, "extreme", 64),
    (2, 1000, 2, 128, 128, "moderate", 64),
)
SPEED_SHAPES = tuple((8, t, 16, 128, 128) for t in (1024, 4096, 16384))
DEADLINE_S = 7 * 60
# False: the compiled kernel (the point of this check). Tests set it to True to
# run the same code paths on a CPU host.
INTERPRET = False


def _gates(rng, shape, regime):
  if regime == "zero":
    return np.zeros(shape)
  if regime == "moderate":
    return -rng.uniform(0.0, 0.5, shape)
  if regime == "strong":
    return -rng.uniform(1.0, 5.0, shape)
  if regime == "mixed":
    return np.where(rng.uniform(size=shape) < 0.05, -60.0, 0.0)
  if regime == "extreme":
    pos = np.arange(shape[1])[None, :, None]
    return np.broadcast_to(np.where(pos < 8, 0.0, np.where(pos % 4 == 0, -1e4, -rng.uniform(0, 1, shape))), shape)
  raise ValueError(regime)


def make_inputs(b, t, h, dk, dv, gates="moderate", seed=0):
  """float32 numpy inputs (q, k unit-norm; beta in (0, 1)) and cotangents."""
  rng = np.random.default_rng(seed)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  args = [unit(rng.normal(size=(b, t, h, dk))), unit(rng.normal(size=(b, t, h, dk))), rng.normal(size=(b, t, h, dv)),
          _gates(rng, (b, t, h), gates), rng.uniform(0.0, 1.0, (b, t, h)), rng.normal(size=(b, h, dk, dv))]
  cts = [rng.normal(size=(b, t, h, dv)), rng.normal(size=(b, h, dk, dv))]
  return [np.asarray(x, np.float32) for x in args], [np.asarray(x, np.float32) for x in cts]


def plan() -> list[str]:
  lines = ["exactness (compiled Pallas Triton vs the per-token oracle, values + 6 gradients, float32):"]
  lines += [f"  B={b} T={t} H={h} Dk={dk} Dv={dv} gates={g} chunk={c}" for b, t, h, dk, dv, g, c in GRID]
  lines.append("speed (fwd, fwd+bwd; bf16 q/k/v/beta, float32 gates and state): pallas, chunked (XLA), "
               "fla chunk_gated_delta_rule (Triton) when importable, at:")
  lines += [f"  B={b} T={t} H={h} Dk={dk} Dv={dv}" for b, t, h, dk, dv in SPEED_SHAPES]
  return lines


def _jax_rule(impl, chunk_size=64):
  from sleep_jax.ops import gated_delta_rule  # pylint: disable=import-outside-toplevel
  from sleep_jax.ops.gated_delta import pallas  # pylint: disable=import-outside-toplevel
  if impl == "pallas":
    return lambda q, k, v, la, be, s0: pallas.gated_delta_rule_pallas(
        q, k, v, la, be, initial_state=s0, chunk_size=chunk_size, backend="triton", interpret=INTERPRET)
  return lambda q, k, v, la, be, s0: gated_delta_rule(q, k, v, la, be, initial_state=s0, impl=impl,
                                                       chunk_size=chunk_size)


def _jax_programs(rule):
  fwd = jax.jit(rule)

  @jax.jit
  def fwd_bwd(args, cts):
    out, vjp = jax.vjp(rule, *args)
    return out, vjp(tuple(cts))

  return fwd, fwd_bwd


def check_exactness(deadline):
  from sleep_jax.testing import rel_rms_error, tolerance  # pylint: disable=import-outside-toplevel
  rows = []
  names = ("o", "final_state", "dq", "dk", "dv", "dlog_alpha", "dbeta", "dinitial_state")
  ref_f, ref_g = _jax_programs(_jax_rule("reference"))
  for b, t, h, dk, dv, gates, chunk in GRID:
    row = dict(B=b, T=t, H=h, Dk=dk, Dv=dv, gates=gates, chunk=chunk)
    if time.monotonic() > deadline:
      row["status"] = "skipped (deadline)"
      rows.append(row)
      continue
    np_args, np_cts = make_inputs(b, t, h, dk, dv, gates, seed=t + dk)
    args, cts = [jnp.asarray(x) for x in np_args], [jnp.asarray(x) for x in np_cts]
    _, pal_g = _jax_programs(_jax_rule("pallas", chunk))
    (o_r, s_r), g_r = ref_g(args, cts)
    (o_p, s_p), g_p = pal_g(args, cts)
    errs = {n: rel_rms_error(r, p) for n, r, p in zip(names, (o_r, s_r) + tuple(g_r), (o_p, s_p) + tuple(g_p))}
    bounds = {n: tolerance("float32" if n in ("o", "final_state") else "float32_grad").rel_rms for n in names}
    finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in (o_p, s_p) + tuple(g_p))
    row.update(rel_rms=errs, ok=finite and all(errs[n] <= bounds[n] for n in names), finite=finite)
    rows.append(row)
    worst = max(errs, key=errs.get)
    print(f"  {'ok  ' if row['ok'] else 'FAIL'} B={b} T={t:<5d} H={h} Dk={dk:<3d} Dv={dv:<3d} {gates:<8s} "
          f"C={chunk}: worst rel RMS {errs[worst]:.1e} ({worst})", flush=True)
  return rows


def _median_ms(fn, sync, repeats):
  sync(fn())  # Compile / autotune.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def _fla_programs(np_args, np_cts):
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("fla") is None:
    return "not importable (pip install fla-core; torch must see the GPU)"
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # pylint: disable=import-outside-toplevel
  except Exception as err:  # pylint: disable=broad-except
    return f"not importable ({type(err).__name__}: {err})"
  if not torch.cuda.is_available():
    return "torch sees no CUDA device"
  dev = torch.device("cuda")
  bf = torch.bfloat16
  q, k, v, g, beta, s0 = (torch.from_numpy(x).to(dev) for x in np_args)
  q, k, v, beta = q.to(bf), k.to(bf), v.to(bf), beta.to(bf)
  do, ds = (torch.from_numpy(x).to(dev) for x in np_cts)
  do = do.to(bf)

  def fwd():
    with torch.no_grad():
      return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)

  def fwd_bwd():
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g, beta, s0)]
    o, s = chunk_gated_delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True)
    torch.autograd.backward([o, s], [do, ds])
    return [x.grad for x in leaves]

  def sync(_):
    torch.cuda.synchronize()

  return fwd, fwd_bwd, sync


def time_speed(deadline, repeats):
  rows = []
  for b, t, h, dk, dv in SPEED_SHAPES:
    np_args, np_cts = make_inputs(b, t, h, dk, dv, "moderate", seed=1)
    bf = jnp.bfloat16
    args = [jnp.asarray(x, bf) for x in np_args[:3]] + [jnp.asarray(np_args[3]), jnp.asarray(np_args[4], bf),
                                                        jnp.asarray(np_args[5])]
    cts = [jnp.asarray(np_cts[0], bf), jnp.asarray(np_cts[1])]
    row = dict(B=b, T=t, H=h, Dk=dk, Dv=dv, ms={})
    outs = {}
    for name in ("pallas", "chunked"):
      if time.monotonic() > deadline:
        row["ms"][name] = "skipped (deadline)"
        continue
      fwd, fwd_bwd = _jax_programs(_jax_rule(name))
      sync = jax.block_until_ready
      row["ms"][name] = dict(fwd=_median_ms(lambda: fwd(*args), sync, repeats),  # pylint: disable=cell-var-from-loop
                             fwd_bwd=_median_ms(lambda: fwd_bwd(args, cts), sync, repeats))  # pylint: disable=cell-var-from-loop
      outs[name] = np.asarray(fwd(*args)[0], np.float32)
    fla = _fla_programs(np_args, np_cts) if time.monotonic() < deadline else "skipped (deadline)"
    if isinstance(fla, str):
      row["ms"]["fla"] = fla
    else:
      fwd, fwd_bwd, sync = fla
      row["ms"]["fla"] = dict(fwd=_median_ms(fwd, sync, repeats), fwd_bwd=_median_ms(fwd_bwd, sync, repeats))
      outs["fla"] = fwd()[0].float().cpu().numpy()
    if "pallas" in outs:
      ref = outs["pallas"]
      row["rel_rms_vs_pallas"] = {n: float(np.linalg.norm(o - ref) / max(np.linalg.norm(ref), 1e-30))
                                  for n, o in outs.items() if n != "pallas"}
    rows.append(row)
    cells = "  ".join(f"{n}: {c['fwd']:.2f} / {c['fwd_bwd']:.2f}" if isinstance(c, dict) else f"{n}: {c}"
                      for n, c in row["ms"].items())
    print(f"  B={b} T={t:<6d} H={h} D={dk}  fwd / fwd+bwd ms   {cells}", flush=True)
  return rows


def run(deadline, repeats, skip_speed=False):
  """Both parts on the default device; returns the JSON-able result."""
  result = dict(exactness=check_exactness(deadline))
  if not skip_speed:
    print("speed: B=8 H=16 Dk=Dv=128, bf16 inputs, float32 gates and state")
    result["speed"] = time_speed(deadline, repeats)
  result["ok"] = all(r.get("ok", False) for r in result["exactness"] if "rel_rms" in r)
  return result


def main(argv):
  parser = argparse.ArgumentParser(prog="python -m launch.bench gpu", description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, type=cli.user_path, help="write the results as JSON here")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--skip-speed", action="store_true")
  args = parser.parse_args(argv)
  start = time.monotonic()
  deadline = start + DEADLINE_S
  gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
  if not gpus:
    print(f"gpu check: no CUDA device (jax.default_backend() is {jax.default_backend()!r}); nothing run. "
          "On a CUDA host this would run:")
    print("\n".join(plan()))
    return 0
  result = dict(host=platform.node(), device=str(gpus[0].device_kind), jax=jax.__version__,
                python=platform.python_version())
  print(f"gpu check | {result['device']} | jax {jax.__version__} | python {result['python']}")
  print("exactness: compiled Pallas Triton vs the per-token oracle (values and gradients)")
  result.update(run(deadline, args.repeats, args.skip_speed))
  result["elapsed_s"] = time.monotonic() - start
  ok = result["ok"]
  print(f"exactness: {'all ok' if ok else 'FAILURES (see above)'}; elapsed {result['elapsed_s']:.0f} s")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1, default=str)
    print(f"wrote {args.out}")
  return 0 if ok else 1
