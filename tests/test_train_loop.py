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
                      evaluator=CountingEvaluator, meta={"test": 1})


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
  for key in ("loss", "grad_norm", "lr/muon", "lr/adamw", "tokens_per_s", "train/accuracy"):
    assert key in recs[-1], key
  assert not any(k.startswith("sleep/") for k in recs[-1])  # the tiny loss reports no compute
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


def test_train_record_prices_the_step_from_its_reported_flops():
  m = {"loss": np.float32(0.5), "sleep/wake_flops": np.float32(10.0), "sleep/sleep_flops": np.float32(25.0),
       "sleep/passes": np.float32(3.5), "sleep/sleep_windows": np.float32(2.0), "sleep/n_passes": np.float32(4.0),
       "predictions": np.zeros((2, 3)), "token_loss": np.zeros((2, 3))}
  rec = loop.train_record(m, step=4, tokens=40, steps_per_s=2.0, tokens_per_s=20.0)
  assert rec["sleep/relative_cost"] == 3.5 and rec["sleep/passes"] == 3.5  # (10 + 25) / 10
  assert rec["kind"] == "train" and (rec["step"], rec["tokens"], rec["steps_per_s"]) == (4, 40, 2.0)
  assert "predictions" not in rec and "token_loss" not in rec
  # A loss that reports no compute leaves zero placeholders: they are dropped, not logged as a cost of 1.
  zeros = {k: np.float32(0) for k in m if k.startswith("sleep/")}
  quiet = loop.train_record({**m, **zeros}, step=1, tokens=0, steps_per_s=1.0, tokens_per_s=1.0)
  assert not any(k.startswith("sleep/") for k in quiet) and quiet["loss"] == 0.5
  # A model whose FLOPs cannot be counted reports its passes: they are kept, the zero FLOPs dropped.
  passes_only = loop.train_record({**m, "sleep/wake_flops": np.float32(0), "sleep/sleep_flops": np.float32(0)},
                                  step=1, tokens=0, steps_per_s=1.0, tokens_per_s=1.0)
  assert passes_only["sleep/n_passes"] == 4.0 and passes_only["sleep/passes"] == 3.5
  assert not any(k in passes_only for k in ("sleep/wake_flops", "sleep/sleep_flops", "sleep/relative_cost"))


class _ListWriter:
  def __init__(self):
    self.records = []

  def write(self, rec):
    self.records.append(rec)


def test_step_log_writes_one_record_per_logging_step_and_stops_at_a_non_finite_step():
  writer, ticks = _ListWriter(), iter([0.0, 2.0, 2.0])
  steps = loop.StepLog(writer, batch_size=2, clock=lambda: next(ticks))
  batch = {"tokens": np.zeros((2, 5), np.int32)}
  good = {"loss": np.float32(1.0), "loss_finite": np.bool_(True), "grads_finite": np.bool_(True)}
  steps.add(0, good, batch)
  steps.add(1, dict(good, loss=np.float32(0.25)), batch)
  assert len(steps) == 2
  steps.flush(False, None)  # a sync, not a logging step: nothing written, the pending steps are done
  assert writer.records == [] and len(steps) == 0
  steps.add(2, dict(good, loss=np.float32(0.5)), batch)
  steps.flush(True, None)
  (rec,) = writer.records
  # The record is the last pending step's; the rate counts the 3 steps since the window opened (t = 0 to 2 s).
  assert (rec["step"], rec["loss"], rec["tokens"]) == (3, 0.5, 3 * 2 * 5) and rec["steps_per_s"] == 1.5
  assert steps.last is rec and steps.tokens(3) == 30
  steps.add(3, dict(good, loss=np.float32(np.nan), loss_finite=np.bool_(False)), batch)
  with pytest.raises(metrics_lib.NonFiniteError):
    steps.flush(False, 3)
  assert writer.records[-1]["kind"] == "stop" and writer.records[-1]["step"] == 3


def test_train_steps_compile_one_step_per_distinct_loss(monkeypatch):
  class Drawn:
    def for_step(self, step, seed):
      return ("loss", (step + seed) % 2)

  built = []
  monkeypatch.setattr(loop.parallel, "make_data_parallel_train_step",
                      lambda loss, *a: built.append(loss) or (lambda: loss))
  steps = loop.TrainSteps(Drawn(), None, None, None, seed=1)
  assert [steps(s)() for s in range(4)] == [("loss", 1), ("loss", 0), ("loss", 1), ("loss", 0)]
  assert built == [("loss", 1), ("loss", 0)]  # one build per distinct loss
  plain = loop.TrainSteps(tiny_loss, None, None, None, seed=0)
  assert plain.loss_for(0) is tiny_loss and plain.loss_for(7) is tiny_loss


def test_evaluate_and_log_writes_one_eval_record_or_nothing_without_an_evaluator():
  writer = _ListWriter()
  batches = [{"tokens": np.zeros((2, 3), np.int32), "targets": np.zeros((2, 3), np.int32),
              "loss_mask": np.ones((2, 3), np.float32)}] * 3
  spec = loop.RunSpec(model_factory=None, loss_fn=None, train_data=None, eval_data=lambda: iter(batches),
                      evaluator=CountingEvaluator)
  seen = []
  eval_fn = lambda state, batch: seen.append(state) or {"predictions": np.zeros((2, 3)), "token_loss": np.ones((2, 3))}
  got = loop.evaluate_and_log(spec, eval_fn, "the state", writer, step=4, tokens=40, max_batches=2)
  assert seen == ["the state"] * 2  # the state given, at most max_batches batches
  (rec,) = writer.records
  assert (rec["kind"], rec["step"], rec["tokens"]) == ("eval", 4, 40) and {k: rec[k] for k in got} == got
  assert got["accuracy"] == 1.0 and got["eval/batches"] == 2.0  # zero predictions against zero targets
  no_eval = dataclasses.replace(spec, evaluator=None)
  assert loop.evaluate_and_log(no_eval, eval_fn, "s", writer, step=5, tokens=50, max_batches=None) == {}
  assert len(writer.records) == 1
