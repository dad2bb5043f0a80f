"""launch.retrofit: a tiny all-attention run gets GDN blocks inserted, computes the same, and trains on with sleep."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from launch import experiment
from launch import retrofit
from launch_helpers import parse_config_file
from sleep_jax import testing
from sleep_jax.model import HybridLM
from sleep_jax.train import checkpoint as ckpt_lib
from sleep_jax.train.optimizer import path_str
from sleep_jax.windowed import WindowedLoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The source run's model, as launch.train flags over launch/configs/rule110_small.py.
MODEL_FLAGS = ["--config.model.d_model=16", "--config.model.n_layers=2", "--config.model.n_heads=1",
               "--config.model.head_dim=16", "--config.model.gdn_head_dim=16"]
# One device (the test process fakes four, conftest.py): the cheapest compile.
TRAIN_FLAGS = ["--config.train.num_steps=2", "--config.train.batch_size=2", "--config.train.num_devices=1",
               "--config.train.eval_batches=1", "--config.train.progress=False", "--config.train.log_every=1"]


def _flat(params):
  return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A plain-transformer (all-attention, whole-sequence) Rule 110 run of 2 steps, trained through the launch path."""
  wd = str(tmp_path_factory.mktemp("retrofit") / "attn")
  cfg = parse_config_file("launch/configs/rule110_small.py", *MODEL_FLAGS, *TRAIN_FLAGS,
                          "--config.plain_transformer=True")
  result = experiment.run(cfg, wd)
  assert result.step == 2 and set(experiment.experiment_from_config(cfg).model.block_types) == {"attn"}
  return wd


@pytest.fixture(scope="module")
def retrofitted(source):
  """``python -m launch.retrofit`` on the source run, as a user types it."""
  out = os.path.join(os.path.dirname(source), "attn_gdn")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-m", "launch.retrofit", f"--from_workdir={source}", "--insert=1,3",
                      f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return out, p.stdout


def _source_model(source):
  exp = experiment.experiment_from_config(experiment.load_run_config(source))
  model = HybridLM(exp.model, rngs=nnx.Rngs(0))
  nnx.update(model, ckpt_lib.load_params(source, nnx.split(model, nnx.Param, ...)[1]))
  return model


def test_retrofit_writes_the_new_layout_and_prints_the_flags(source, retrofitted):
  out, stdout = retrofitted
  layout = "attn,gdn,attn,gdn"
  meta = json.load(open(os.path.join(out, retrofit.RETROFIT_JSON)))
  assert meta["layout"] == layout and meta["positions"] == [1, 3] and meta["source_step"] == 2
  assert meta["source"] == source and meta["source_layout"] == "attn,attn" and meta["source_plain_transformer"]
  assert f"new layout: {layout}" in stdout
  flag_line = (f"--config.model.layout={layout} --config.model.n_layers=4 --config.plain_transformer=False "
               f"--config.train.init_from={out}")
  assert flag_line in [l.strip() for l in stdout.splitlines()]
  assert f"python -m launch.train --config={out}/config.py" in stdout
  # The printed flags over the source's own command and the generated config file build one experiment.
  by_flags = experiment.experiment_from_config(
      parse_config_file("launch/configs/rule110_small.py", *MODEL_FLAGS, *TRAIN_FLAGS, *flag_line.split()))
  by_file = experiment.experiment_from_config(parse_config_file(f"{out}/config.py"))
  for exp in (by_flags, by_file):
    assert exp.model.block_types == tuple(layout.split(",")) and not exp.plain_transformer
    assert exp.train.init_from == out
    # The task's own windowing now: L = 16 with hard eviction, not the baseline's whole sequence (17).
    assert (exp.sleep.window, exp.sleep.eviction, exp.sleep.n_passes) == (16, "hard", 1)
  assert by_flags.model == by_file.model and by_flags.sleep == by_file.sleep


