"""The loop: resume is bit-exact, NaN/inf stops with a clear message, init_from copies params."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from sleep_jax.train import checkpoint as ckpt_lib
from sleep_jax.train import config as tcfg
from sleep_jax.train import loop, metrics as metrics_lib
from train_helpers import CountingEvaluator, PoisonAt, TinyLM, make_grain_iter, poison_loss, tiny_loss

BATCH = 8


def _spec(poison=None, loss_fn=tiny_loss, with_eval=True):
  def data():
    it = make_grain_iter(BATCH, seed=3)
    return PoisonAt(it, *poison) if poison else it
  # Runs whose final evaluation is not checked skip it (one compile less).
  return loop.RunSpec(model_factory=TinyLM, loss_fn=loss_fn, train_data=data,
                      eval_data=(lambda: (next(make_grain_iter(BATCH, seed=99)) for _ in range(2))) if with_eval
                      else None,
                      evaluator=CountingEvaluator,
                      sleep_cost=lambda m: metrics_lib.sleep_cost(m, window=4, n_passes=2), meta={"test": 1})


def _config(num_steps, kind="adamw", **kw):
  # decay_steps is fixed so a run stopped at k steps has the same schedule as the straight run.
  opt = tcfg.OptimizerConfig(kind=kind, lr=1e-2, adamw_lr=1e-2, warmup_steps=2, decay_steps=8)
  kw.setdefault("num_devices", 2)
  return tcfg.TrainConfig(num_steps=num_steps, batch_size=BATCH, optimizer=opt, log_every=2, checkpoint_every=3,
                          progress=False, **kw)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _next_batches(workdir, k=2):
  it = make_grain_iter(BATCH, seed=3)
  it.set_state(ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir)).latest_data_state())
  return [next(it)["index"] for _ in range(k)]


def test_resume_is_bit_exact(tmp_path):
  straight = loop.train(_spec(), _config(8, "muon_adamw"), str(tmp_path / "straight"))
  part = loop.train(_spec(with_eval=False), _config(5, "muon_adamw"), str(tmp_path / "resumed"))
  assert part.resumed_from is None
  resumed = loop.train(_spec(), _config(8, "muon_adamw"), str(tmp_path / "resumed"))
  assert resumed.resumed_from == 5
  for a, b in zip(_leaves(straight.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(_next_batches(str(tmp_path / "straight")), _next_batches(str(tmp_path / "resumed")))
  assert straight.eval["accuracy"] == resumed.eval["accuracy"]
  recs = metrics_lib.read_jsonl(str(tmp_path / "straight" / "metrics.jsonl"), "train")
  assert [r["step"] for r in recs] == [2, 4, 6, 8]
  for key in ("loss", "grad_norm", "lr/muon", "lr/adamw", "tokens_per_s", "sleep/relative_cost", "train/accuracy"):
    assert key in recs[-1], key
  assert json.load(open(tmp_path / "straight" / "eval.json"))["step"] == 8


@pytest.mark.parametrize("what,quantity", [pytest.param("loss", "loss", marks=pytest.mark.slow),
                                           ("grads", "gradients")])
def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path, what, quantity):
  with pytest.raises(metrics_lib.NonFiniteError, match=f"non-finite {quantity} at step 4") as e:
    loop.train(_spec(poison=(4, what), loss_fn=poison_loss, with_eval=False), _config(8, num_devices=1),
               str(tmp_path))
  assert e.value.step == 4 and e.value.last_checkpoint == 3
  assert ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(tmp_path))).steps() == [3]
  stop = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"), "stop")
  assert stop and stop[0]["step"] == 4 and stop[0]["quantity"] == quantity


def test_init_from_copies_params_only(tmp_path):
  base = loop.train(_spec(with_eval=False), _config(3, num_devices=1), str(tmp_path / "base"))
  cfg = dataclasses.replace(_config(0, num_devices=1), init_from=str(tmp_path / "base"))
  child = loop.train(_spec(with_eval=False), cfg, str(tmp_path / "child"))
  for a, b in zip(_leaves(base.state.params), _leaves(child.state.params)):
    np.testing.assert_array_equal(a, b)
  assert int(child.state.step) == 0
  with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
    ckpt_lib.load_params(str(tmp_path / "nope"), base.state.params)
  # A corrupt checkpoint directory is reported by name, not crashed on.
  for root, _, files in os.walk(os.path.join(tmp_path, "base", "checkpoints", "3", "state")):
    for f in files:
      open(os.path.join(root, f), "wb").write(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint in .*base/checkpoints restores"):
    loop.train(_spec(), _config(4, num_devices=1), str(tmp_path / "base"))
  with pytest.raises(ckpt_lib.CheckpointError, match="init_from: no checkpoint in .* restores"):
    ckpt_lib.load_params(str(tmp_path / "base"), base.state.params)


def test_sleep_cost_prices_what_runs():
  # Windows of 4 over T = 10: [0,4) and [4,8) sleep, [8,10) predicts.
  mask = np.zeros((2, 10), np.float32)
  mask[:, 8] = 1.0
  # N = 0 forgets the window but its wake pass has run: one stack pass, as N = 1.
  for n in (0, 1):
    cost = metrics_lib.sleep_cost(mask, window=4, n_passes=n)
    assert cost["sleep/block_passes"] == 3.0 and cost["sleep/relative_cost"] == 1.0, n
  assert metrics_lib.sleep_cost(mask, window=4, n_passes=3)["sleep/block_passes"] == 2 * 3 + 1
  # Prelude 1, core 2, coda 1 blocks, N = 3: a sleeping window runs the prelude
  # once, the core 3 times and the coda twice (wake, then after the last pass).
  from sleep_jax.config import ModelConfig
  cfg = ModelConfig(vocab_size=5, n_layers=4, prelude=1, coda=1)
  cost = metrics_lib.sleep_cost(mask, window=4, n_passes=3, model_config=cfg)
  assert cost["sleep/block_passes"] == 2 * (1 + 3 * 2 + 2 * 1) / 4 + 1
  cost = metrics_lib.sleep_cost(mask, window=4, n_passes=0, model_config=cfg)
  assert cost["sleep/block_passes"] == 3.0
