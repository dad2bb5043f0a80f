"""TensorBoard event files and the profiler trace of a run, read back with TensorBoard's own reader."""
import glob
import math
import os

import numpy as np
import pytest

from sleep_jax.train import config as tcfg
from sleep_jax.train import loop, metrics as metrics_lib
from sleep_jax.train import tensorboard as tb_lib
from train_helpers import TinyLM, make_grain_iter, tiny_loss

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")

BATCH = 8


def _read(logdir):
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _texts(acc, tag):
  return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def _hparams(acc):
  content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
  return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


class DepthEvaluator:
  """Token accuracy and loss overall and per 'depth' (here: the target token mod 3)."""

  def __init__(self):
    self.hit, self.loss, self.n = {}, {}, {}

  def update(self, batch, predictions, token_loss):
    m = np.asarray(batch["loss_mask"]) > 0
    depth = np.asarray(batch["targets"]) % 3
    for d in (None, 0, 1, 2):
      sel = m if d is None else m & (depth == d)
      self.hit[d] = self.hit.get(d, 0.0) + float(np.sum((predictions == batch["targets"]) & sel))
      self.loss[d] = self.loss.get(d, 0.0) + float(np.sum(token_loss * sel))
      self.n[d] = self.n.get(d, 0.0) + float(np.sum(sel))

  def result(self):
    out = {}
    for d in self.n:
      suffix = "" if d is None else f"/depth={d}"
      out["accuracy" + suffix] = self.hit[d] / max(self.n[d], 1.0)
      out["loss" + suffix] = self.loss[d] / max(self.n[d], 1.0)
    return out


def test_writer_scalars_text_hparams_round_trip(tmp_path):
  w = tb_lib.TensorBoardWriter(str(tmp_path), enabled=True)
  w.hparams({"model": {"d_model": 64, "layout": ("attn", "gdn")}, "lr": 1e-3, "kind": "adamw", "remat": True,
             "init_from": None})
  w.write({"kind": "train", "step": 2, "tokens": 10, "loss": 1.5, "loss_finite": True, "lr/adamw": 0.1})
  w.write({"kind": "train", "step": 4, "tokens": 20, "loss": 1.25, "loss_finite": True, "lr/adamw": 0.05})
  w.write({"kind": "eval", "step": 4, "tokens": 20, "accuracy": 0.5, "accuracy/depth=1": 1.0,
           "accuracy/depth=2": 0.25, "loss/depth=1": 0.1, "loss/depth=2": 2.0, "eval/batches": 3.0})
  w.write({"kind": "stop", "step": 5, "tokens": 25, "reason": "non-finite loss at step 5", "quantity": "loss"})
  w.close()
  w.close()  # idempotent
  acc = _read(str(tmp_path))
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(2, 1.5), (4, 1.25)]
  assert [e.value for e in acc.Scalars("lr/adamw")] == pytest.approx([0.1, 0.05])
  assert "loss_finite" not in acc.Tags()["scalars"] and "tokens" not in acc.Tags()["scalars"]
  assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy/depth_2")] == [(4, 0.25)]
  assert tb_lib.tag("accuracy/depth=2", "eval/") == "eval/accuracy/depth_2"
  assert [e.value for e in acc.Scalars("eval/batches")] == [3.0]  # already prefixed: not eval/eval/
  [(step, table)] = _texts(acc, "eval/depth_table")
  assert step == 4 and "| 1 | 1.0000 | 0.1000 |" in table and "| 2 | 0.2500 | 2.0000 |" in table
  assert "| all | 0.5000 |  |" in table  # no overall loss in this record: a blank cell
  assert _texts(acc, "stop") == [(5, "non-finite loss at step 5")]
  assert _hparams(acc) == {"model.d_model": 64.0, "model.layout": "attn,gdn", "lr": 1e-3, "kind": "adamw",
                           "remat": True, "init_from": "None"}
  [(_, config_table)] = _texts(acc, "config")
  assert "| model.d_model | 64 |" in config_table


def test_disabled_writer_writes_nothing(tmp_path):
  w = tb_lib.TensorBoardWriter(str(tmp_path / "tb"), enabled=False)
  w.hparams({"a": 1})
  w.write({"kind": "train", "step": 1, "loss": 1.0})
  w.close()
  assert not os.path.exists(tmp_path / "tb")


def test_depth_table_without_depths_is_none():
  assert tb_lib.depth_table_markdown({"accuracy": 1.0}) is None


def test_profile_steps_validation():
  opt = tcfg.OptimizerConfig(kind="adamw")
  assert tcfg.TrainConfig(num_steps=4, batch_size=2, optimizer=opt, profile_steps=[1, 3]).profile_steps == (1, 3)
  for bad in ((3, 3), (-1, 2), (1, 2, 3)):
    with pytest.raises(ValueError, match="profile_steps"):
      tcfg.TrainConfig(num_steps=4, batch_size=2, optimizer=opt, profile_steps=bad)


def test_launch_parses_profile_steps():
  from launch import experiment
  from launch.configs import rule110_small
  cfg = rule110_small.get_config()
  assert experiment.experiment_from_config(cfg).train.profile_steps is None
  cfg.train.profile_steps = (2, 4)  # the typed field; the command line gives --config.train.profile_steps=2,4
  assert experiment.experiment_from_config(cfg).train.profile_steps == (2, 4)
  # An older config.json spelled it "start,stop".
  old = cfg.to_dict()
  old["train"]["profile_steps"] = "2,4"
  assert experiment.experiment_from_config(old).train.profile_steps == (2, 4)


def test_training_run_writes_event_files_and_profile(tmp_path):
  opt = tcfg.OptimizerConfig(kind="adamw", lr=1e-2, adamw_lr=1e-2, warmup_steps=1)
  config = tcfg.TrainConfig(num_steps=6, batch_size=BATCH, optimizer=opt, log_every=2, eval_every=4,
                            checkpoint_every=0, num_devices=1, progress=False, profile_steps=(1, 3))
  spec = loop.RunSpec(model_factory=TinyLM, loss_fn=tiny_loss, train_data=lambda: make_grain_iter(BATCH, seed=3),
                      eval_data=lambda: (next(make_grain_iter(BATCH, seed=99)) for _ in range(2)),
                      evaluator=DepthEvaluator, meta={"task": "copy", "n_passes": 2})
  workdir = str(tmp_path)
  loop.train(spec, config, workdir)

  acc = _read(workdir)
  train = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
  evals = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"), "eval")
  assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in evals] == [4, 6]
  # Every scalar of the JSONL records is in the event file, same step, same value (float32).
  for rec, prefix in [(r, "") for r in train] + [(r, "eval/") for r in evals]:
    for key, value in rec.items():
      if key in ("kind", "step", "tokens") or isinstance(value, bool):
        continue
      got = {e.step: e.value for e in acc.Scalars(tb_lib.tag(key, prefix))}
      assert got[rec["step"]] == pytest.approx(value, rel=1e-6, abs=1e-30) or (math.isnan(value)
                                                                               and math.isnan(got[rec["step"]]))
  tables = dict(_texts(acc, "eval/depth_table"))
  assert sorted(tables) == [4, 6]
  final = evals[-1]
  assert f"| 2 | {final['accuracy/depth=2']:.4f} | {final['loss/depth=2']:.4f} |" in tables[6]
  hp = _hparams(acc)
  assert hp["task"] == "copy" and hp["n_passes"] == 2.0
  assert hp["train.num_steps"] == 6.0 and hp["train.optimizer.kind"] == "adamw"
  assert hp["train.profile_steps"] == "1,3"

  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
