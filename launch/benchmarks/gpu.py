"""Go/no-go check of a GPU or TPU host: ``python -m launch.bench gpu [--out=FILE.json] [--interpret]``.

Run it first on a new accelerator host. In one process (a few minutes; past
``--deadline_s``, 7 minutes by default, what is left is skipped and counted as
failed), on the default device:

1. **Kernel.** The compiled Pallas kernel of the host's backend (Triton on a
   GPU, Mosaic on a TPU) against the float64 oracle
   ``sleep_jax.testing.gated_delta_oracle_float64``: output, final state and
   the gradients of q, k, v, log_alpha, beta and the initial state (cotangents
   on both outputs), per regime of ``testing.GATED_DELTA_REGIMES`` (random
   keys, two keys, near-parallel keys, a 4-key alphabet, beta = 1 with
   log_alpha = 0, log_alpha = 0, strong decay), relative RMS error under
   ``testing.gated_delta_regime_bound``. Shapes: the test grid's
   (``testing.GATED_DELTA_REGIME_SHAPES``: T not a multiple of the chunk,
   non-power-of-two head dims), the same with bf16 q/k/v and float32 state,
   and two longer ones (T = 256 at chunk 16; T = 1000, Dk = Dv = 128, chunk 64).
2. **Training step.** The trainer's own step
   (``sleep_jax.train.step.make_train_step`` on ``WindowedLoss``) of a small
   ``HybridLM`` with ``gdn_impl="pallas"`` against ``"chunked"``, at N = 1 and
   N = 4 (two consolidation windows, then an answer window): loss and every
   parameter gradient by relative RMS error under the tolerance table's
   float32 row. The optimizer is replaced by one that keeps the gradient as
   its state, so the step hands its gradients back.
3. **Speed.** Forward and forward+backward of the Pallas kernel, the chunked
   XLA form and flash-linear-attention's Triton ``chunk_gated_delta_rule``
   (when ``fla`` and ``torch`` with CUDA import; otherwise the row says why it
   was skipped) at B=8, H=16, Dk=Dv=128, T in {1024, 4096, 16384}, bf16
   q/k/v/beta with float32 log-gates and state, plus each output's relative RMS
   distance to the Pallas kernel's. The times are for reading; the check fails
   only if the Pallas kernel raises or returns non-finite values there.

The last line printed is ``GO: ...`` (exit status 0) or ``NO-GO: <what
failed>`` (exit status 1). ``--out`` writes every number as JSON.

On a host without a GPU or TPU backend it says so, prints the plan and ends
NO-GO: nothing was checked. ``--interpret`` runs the same checks with every
Pallas kernel in interpret mode at tiny sizes: a dry run of this script (used
by its test on CPU), which says nothing about a device.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from launch import cli
from sleep_jax import testing

_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one run checks.

  Attributes:
    kernel: ``(T, H, Dk, Dv, chunk, q/k/v dtype)`` per kernel case; each case
      is one call over the seven regimes (B = 7).
    model: ``ModelConfig`` fields of the training-step model (besides
      ``gdn_impl``).
    batch, window, n_windows: the step's batch size, window ``L`` and number
      of windows (``T = L * n_windows``; every window but the last is a
      consolidation window).
    n_passes: the values of N checked.
    speed: ``(B, T, H, Dk, Dv)`` per timed shape.
    repeats: timed calls per program (median).
  """
  kernel: tuple
  model: dict
  batch: int
  window: int
  n_windows: int
  n_passes: tuple[int, ...]
  speed: tuple
  repeats: int


DEVICE = Plan(
    # The test grid's shapes, float32 and with bf16 q/k/v, then a longer sequence and a full-size head.
    kernel=tuple(shape + ("float32",) for shape in testing.GATED_DELTA_REGIME_SHAPES)
    + (testing.GATED_DELTA_REGIME_SHAPES[0] + ("bfloat16",),
       (256, 4, 64, 64, 16, "float32"), (1000, 2, 128, 128, 64, "float32")),
    model=dict(vocab_size=64, d_model=128, n_layers=4, n_heads=4, head_dim=32, gdn_n_heads=4, gdn_head_dim=32,
               gdn_chunk_size=32),
    batch=8, window=48, n_windows=3, n_passes=(1, 4),
    speed=tuple((8, t, 16, 128, 128) for t in (1024, 4096, 16384)), repeats=10)
