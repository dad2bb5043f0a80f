"""train_step: data parallel over 1/2/4 fake CPU devices == one plain jit; optimizer groups; NaN guard."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sleep_jax.testing import assert_close
from sleep_jax.train import config as tcfg
from sleep_jax.train import optimizer as topt
from sleep_jax.train import parallel, state as tstate, step as tstep
from train_helpers import TinyLM, make_batch, tiny_loss

BATCH = 8
STEPS = 3


def _run(tx, schedules, n_devices, steps=STEPS):
  graphdef, state = tstate.create_train_state(TinyLM, tx, seed=0)
  make = lambda axis: tstep.make_train_step(tiny_loss, tx, graphdef, schedules=schedules, axis_name=axis)
  if n_devices is None:
    fn = jax.jit(make(None))
    put = lambda b: b
  else:
    mesh = parallel.make_data_mesh(n_devices)
    fn = parallel.data_parallel_train_step(make(parallel.DATA_AXIS), mesh, schedule_names=tuple(schedules))
    state = parallel.replicate(state, mesh)
    put = lambda b: parallel.shard_batch(b, mesh)
  losses, norms = [], []
  for i in range(steps):
    state, m = fn(state, put(make_batch(i, BATCH)))
    losses.append(float(m["loss"]))
    norms.append(float(m["grad_norm"]))
  return state, np.array(losses), np.array(norms)


@pytest.mark.parametrize("kind", ["sgd", "muon_adamw"])
def test_data_parallel_matches_single_device(kind):
  if kind == "sgd":
    # Plain SGD makes the update proportional to the gradient, so a wrong
    # gradient scale (n_devices x) shows up directly in the parameters.
    tx, schedules = optax.sgd(0.5), {}
  else:
    opt = topt.make_optimizer(tcfg.OptimizerConfig(kind="muon_adamw", lr=2e-2, adamw_lr=1e-2, warmup_steps=1),
                              STEPS)
    tx, schedules = opt.tx, opt.schedules
  ref_state, ref_loss, ref_norm = _run(tx, schedules, None)
  # Mesh sizes 2 and 4 for plain SGD (the gradient-scale check); 4 for Muon+AdamW to bound compile time.
  for n in ((2, 4) if kind == "sgd" else (4,)):
    state, loss, norm = _run(tx, schedules, n)
    assert_close(ref_loss, loss, "float32", what=f"loss on {n} devices")
    assert_close(ref_norm, norm, "float32", what=f"grad norm on {n} devices")
    assert_close(ref_state.params, jax.device_get(state.params), "float32", what=f"params on {n} devices")
  assert not np.allclose(ref_loss[0], ref_loss[-1]), "training did not move the loss"


def test_param_groups_route_hidden_matrices_to_muon():
  _, state = tstate.create_train_state(TinyLM, optax.sgd(0.1), seed=0)
  groups = topt.describe_param_groups(state.params, tcfg.OptimizerConfig())
  assert groups["muon"] == ["hidden/kernel"]
  assert sorted(groups["adamw"]) == ["embed/embedding", "hidden/bias", "lm_head/kernel", "norm/scale"]
  groups = topt.describe_param_groups(state.params, tcfg.OptimizerConfig(kind="adamw"))
  assert groups["muon"] == []


def test_nonfinite_step_keeps_state_and_reports():
  tx = optax.sgd(0.1)
  graphdef, state = tstate.create_train_state(TinyLM, tx, seed=0)
  fn = jax.jit(tstep.make_train_step(tiny_loss, tx, graphdef))
  params = jax.device_get(state.params)
  bad = make_batch(0, BATCH)
  bad["loss_mask"] = bad["loss_mask"] * np.float32(np.nan)
  new, m = fn(state, bad)
  assert not bool(m["loss_finite"])
  assert_close(params, jax.device_get(new.params), "float32", what="params after a NaN step")


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="OptimizerConfig.kind"):
    tcfg.OptimizerConfig(kind="sgd")
  with pytest.raises(ValueError, match="TrainConfig.batch_size"):
    tcfg.TrainConfig(num_steps=1, batch_size=0)
  with pytest.raises(ValueError, match="sync_every"):
    tcfg.TrainConfig(num_steps=1, batch_size=4, sync_every=40)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.check_batch_size(6, parallel.make_data_mesh(4))
  with pytest.raises(ValueError, match="num_devices"):
    parallel.make_data_mesh(64)


def test_hybrid_model_param_groups():
  from flax import nnx
  from sleep_jax.config import ModelConfig
  from sleep_jax.model import HybridLM
  cfg = ModelConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=2, head_dim=16, gdn_head_dim=16)
  _, params, _ = nnx.split(nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
  groups = topt.describe_param_groups(params, tcfg.OptimizerConfig())
  muon = set(groups["muon"])
  for name in ("blocks/0/mixer/q_proj/kernel", "blocks/0/mlp/up/kernel", "blocks/1/mixer/v_proj/kernel",
               "blocks/1/mixer/o_proj/kernel"):
    assert name in muon, name
  for name in ("embed/embedding", "lm_head/kernel", "blocks/1/mixer/a_proj/kernel", "blocks/1/mixer/b_proj/kernel",
               "blocks/1/mixer/conv_weight", "blocks/1/mixer/A_log", "final_norm/scale"):
    assert name in groups["adamw"], name
