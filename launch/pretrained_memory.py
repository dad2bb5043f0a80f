r"""Memory of a training step of a 2 B-parameter Qwen3-Next-style hybrid, from XLA's compiled memory analysis.

  python -m launch.pretrained_memory --depth=4 --batch=1 [--n_passes=2 --seq_len=2048 --window=512]

The step (the trainer's data-parallel step on one device: Muon + AdamW,
``WindowedLoss`` with every window but the last sleeping, remat on) is
compiled from abstract inputs and never run, so it needs no memory itself. The
model has the widths of transformers' ``Qwen3NextConfig`` (width 2048, 16
query heads over 2 of 256 dims, GDN 16 key heads over 32 value heads of 128,
MLP 5632, vocabulary 151,936) with dense MLPs and ``depth`` blocks in the
3 GDN : 1 attention pattern. Compiling 24 blocks takes long on a small CPU; the
README's table fits ``temp`` bilinearly in depth and batch through depths 4
and 8 at batches 1 and 8 and adds the state (``sleep_jax.cost.state_memory``,
which equals XLA's argument bytes). One JSON line is printed.
"""
from __future__ import annotations

import json
import time

from absl import app, flags

_DEPTH = flags.DEFINE_integer("depth", 4, "Blocks (a multiple of 4: GDN, GDN, GDN, attention).")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_N = flags.DEFINE_integer("n_passes", 2, "Sleep passes N.")
_T = flags.DEFINE_integer("seq_len", 2048, "Sequence length T.")
_L = flags.DEFINE_integer("window", 512, "Window L (T / L windows, all but the last sleep).")


def qwen3_next_2b(depth: int):
  """The ``ModelConfig`` of a dense Qwen3-Next-style hybrid with ``depth`` blocks (24: 2.2 B parameters)."""
  from sleep_jax import ModelConfig
  return ModelConfig(vocab_size=151936, d_model=2048, n_layers=depth,
                     layout=tuple(("gdn", "gdn", "gdn", "attn") * (depth // 4)), n_heads=16, n_kv_heads=2,
                     head_dim=256, attn_output_gate=True, attn_qk_norm=True, rope_fraction=0.25,
                     norm_zero_centered=True, gdn_n_heads=32, gdn_n_key_heads=16, gdn_head_dim=128,
                     gdn_value_dim=128, mlp_hidden=5632, gdn_impl="chunked")


def step_memory(depth: int, batch: int, n_passes: int, seq_len: int, window: int) -> dict:
  """XLA's memory analysis (bytes) of one train step, compiled from abstract inputs."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from sleep_jax import HybridLM, SleepConfig
  from sleep_jax.train import optimizer as opt_lib
  from sleep_jax.train import parallel
  from sleep_jax.train import state as state_lib
  from sleep_jax.train.config import OptimizerConfig
  from sleep_jax.windowed import WindowedLoss

  cfg = qwen3_next_2b(depth)
  opt = opt_lib.make_optimizer(OptimizerConfig(), 10)
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
  state = state_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                               opt_state=jax.eval_shape(opt.tx.init, params),
                               rng=jax.ShapeDtypeStruct((2,), jnp.uint32), model_state=rest)
  n_windows = -(-seq_len // window)
  loss_fn = WindowedLoss(SleepConfig(window=window, n_passes=n_passes),
                         sleep_schedule=(True,) * (n_windows - 1) + (False,))
  step = parallel.make_data_parallel_train_step(loss_fn, opt, graphdef, parallel.make_data_mesh(1))
  batch_spec = {k: jax.ShapeDtypeStruct((batch, seq_len), dt) for k, dt in
                (("tokens", jnp.int32), ("targets", jnp.int32), ("loss_mask", jnp.float32))}
  t0 = time.perf_counter()
  m = step.lower(state, batch_spec).compile().memory_analysis()
  return dict(depth=depth, batch=batch, n_passes=n_passes, seq_len=seq_len, window=window,
              argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
              alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
              compile_s=round(time.perf_counter() - t0, 1))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DEPTH.value % 4 or _DEPTH.value < 4:
    raise app.UsageError("--depth must be a positive multiple of 4")
  print(json.dumps(step_memory(_DEPTH.value, _BATCH.value, _N.value, _T.value, _L.value)))


if __name__ == "__main__":
  app.run(main)