# The dry run: every path of the device plan, interpreted, at sizes one CPU core runs in well under a minute.
INTERPRET = Plan(
    kernel=((20, 1, 16, 16, 16, "float32"), (20, 1, 16, 16, 16, "bfloat16")),
    model=dict(vocab_size=16, d_model=32, n_layers=2, n_heads=2, head_dim=16, gdn_n_heads=2, gdn_head_dim=16,
               mlp_hidden=64, gdn_chunk_size=16),
    batch=2, window=12, n_windows=3, n_passes=(1, 4),
    speed=((1, 32, 2, 16, 16),), repeats=1)
DEADLINE_S = 7 * 60


def plan_for(interpret: bool) -> Plan:
  """The plan of a run: tiny and interpreted, or the device plan."""
  return INTERPRET if interpret else DEVICE


def describe(plan: Plan, backend: str, interpret: bool) -> list[str]:
  """The plan in words, one line per item."""
  mode = "interpreted" if interpret else "compiled"
  lines = [f"kernel: Pallas {backend} ({mode}) vs the float64 oracle, per regime, output + final state + 6 gradients:"]
  lines += [f"  T={t} H={h} Dk={dk} Dv={dv} chunk={c} q/k/v {dt}" for t, h, dk, dv, c, dt in plan.kernel]
  m = plan.model
  lines.append(f"train step: gdn_impl='pallas' vs 'chunked', d_model={m['d_model']} layers={m['n_layers']} "
               f"GDN heads={m['gdn_n_heads']}x{m['gdn_head_dim']} chunk={m['gdn_chunk_size']}, B={plan.batch} "
               f"L={plan.window} T={plan.window * plan.n_windows}, N in {list(plan.n_passes)}: loss + every gradient")
  lines.append("speed (fwd, fwd+bwd; bf16 q/k/v/beta, float32 gates and state): pallas, chunked (XLA), "
               "fla chunk_gated_delta_rule (Triton) when importable, at:")
  lines += [f"  B={b} T={t} H={h} Dk={dk} Dv={dv}" for b, t, h, dk, dv in plan.speed]
  return lines


def _error_text(err: BaseException) -> str:
  text = f"{type(err).__name__}: {err}".strip()
  return text.splitlines()[0][:300] if text else type(err).__name__


# -- 1. the kernel against the float64 oracle -------------------------------------------------------
def _value_and_grads(rule, args, cts):
  """``((o, final_state), grads)`` of ``sum(o * do) + sum(S * dS)``, jitted."""
  co, cs = cts

  def loss(q, k, v, la, beta, s0):
    o, s = rule(q, k, v, la, beta, s0)
    return jnp.sum(o.astype(jnp.float32) * co) + jnp.sum(s * cs), (o, s)

  (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))(*args)
  return outs, grads


def _pallas_rule(backend, chunk_size, interpret):
  from sleep_jax.ops.gated_delta import pallas  # pylint: disable=import-outside-toplevel
  return lambda q, k, v, la, be, s0: pallas.gated_delta_rule_pallas(
      q, k, v, la, be, initial_state=s0, chunk_size=chunk_size, backend=backend, interpret=interpret)


