"""launch/: one-step smoke runs per task, config conversion, bad configs and flags, plots, sweep table."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=16", "--config.model.n_layers=2", "--config.model.n_heads=1",
        "--config.model.head_dim=16", "--config.model.gdn_head_dim=16", "--config.train.num_steps=1",
        "--config.train.batch_size=2", "--config.train.eval_batches=1", "--config.train.progress=False",
        "--config.train.log_every=1"]


def _config(name):
  return importlib.import_module(f"launch.configs.{name}").get_config()


def _tiny(cfg):
  cfg.model.update(d_model=16, n_layers=2, n_heads=1, head_dim=16, gdn_head_dim=16)
  cfg.train.update(num_steps=1, batch_size=4, eval_batches=1, progress=False, log_every=1)  # 4 fake devices
  return cfg


def _launch(module, *args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_train_cli_one_step_rule110_then_eval(tmp_path):
  # Two processes each compile the windowed model (~25 s on 2 idle cores).
  wd = str(tmp_path / "run")
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={wd}", *TINY)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "accuracy" in p.stdout and "depth" in p.stdout
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert records[0]["kind"] == "train" and records[0]["step"] == 1
  assert "sleep/relative_cost" in records[0] and "train/accuracy" in records[0]
  ev = json.load(open(os.path.join(wd, "eval.json")))
  assert 0.0 <= ev["accuracy"] <= 1.0 and any(k.startswith("accuracy/depth=") for k in ev)
  out = str(tmp_path / "e.json")
  p = _launch("launch.eval", f"--workdir={wd}", "--eval_batches=1", "--override=sleep.n_passes=2",
              f"--output={out}")
  assert p.returncode == 0, p.stderr[-3000:]
  assert json.load(open(out))["step"] == 1


@pytest.mark.parametrize("name", ["depo_small", "gsm_math_small"])
def test_one_step_other_tasks(tmp_path, name):
  # In-process (no absl); the CLI path is covered by the rule110 test above.
  result = experiment.run(_tiny(_config(name)), str(tmp_path))
  assert result.step == 1 and 0.0 <= result.eval["accuracy"] <= 1.0


@pytest.mark.parametrize("name", ["rule110_small", "rule110_paper", "depo_small", "depo_paper", "gsm_math_small",
                                  "gsm_math_paper"])
def test_every_config_converts(name):
  exp = experiment.experiment_from_config(_config(name))
  assert exp.sleep.window == exp.task.window(exp.task_config)
  assert exp.train.batch_size >= 1 and exp.model.vocab_size == exp.task.vocab_size(exp.task_config)
  if name.endswith("paper"):
    assert exp.train.optimizer.kind == "muon_adamw"
    assert (exp.train.optimizer.lr, exp.train.optimizer.adamw_lr) == (2e-3, 5e-5)


def test_plain_transformer_sees_whole_sequence():
  cfg = _config("rule110_small")
  cfg.plain_transformer = True
  cfg.sleep.n_passes = 4
  exp = experiment.experiment_from_config(cfg)
  assert set(exp.model.block_types) == {"attn"} and len(exp.model.block_types) == cfg.model.n_layers
  assert exp.sleep.n_passes == 1 and exp.sleep.window == exp.task.seq_len(exp.task_config)


@pytest.mark.parametrize("section,field,value,match", [
    (None, "task", "nope", "unknown task 'nope'"),
    ("sleep", "n_passes", -1, "n_passes"),
    ("train", "batch_size", 0, "batch_size"),
    ("optimizer", "kind", "sgd", "OptimizerConfig.kind"),
    ("task_config", "t_min", -3, "t_min"),
])
def test_bad_config_values(section, field, value, match):
  cfg = _config("rule110_small")
  target = cfg if section is None else cfg[section]
  with cfg.unlocked():
    setattr(target, field, value)
  with pytest.raises(ValueError, match=match):
    experiment.experiment_from_config(cfg)


def test_unknown_config_field():
  d = _config("rule110_small").to_dict()
  d["model"]["bogus"] = 1
  with pytest.raises(ValueError, match=r"config.model has unknown field\(s\) \['bogus'\]"):
    experiment.experiment_from_config(d)


def test_bad_flags_exit_with_clear_errors(tmp_path):
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}",
              "--config.sleep.n_passes=-1")
  assert p.returncode == 1 and "n_passes" in p.stderr and "Traceback" not in p.stderr
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}",
              "--cpu_devices=4", "--config.train.batch_size=6")
  assert p.returncode == 1 and "not divisible by the 4 devices" in p.stderr, p.stderr[-2000:]
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py")
  assert p.returncode != 0 and "--workdir is required" in p.stderr


def test_overrides_parse_and_reject():
  cfg = {"sleep": {"n_passes": 1}, "task_config": {"t_max": 8}}
  experiment.apply_overrides(cfg, ["sleep.n_passes=4", "task_config.t_max=16"])
  assert cfg == {"sleep": {"n_passes": 4}, "task_config": {"t_max": 16}}
  with pytest.raises(ValueError, match="no config field 'nope'"):
    experiment.apply_overrides(cfg, ["sleep.nope=1"])
  with pytest.raises(ValueError, match="key.path=value"):
    experiment.apply_overrides(cfg, ["sleep.n_passes"])


def _raw_state(workdir, step):
  import orbax.checkpoint as ocp
  from sleep_jax.train import checkpoint as ckpt_lib
  mngr = ocp.CheckpointManager(ckpt_lib.checkpoint_dir(workdir))
  raw = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                   data=ocp.args.JsonRestore()))
  return raw["state"], raw["data"]


@pytest.mark.slow
def test_cli_resume_in_a_new_process_is_bit_exact(tmp_path):
  # Process-level resume: a run that exits after 2 steps and is started again must
  # end with exactly the state (params, optimizer, step) and data-iterator position
  # of a run that went 4 steps straight. decay_steps is pinned: by default the
  # schedule spans num_steps, which is what the early stop changes.
  base = ["--config=launch/configs/rule110_small.py", *[a for a in TINY if "num_steps" not in a],
          "--config.train.checkpoint_every=2", "--config.optimizer.decay_steps=4"]
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  for wd, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
    p = _launch("launch.train", f"--workdir={wd}", *base, f"--config.train.num_steps={steps}")
    assert p.returncode == 0, p.stderr[-3000:]
  s_state, s_data = _raw_state(straight, 4)
  r_state, r_data = _raw_state(resumed, 4)
  assert s_data == r_data
  s_leaves, s_def = jax_tree_flatten(s_state)
  r_leaves, r_def = jax_tree_flatten(r_state)
  assert s_def == r_def
  for a, b in zip(s_leaves, r_leaves):
    np.testing.assert_array_equal(a, b)
  losses = lambda wd: [r["loss"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))
                       if r.get("kind") == "train"]
  assert losses(straight)[2:] == losses(resumed)[2:]


def jax_tree_flatten(tree):
  import jax
  return jax.tree.flatten(tree)
