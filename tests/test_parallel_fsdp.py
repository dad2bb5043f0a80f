"""FSDP layout (TrainConfig.fsdp): parameters and optimizer state sharded over 4 fake CPU devices.

The sharded step must give the replicated data-parallel step's loss, gradient
norm, parameters and optimizer state after several steps. They differ only in
reduction order (the gradient's reduce-scatter against a psum, the norm and the
optimizer's reductions over shards), so they are compared with the float32
tolerance row (measured with Muon + AdamW at N = 2: losses within 5e-7, parameters within 3e-8).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sleep_jax import HybridLM, ModelConfig, SleepConfig
from sleep_jax.cost import state_memory
from sleep_jax.testing import assert_close
from sleep_jax.train import optimizer as opt_lib
from sleep_jax.train import parallel
from sleep_jax.train import state as state_lib
from sleep_jax.train.config import OptimizerConfig
from sleep_jax.windowed import WindowedLoss

VOCAB, T, L, B = 32, 16, 8, 8


def test_fsdp_spec_splits_the_largest_divisible_axis():
  assert parallel.fsdp_spec((64, 128), 4) == P(None, "data")
  assert parallel.fsdp_spec((128, 64), 4) == P("data")
  assert parallel.fsdp_spec((30, 66), 4) == P()          # no axis divides
  assert parallel.fsdp_spec((64,), 4) == P()             # too small to be worth a collective
  assert parallel.fsdp_spec((), 4) == P()
  assert parallel.fsdp_spec((64, 128), 1) == P()


def _batches(n):
  rng = np.random.default_rng(0)
  mask = np.concatenate([np.zeros((B, L)), np.ones((B, T - L))], 1).astype(np.float32)
  for _ in range(n):
    t = rng.integers(0, VOCAB, (B, T + 1)).astype(np.int32)
    yield {"tokens": t[:, :-1], "targets": t[:, 1:], "loss_mask": mask}


@pytest.mark.parametrize("kind", ["adamw"])
def test_fsdp_step_equals_replicated_step(kind):
  assert jax.device_count() >= 4
  cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=2, head_dim=32, gdn_head_dim=32,
                    mlp_hidden=128)
  opt = opt_lib.make_optimizer(OptimizerConfig(kind=kind, adamw_lr=1e-2, warmup_steps=1), 10)
  graphdef, state = state_lib.create_train_state(lambda r: HybridLM(cfg, rngs=r), opt.tx, 0)
  mesh = parallel.make_data_mesh(4)
  # N = 1: the cheapest program to compile; the layout does not depend on the loss.
  loss_fn = WindowedLoss(SleepConfig(window=L, n_passes=1), sleep_schedule=(True, False))
  replicated_step = parallel.make_data_parallel_train_step(loss_fn, opt, graphdef, mesh, donate=False)
  fsdp_step = parallel.make_fsdp_train_step(loss_fn, opt, graphdef, mesh, jax.eval_shape(lambda: state),
                                            donate=False)
  rep, fs = parallel.replicate(state, mesh), parallel.shard_fsdp(state, mesh)

  rep_bytes, fsdp_bytes = parallel.bytes_per_device(rep), parallel.bytes_per_device(fs)
  print(f"train state bytes on device 0: replicated {rep_bytes}, fsdp {fsdp_bytes}")
  assert fsdp_bytes < 0.4 * rep_bytes
  sharded = [x for x in jax.tree.leaves(fs.params) if "data" in tuple(x.sharding.spec)]
  assert len(sharded) >= 10
  # The cost model's per-device state bytes are these arrays' (the optimizer's step counters aside).
  for placed, fsdp in ((rep, False), (fs, True)):
    mem = state_memory(cfg, optimizer=kind, n_devices=4, fsdp=fsdp)
    assert mem.params == parallel.bytes_per_device(placed.params)
    assert 0 <= parallel.bytes_per_device(placed.opt_state) - mem.optimizer <= 64

  for batch in _batches(2):
    batch = parallel.shard_batch(batch, mesh)
    rep, m_rep = replicated_step(rep, batch)
    fs, m_fs = fsdp_step(fs, batch)
    assert_close(m_rep["loss"], m_fs["loss"], "float32", what="loss")
    assert_close(m_rep["grad_norm"], m_fs["grad_norm"], "float32", what="grad_norm")
  assert_close(rep.params, fs.params, "float32", what="params after 2 steps")
  assert_close(rep.opt_state, fs.opt_state, "float32", what="optimizer state after 2 steps")
  # The update moved the parameters (so equal parameters are not equal initial ones).
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(fs.params)))
  assert moved > 1e-3
  # Still sharded after the steps (the jit's out_shardings).
  assert all(x.sharding.spec == y.sharding.spec for x, y in zip(jax.tree.leaves(fs.params),
                                                                  jax.tree.leaves(parallel.shard_fsdp(state, mesh).params)))


@pytest.mark.slow  # three trainer runs on 4 devices (about 30 s of CPU); the step itself is tested above
def test_trainer_with_fsdp_resumes_and_matches_the_replicated_run(tmp_path):
  """loop.train with TrainConfig.fsdp: stopped at step 5 and resumed (the checkpoint restores into the sharded
  layout), it ends where the replicated run of 8 steps does."""
  from train_helpers import TinyLM, make_grain_iter, tiny_loss

  from sleep_jax.train import config as tcfg
  from sleep_jax.train import loop

  spec = loop.RunSpec(model_factory=lambda r: TinyLM(r, width=64), loss_fn=tiny_loss,
                      train_data=lambda: make_grain_iter(8, seed=3))

  def config(steps, fsdp):
    opt = tcfg.OptimizerConfig(kind="adamw", adamw_lr=1e-2, warmup_steps=2, decay_steps=8)
    return tcfg.TrainConfig(num_steps=steps, batch_size=8, optimizer=opt, log_every=2, checkpoint_every=3,
                            progress=False, num_devices=4, fsdp=fsdp)

  replicated = loop.train(spec, config(8, False), str(tmp_path / "replicated"))
  loop.train(spec, config(5, True), str(tmp_path / "fsdp"))
  resumed = loop.train(spec, config(8, True), str(tmp_path / "fsdp"))
  assert resumed.resumed_from == 5
  hidden = resumed.state.params["hidden"]["kernel"]
  assert "data" in tuple(hidden.sharding.spec)
  assert_close(replicated.state.params, resumed.state.params, "float32", what="params after 8 steps")
  assert_close(replicated.state.opt_state, resumed.state.opt_state, "float32", what="optimizer state")