def check_kernel(plan: Plan, backend: str, interpret: bool, deadline: float) -> list[dict]:
  """Each kernel case of ``plan`` against the float64 oracle; one row per case."""
  rows = []
  for t, h, dk, dv, chunk, dtype in plan.kernel:
    row = dict(T=t, H=h, Dk=dk, Dv=dv, chunk=chunk, dtype=dtype, ok=False)
    rows.append(row)
    label = f"T={t:<4d} H={h} Dk={dk:<3d} Dv={dv:<3d} C={chunk:<2d} {dtype:<8s}"
    if time.monotonic() > deadline:
      row["error"] = "skipped (deadline)"
      print(f"  SKIP {label} (deadline)", flush=True)
      continue
    try:
      args, cts, oracle = testing.gated_delta_regime_case(t + dk + dv, t, h, dk, dv, jnp.dtype(dtype))
      (o, s), grads = _value_and_grads(_pallas_rule(backend, chunk, interpret), args, cts)
      errors = testing.gated_delta_regime_errors((o, s, grads), oracle)
    except Exception as err:  # pylint: disable=broad-except
      row["error"] = _error_text(err)
      row["traceback"] = traceback.format_exc()
      print(f"  FAIL {label} raised {row['error']}", flush=True)
      continue
    bound = {name: testing.gated_delta_regime_bound(name, jnp.dtype(dtype)) for name in testing.GATED_DELTA_OUTPUTS}
    row["bound"] = bound
    row["rel_rms"] = {regime: {name: errors[(regime, name)] for name in testing.GATED_DELTA_OUTPUTS}
                      for regime in testing.GATED_DELTA_REGIMES}
    row["failed"] = [f"{regime} {name} {err:.1e} > {bound[name]:.0e}"
                     for (regime, name), err in errors.items() if not err <= bound[name]]
    row["ok"] = not row["failed"]
    worst = max(errors, key=lambda key: errors[key] / bound[key[1]])
    row["worst"] = dict(regime=worst[0], output=worst[1], rel_rms=errors[worst], bound=bound[worst[1]])
    print(f"  {'ok  ' if row['ok'] else 'FAIL'} {label} worst {errors[worst]:.1e} "
          f"({worst[0]} {worst[1]}, bound {bound[worst[1]]:.0e})", flush=True)
    for line in row["failed"][:8]:
      print(f"       {line}")
  return rows


# -- 2. the training step, pallas against chunked ---------------------------------------------------
def _gradient_keeper():
  """An optimizer that keeps the last gradient as its state and updates nothing.

  With it, the trainer's own step returns its gradients (in the new
  optimizer state) without changing the parameters.
  """
  import optax  # pylint: disable=import-outside-toplevel

  def update(grads, state, params=None):
    del state, params
    return jax.tree.map(jnp.zeros_like, grads), grads

  return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params), update)


def _step_batch(plan: Plan, vocab: int) -> dict:
  rng = np.random.default_rng(0)
  t = plan.window * plan.n_windows
  tokens = rng.integers(0, vocab, (plan.batch, t + 1))
  mask = np.zeros((plan.batch, t), np.float32)
  mask[:, -plan.window:] = 1.0  # the answer window; the windows before it consolidate
  return dict(tokens=jnp.asarray(tokens[:, :-1], jnp.int32), targets=jnp.asarray(tokens[:, 1:], jnp.int32),
              loss_mask=jnp.asarray(mask))


class _StepRunner:
  """The plan's model, initialised once, and the trainer's step for any ``gdn_impl`` and N.

  Every implementation starts from the same parameters and optimizer state
  (the GDN implementation is not a parameter: only the graph definition
  differs).
  """

  def __init__(self, plan: Plan):
    # pylint: disable=import-outside-toplevel
    from flax import nnx
    from sleep_jax import HybridLM, ModelConfig
    from sleep_jax.train import state as state_lib
    self.plan = plan
    self.tx = _gradient_keeper()
    config = lambda impl: ModelConfig(gdn_impl=impl, **plan.model)  # pylint: disable=unnecessary-lambda-assignment
    _, self.state = state_lib.create_train_state(lambda rngs: HybridLM(config("chunked"), rngs=rngs), self.tx,
                                                 seed=0)
    self.graphdef = {impl: nnx.graphdef(nnx.eval_shape(lambda impl=impl: HybridLM(config(impl), rngs=nnx.Rngs(0))))
                     for impl in ("chunked", "pallas")}

  def __call__(self, impl: str, n_passes: int, batch: dict):
    """``(metrics, grads)`` of one step with ``gdn_impl=impl`` at N = ``n_passes``."""
    # pylint: disable=import-outside-toplevel
    from sleep_jax import SleepConfig, WindowedLoss
    from sleep_jax.train import step as step_lib
    loss = WindowedLoss(SleepConfig(window=self.plan.window, n_passes=n_passes))
    step = jax.jit(step_lib.make_train_step(loss, self.tx, self.graphdef[impl]))
    new_state, metrics = step(self.state, batch)
    return jax.device_get(metrics), jax.device_get(new_state.opt_state)