def test_retrofitted_model_computes_the_source_function_under_the_windowing(source, retrofitted):
  # The source model and the retrofitted one, both under the task's eviction (L = 16, hard) with
  # N = 4 sleep passes: the inserted blocks add exactly zero, so logits and loss agree.
  out, _ = retrofitted
  exp = experiment.experiment_from_config(experiment.load_run_config(out))
  exp = dataclasses.replace(exp, sleep=dataclasses.replace(exp.sleep, n_passes=4))
  old = _source_model(source)
  new = HybridLM(exp.model, rngs=nnx.Rngs(1))
  written = ckpt_lib.load_params(out, nnx.split(new, nnx.Param, ...)[1])
  nnx.update(new, written)
  assert new.config.block_types == ("attn", "gdn", "attn", "gdn")
  old_p, new_p = _flat(nnx.split(old, nnx.Param, ...)[1]), _flat(nnx.split(new, nnx.Param, ...)[1])
  for name, value in old_p.items():  # source blocks 0, 1 -> new blocks 0, 2
    moved = name.replace("blocks/1/", "blocks/2/")
    np.testing.assert_array_equal(new_p[moved], value, err_msg=name)
  for i in (1, 3):
    assert not new_p[f"blocks/{i}/mixer/o_proj/kernel"].any() and not new_p[f"blocks/{i}/mlp/down/kernel"].any()
    assert new_p[f"blocks/{i}/mixer/q_proj/kernel"].any()  # a real block, only its outputs are zero

  batch = next(experiment.build_run_spec(exp).train_data())
  loss_fn = WindowedLoss(exp.sleep, sleep_schedule=experiment.task_schedule(exp))
  run = nnx.jit(lambda m, b: (lambda loss, aux: (loss, aux.logits))(*loss_fn(m, b)))
  old_loss, old_logits = run(old, batch)
  new_loss, new_logits = run(new, batch)
  testing.assert_close(old_logits, new_logits, "float32", what="retrofitted vs source logits")
  testing.assert_close(old_loss, new_loss, "float32", what="retrofitted vs source loss")


def test_launch_train_starts_from_the_written_params(retrofitted, tmp_path):
  # launch.train's init path (the generated config: init_from = the retrofit), with N = 4 and no
  # steps: the run's state is exactly the written parameters. (Two training steps from here are in
  # the slow test below: compiling the hybrid's sleep train step costs about a minute of CPU.)
  out, _ = retrofitted
  cfg = parse_config_file(f"{out}/config.py", "--config.sleep.n_passes=4", "--config.train.num_steps=0")
  result = experiment.run(cfg, str(tmp_path / "sleep"))
  assert result.step == 0 and result.resumed_from is None
  started, written = _flat(result.state.params), ocp_params(out)
  assert set(started) == set(written)
  for name, value in written.items():
    np.testing.assert_array_equal(started[name], value, err_msg=name)


def ocp_params(workdir, step=0):
  """The parameters exactly as written in ``workdir``'s checkpoint ``step`` (orbax, as numpy, no template)."""
  directory = ckpt_lib.checkpoint_dir(workdir)
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / "state").tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  raw = ocp.CheckpointManager(directory).restore(
      step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=as_numpy)))["state"]
  return _flat(raw["params"])


def _fake_run(tmp_path, source, name, **model):
  """A workdir with the source's checkpoints and its config.json with ``model`` fields changed."""
  wd = tmp_path / name
  wd.mkdir()
  cfg = json.load(open(os.path.join(source, "config.json")))
  cfg["model"].update(model)
  json.dump(cfg, open(wd / "config.json", "w"))
  os.symlink(ckpt_lib.checkpoint_dir(source), ckpt_lib.checkpoint_dir(str(wd)))
  return str(wd)


