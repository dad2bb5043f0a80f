"""Training throughput of the default CPU config: N = 1, N = 4 and a plain transformer of the same size.

  python -m launch.bench train [--quick] [--steps=20] [--batch_size=128] [--config=launch/configs/rule110_small.py]

All three are trained by the same jitted, data-parallel train step
(``sleep_jax.train``) on the same batches (drawn once, so data generation is
not timed). Prints compile time, seconds per step, tokens/s and the ratio to
N = 1, side by side.
"""
from __future__ import annotations

import argparse
import importlib.util
import time


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(cfg, steps: int, warmup: int = 2) -> dict:
  """Compile time and steady-state step time of one config's train step."""
  import jax
  from launch import experiment
  from sleep_jax.train import optimizer as opt_lib
  from sleep_jax.train import parallel
  from sleep_jax.train import state as state_lib
  from sleep_jax.train import step as step_lib

  exp = experiment.experiment_from_config(cfg)
  spec = experiment.build_run_spec(exp)
  mesh = parallel.make_data_mesh(exp.train.num_devices)
  opt = opt_lib.make_optimizer(exp.train.optimizer, exp.train.num_steps)
  graphdef, state = state_lib.create_train_state(spec.model_factory, opt.tx, exp.train.seed)
  state = parallel.replicate(state, mesh)
  fn = parallel.data_parallel_train_step(
      step_lib.make_train_step(spec.loss_fn, opt.tx, graphdef, schedules=opt.schedules,
                               axis_name=parallel.DATA_AXIS), mesh, schedule_names=tuple(opt.schedules))
  it = spec.train_data()
  batches = [parallel.shard_batch(next(it), mesh) for _ in range(4)]
  t0 = time.perf_counter()
  state, m = fn(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    state, m = fn(state, batches[i % 4])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = fn(state, batches[i % 4])
    if (i + 1) % 16 == 0:  # several CPU devices deadlock with many collective steps in flight
      jax.block_until_ready(m)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  tokens = exp.train.batch_size * exp.task.seq_len(exp.task_config)
  return {"compile_s": compile_s, "step_s": step_s, "tokens_per_s": tokens / step_s,
          "params": state_lib.count_params(state.params), "seq_len": exp.task.seq_len(exp.task_config),
          "window": exp.sleep.window}


def main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.bench train", description=__doc__.splitlines()[0])
  p.add_argument("--config", default="launch/configs/rule110_small.py")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  p.add_argument("--quick", action="store_true", help="5 timed steps")
  args = p.parse_args(argv)
  steps = 5 if args.quick else args.steps
  if steps < 1:
    p.error(f"--steps must be >= 1, got {steps}")
  import jax
  variants = [("hybrid N=1", 1, False), ("hybrid N=4", 4, False), ("transformer", 1, True)]
  results = {}
  for name, n, plain in variants:
    cfg = _load_config(args.config)
    cfg.sleep.n_passes = n
    cfg.plain_transformer = plain
    if args.batch_size:
      cfg.train.batch_size = args.batch_size
    results[name] = measure(cfg, steps)
    print(f"measured {name}", flush=True)
  base = results["hybrid N=1"]["tokens_per_s"]
  cfg = _load_config(args.config)
  print(f"\ntrain throughput, {args.config}, batch {args.batch_size or cfg.train.batch_size}, {steps} timed steps, "
        f"backend {jax.default_backend()} x{jax.device_count()}")
  print(f"{'variant':<14} {'params':>8} {'L':>4} {'compile s':>10} {'s/step':>8} {'tokens/s':>10} {'vs N=1':>7}")
  for name, r in results.items():
    print(f"{name:<14} {r['params']:>8} {r['window']:>4} {r['compile_s']:>10.1f} {r['step_s']:>8.3f} "
          f"{r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / base:>7.2f}")
  return 0