def check_train_step(plan: Plan, deadline: float) -> list[dict]:
  """The trainer's step with ``gdn_impl="pallas"`` against ``"chunked"``, one row per N."""
  # Both implementations compute the same float32 function, so loss and gradients differ by rounding alone
  # (measured <= 6e-6 on the device plan's model, interpreted): the float32 row (2e-4) for both. A model whose
  # Pallas rule wrote with 0.99 beta measured 3e-3, only 3x over float32_grad's 1e-3.
  loss_bound = grad_bound = testing.tolerance("float32").rel_rms
  batch = _step_batch(plan, plan.model["vocab_size"])
  runner = None
  rows = []
  for n in plan.n_passes:
    row = dict(n_passes=n, ok=False, loss_bound=loss_bound, grad_bound=grad_bound)
    rows.append(row)
    if time.monotonic() > deadline:
      row["error"] = "skipped (deadline)"
      print(f"  SKIP N={n} (deadline)", flush=True)
      continue
    try:
      # Both implementations at full float32 matmul precision: on a GPU the
      # default lets XLA use TF32 in the model's other matmuls, whose rounding
      # would swamp the GDN implementations' float32 differences.
      with jax.default_matmul_precision("float32"):
        runner = runner or _StepRunner(plan)
        m_ref, g_ref = runner("chunked", n, batch)
        m_pal, g_pal = runner("pallas", n, batch)
    except Exception as err:  # pylint: disable=broad-except
      row["error"] = _error_text(err)
      row["traceback"] = traceback.format_exc()
      print(f"  FAIL N={n} raised {row['error']}", flush=True)
      continue
    failed = []
    loss_err = abs(float(m_pal["loss"]) - float(m_ref["loss"])) / max(abs(float(m_ref["loss"])), 1e-30)
    row["loss"] = dict(chunked=float(m_ref["loss"]), pallas=float(m_pal["loss"]), rel_err=loss_err)
    if not loss_err <= loss_bound:
      failed.append(f"loss {loss_err:.1e} > {loss_bound:.0e}")
    grads = {}
    for (path, r), p in zip(jax.tree_util.tree_flatten_with_path(g_ref)[0], jax.tree.leaves(g_pal)):
      name = jax.tree_util.keystr(path)
      grads[name] = testing.rel_rms_error(r, p) if np.all(np.isfinite(p)) else float("inf")
      if not grads[name] <= grad_bound:
        failed.append(f"grad {name} {grads[name]:.1e} > {grad_bound:.0e}")
    row["grad_rel_rms"] = grads
    for flag in ("loss_finite", "grads_finite"):
      if not (bool(m_ref[flag]) and bool(m_pal[flag])):
        failed.append(f"{flag} false")
    # N > 1 must have slept, or it checked nothing beyond N = 1.
    row["sleep_windows"] = float(m_pal["sleep/sleep_windows"])
    row["passes"] = float(m_pal["sleep/passes"])
    if n > 1 and not (row["sleep_windows"] > 0 and row["passes"] == n):
      failed.append(f"no window slept {n} passes (sleep/passes {row['passes']}, windows {row['sleep_windows']})")
    row["failed"] = failed
    row["ok"] = not failed
    worst = max(grads, key=grads.get)
    print(f"  {'ok  ' if row['ok'] else 'FAIL'} N={n}: loss {float(m_pal['loss']):.6f} (rel {loss_err:.1e}), "
          f"{len(grads)} gradients, worst rel RMS {grads[worst]:.1e} ({worst})", flush=True)
    for line in failed[:8]:
      print(f"       {line}")
  return rows