def test_errors_are_one_line(source, retrofitted, tmp_path, capsys):
  out, _ = retrofitted
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text(open(os.path.join(source, "config.json")).read())
  cases = [
      (dict(from_workdir=str(tmp_path / "nope")), "no such directory"),
      (dict(from_workdir=str(tmp_path)), "has no config.json"),
      (dict(from_workdir=str(no_ckpt)), "has no checkpoints/ directory"),
      (dict(step=7), r"no checkpoint step 7 in .*; steps: \[2\]"),
      (dict(insert="1,x"), "--insert=1,x: 'x' is not an integer position"),
      (dict(insert=" , "), "--insert names no positions"),
      (dict(insert="1,1"), "--insert=1,1: positions must be distinct"),
      (dict(insert="0,4"), r"new layout of 4 blocks \(2 old \+ 2 inserted\), .* \[0, 4\); got \[4\]"),
      (dict(insert="-1"), r"got \[-1\]"),
      (dict(from_workdir=_fake_run(tmp_path, source, "wide", d_model=32)),
       r"does not match .*config.json's model: parameter 'blocks/0/.*' has shape \(16, 16\) in the checkpoint"),
      (dict(from_workdir=_fake_run(tmp_path, source, "deeper", n_layers=3)),
       r"does not match .*: parameter 'blocks/2/.*' is not in .* step 2"),
      (dict(from_workdir=_fake_run(tmp_path, source, "shallower", n_layers=1), insert="1"),
       r"does not match .*: \d+ parameter\(s\) in .* step 2 are not in the model \(e.g. 'blocks/1/"),
      (dict(out=out), "already holds a checkpoint"),
      (dict(out=source), "not the source workdir"),
  ]
  for kwargs, match in cases:
    args = {**dict(from_workdir=source, insert="1,3", out=str(tmp_path / "unused")), **kwargs}
    rc = retrofit.run(args.pop("from_workdir"), args.pop("insert"), args.pop("out"), **args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), (kwargs, err)
    assert re.search(match, lines[0]), (kwargs, lines[0])
  assert not os.path.exists(tmp_path / "unused" / "checkpoints")


def _launch(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1800)


@pytest.mark.slow
def test_printed_commands_train_n1_then_n4(source, retrofitted, tmp_path):
  # The printed flags over the source run's own command train the hybrid 2 steps at N = 1; its first
  # loss is the source model's under the same windowing (the inserted blocks add zero). Then that
  # N = 1 hybrid checkpoint initialises a run with N = 4 through the generated config file: sleep
  # is a property of the forward, the parameters are the same.
  out, stdout = retrofitted
  printed = next(l.strip() for l in stdout.splitlines() if l.strip().startswith("--config.model.layout="))
  overrides = [*MODEL_FLAGS, *TRAIN_FLAGS, *printed.split()]
  h1, h4 = str(tmp_path / "n1"), str(tmp_path / "n4")
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={h1}", *overrides)
  assert p.returncode == 0, p.stderr[-3000:]
  first = [json.loads(l) for l in open(os.path.join(h1, "metrics.jsonl"))][0]
  exp = experiment.experiment_from_config(parse_config_file("launch/configs/rule110_small.py", *overrides))
  batch = next(experiment.build_run_spec(exp).train_data())
  loss, _ = WindowedLoss(exp.sleep, sleep_schedule=experiment.task_schedule(exp))(_source_model(source), batch)
  assert first["step"] == 1 and first["sleep/n_passes"] == 1.0
  np.testing.assert_allclose(first["loss"], float(loss), rtol=testing.tolerance("float32").rtol)

  p = _launch("launch.train", f"--config={out}/config.py", f"--workdir={h4}", f"--config.train.init_from={h1}",
              "--config.sleep.n_passes=4")
  assert p.returncode == 0, p.stderr[-3000:]
  train = [r for r in map(json.loads, open(os.path.join(h4, "metrics.jsonl"))) if r["kind"] == "train"]
  assert [r["step"] for r in train] == [1, 2] and all(r["sleep/n_passes"] == 4.0 for r in train)
  assert all(np.isfinite(r["loss"]) for r in train)
  trained = ocp_params(h4, step=2)
  # Gradients reached the zero-initialised outputs of the inserted blocks.
  assert trained["blocks/1/mixer/o_proj/kernel"].any() and trained["blocks/3/mlp/down/kernel"].any()