# -- 3. speed ---------------------------------------------------------------------------------------
def _median_ms(fn, sync, repeats):
  sync(fn())  # Compile / autotune.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def _time_jax(rule, args, cts, repeats):
  """``({"fwd": ms, "fwd_bwd": ms}, (o, final_state))`` of a JAX rule ``(q, k, v, la, beta, s0)``."""
  fwd = jax.jit(rule)

  @jax.jit
  def fwd_bwd(args, cts):
    out, vjp = jax.vjp(rule, *args)
    return out, vjp(tuple(cts))

  ms = dict(fwd=_median_ms(lambda: fwd(*args), jax.block_until_ready, repeats),
            fwd_bwd=_median_ms(lambda: fwd_bwd(args, cts), jax.block_until_ready, repeats))
  return ms, fwd(*args)


def _speed_inputs(b, t, h, dk, dv):
  """float32 numpy inputs (q, k unit-norm; beta in (0, 1); log-gates in (-0.5, 0)) and cotangents."""
  rng = np.random.default_rng(1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # pylint: disable=unnecessary-lambda-assignment
  args = [unit(rng.normal(size=(b, t, h, dk))), unit(rng.normal(size=(b, t, h, dk))), rng.normal(size=(b, t, h, dv)),
          -rng.uniform(0.0, 0.5, (b, t, h)), rng.uniform(0.0, 1.0, (b, t, h)), rng.normal(size=(b, h, dk, dv))]
  cts = [rng.normal(size=(b, t, h, dv)), rng.normal(size=(b, h, dk, dv))]
  return [np.asarray(x, np.float32) for x in args], [np.asarray(x, np.float32) for x in cts]


def fla_skip_reason() -> str | None:
  """Why fla's Triton kernel cannot be timed here, or ``None`` when it can."""
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("fla") is None:
    missing = [m for m in ("torch", "fla") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not importable (pip install fla-core; torch must see the GPU)"
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # pylint: disable=import-outside-toplevel,unused-import
  except Exception as err:  # pylint: disable=broad-except
    return f"not importable ({_error_text(err)})"
  if not torch.cuda.is_available():
    return "torch sees no CUDA device"
  return None


def _fla_programs(np_args, np_cts):
  import torch  # pylint: disable=import-outside-toplevel
  from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # pylint: disable=import-outside-toplevel
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


def time_speed(plan: Plan, backend: str, interpret: bool, deadline: float) -> list[dict]:
  """fwd and fwd+bwd milliseconds of pallas, chunked and fla at each speed shape."""
  from sleep_jax.ops import gated_delta_rule  # pylint: disable=import-outside-toplevel
  rules = dict(pallas=_pallas_rule(backend, 64 if not interpret else 16, interpret),
               chunked=lambda q, k, v, la, be, s0: gated_delta_rule(q, k, v, la, be, initial_state=s0,
                                                                    impl="chunked", chunk_size=64))
  fla_reason = fla_skip_reason()
  rows = []
  for b, t, h, dk, dv in plan.speed:
    np_args, np_cts = _speed_inputs(b, t, h, dk, dv)
    bf = jnp.bfloat16
    args = [jnp.asarray(x, bf) for x in np_args[:3]] + [jnp.asarray(np_args[3]), jnp.asarray(np_args[4], bf),
                                                        jnp.asarray(np_args[5])]
    cts = [jnp.asarray(np_cts[0], bf), jnp.asarray(np_cts[1])]
    row = dict(B=b, T=t, H=h, Dk=dk, Dv=dv, ms={}, ok=True)
    rows.append(row)
    outs = {}
    for name, rule in rules.items():
      if time.monotonic() > deadline:
        row["ms"][name] = "skipped (deadline)"
        continue
      try:
        row["ms"][name], (o, s) = _time_jax(rule, args, cts, plan.repeats)
        outs[name] = np.asarray(o, np.float32)
        if name == "pallas" and not (np.all(np.isfinite(outs[name])) and np.all(np.isfinite(np.asarray(s)))):
          row["ok"] = False
          row["error"] = "pallas: non-finite output"
      except Exception as err:  # pylint: disable=broad-except
        row["ms"][name] = f"error: {_error_text(err)}"
        if name == "pallas":
          row["ok"] = False
          row["error"] = f"pallas raised {_error_text(err)}"
    if fla_reason is not None:
      row["ms"]["fla"] = f"skipped: {fla_reason}"
    elif time.monotonic() > deadline:
      row["ms"]["fla"] = "skipped (deadline)"
    else:
      try:
        fwd, fwd_bwd, sync = _fla_programs(np_args, np_cts)
        row["ms"]["fla"] = dict(fwd=_median_ms(fwd, sync, plan.repeats),
                                fwd_bwd=_median_ms(fwd_bwd, sync, plan.repeats))
        outs["fla"] = fwd()[0].float().cpu().numpy()
      except Exception as err:  # pylint: disable=broad-except
        row["ms"]["fla"] = f"error: {_error_text(err)}"
    if "pallas" in outs:
      ref = outs["pallas"]
      row["rel_rms_vs_pallas"] = {n: float(np.linalg.norm(o - ref) / max(np.linalg.norm(ref), 1e-30))
                                  for n, o in outs.items() if n != "pallas"}
    cells = "  ".join(f"{n}: {c['fwd']:.2f} / {c['fwd_bwd']:.2f}" if isinstance(c, dict) else f"{n}: {c}"
                      for n, c in row["ms"].items())
    print(f"  {'ok  ' if row['ok'] else 'FAIL'} B={b} T={t:<6d} H={h} D={dk}  fwd / fwd+bwd ms   {cells}", flush=True)
  return rows


# -- the verdict ------------------------------------------------------------------------------------
def verdict(result: dict) -> tuple[bool, list[str]]:
  """``(go, failed)`` from a result: every kernel and train-step row ok, and the speed rows' Pallas runs."""
  failed = []
  for row in result.get("kernel", []):
    if not row["ok"]:
      failed.append(f"kernel T={row['T']} Dk={row['Dk']} Dv={row['Dv']} C={row['chunk']} {row['dtype']}"
                    + (f" ({row['error']})" if "error" in row else f" ({len(row['failed'])} outputs over the bound)"))
  for row in result.get("train_step", []):
    if not row["ok"]:
      failed.append(f"train step N={row['n_passes']}" + (f" ({row['error']})" if "error" in row
                                                         else f" ({'; '.join(row['failed'][:3])})"))
  for row in result.get("speed", []):
    if not row["ok"]:
      failed.append(f"speed T={row['T']} ({row['error']})")
  if not result.get("kernel") or not result.get("train_step"):
    failed.append("a check did not run")
  return not failed, failed


def host_info() -> dict:
  """Where this runs: host, backend, device, versions and the XLA flags in force."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return dict(host=platform.node(), backend=jax.default_backend(), device=str(devices[0].device_kind),
              devices=len(devices), jax=jax.__version__, jaxlib=jaxlib.__version__,
              python=platform.python_version(), xla_flags=os.environ.get("XLA_FLAGS", ""))


def main(argv) -> int:
  """Runs the check (see the module docstring); returns the exit status, 0 for GO and 1 for NO-GO."""
  parser = argparse.ArgumentParser(prog="python -m launch.bench gpu", description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, type=cli.user_path, help="write the results as JSON here")
  parser.add_argument("--interpret", action="store_true",
                      help="run every Pallas kernel in interpret mode at tiny sizes (a CPU dry run of this script)")
  parser.add_argument("--skip_speed", "--skip-speed", action="store_true", help="skip the timings")
  parser.add_argument("--deadline_s", type=float, default=DEADLINE_S,
                      help="skip (and fail) what is left after this many seconds")
  args = parser.parse_args(argv)
  start = time.monotonic()
  deadline = start + args.deadline_s
  from sleep_jax.ops.gated_delta import pallas  # pylint: disable=import-outside-toplevel
  info = host_info()
  accelerator = info["backend"] in _ACCELERATORS
  backend = pallas.resolve_backend(None)
  plan = plan_for(args.interpret)
  result = dict(info, mode="interpret" if args.interpret else "compiled", pallas_backend=backend)
  print(f"accelerator check | {info['device']} x{info['devices']} ({info['backend']}) | jax {info['jax']} | "
        f"python {info['python']} | XLA_FLAGS={info['xla_flags'] or '(unset)'}")
  if not accelerator and not args.interpret:
    line = (f"NO-GO: no GPU or TPU backend found (jax.default_backend() is {info['backend']!r}); nothing was "
            "checked. --interpret runs the same checks interpreted at tiny sizes (a dry run of this script)")
    print(f"no GPU or TPU backend found: jax.default_backend() is {info['backend']!r}. On an accelerator host "
          "this would run:")
    print("\n".join(describe(plan_for(False), "triton (GPU) / mosaic (TPU)", False)))
    result.update(go=False, failed=["no GPU or TPU backend"], summary=line)
    _write(args.out, result)
    print(line)
    return 1
  if args.interpret:
    print(f"interpret mode: a dry run of this script at tiny sizes"
          f"{'' if accelerator else ' (no GPU or TPU backend found)'}; it checks nothing about a device")
  print("\n".join(describe(plan, backend, args.interpret)))
  seconds = result["seconds"] = {}
  t0 = time.monotonic()
  print("kernel:")
  result["kernel"] = check_kernel(plan, backend, args.interpret, deadline)
  seconds["kernel"] = time.monotonic() - t0
  t0 = time.monotonic()
  print("train step (pallas vs chunked):")
  result["train_step"] = check_train_step(plan, deadline)
  result["train_step_pallas_interpret"] = pallas.resolve_interpret(None, backend)
  seconds["train_step"] = time.monotonic() - t0
  t0 = time.monotonic()
  if args.skip_speed:
    result["speed"] = []
    print("speed: skipped (--skip_speed)")
  else:
    print(f"speed (fwd / fwd+bwd ms, median of {plan.repeats}):")
    result["speed"] = time_speed(plan, backend, args.interpret, deadline)
    result["fla"] = fla_skip_reason() or "timed"
  seconds["speed"] = time.monotonic() - t0
  result["elapsed_s"] = time.monotonic() - start
  go, failed = verdict(result)
  n_kernel = sum(r["ok"] for r in result["kernel"])
  n_step = sum(r["ok"] for r in result["train_step"])
  where = (f"interpret-mode dry run on {info['backend']}, not a device check" if args.interpret
           else f"compiled Pallas {backend} on {info['device']}")
  if go:
    line = (f"GO: kernel {n_kernel}/{len(result['kernel'])} cases within the float64-oracle bounds, train step "
            f"pallas = chunked at N in {list(plan.n_passes)}; {where}; {result['elapsed_s']:.0f} s")
  else:
    line = f"NO-GO: {'; '.join(failed)} [{where}]"
  result.update(go=go, failed=failed, summary=line,
                counts=dict(kernel_ok=n_kernel, kernel=len(result["kernel"]), train_step_ok=n_step,
                            train_step=len(result["train_step"])))
  _write(args.out, result)
  print(line)
  return 0 if go else 1


def _jsonable(x):
  """``x`` with non-finite floats as strings ("inf", "nan"), which strict JSON has no words for."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else str(float(x))
  if isinstance(x, (np.integer, np.bool_)):
    return x.item()
  return x


def _write(path, result) -> None:
  if not path:
    return
  with open(path, "w", encoding="utf-8") as f:
    json.dump(_jsonable(result), f, indent=1, default=str, allow_nan=False)
  print(f"wrote {path}")
