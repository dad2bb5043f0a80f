"""launch.fixed_point: the fast weights across passes against direct forwards, and the accuracy against launch.eval."""
import dataclasses
import importlib
import json
import os

import numpy as np
import pytest

from launch import experiment
from launch import fixed_point


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  # A two-step run of the Rule 110 demo's task with the depth announced before sleep (a tiny model).
  cfg = importlib.import_module("launch.configs.rule110_sleep_demo").get_config()
  cfg.task_config.update(announce_t=True, num_eval_examples=64)
  cfg.model.update(d_model=16, n_heads=1, head_dim=16, gdn_head_dim=16)
  cfg.sleep.n_passes = 2
  cfg.train.update(num_steps=2, batch_size=8, eval_batches=1, progress=False, log_every=1, eval_every=2,
                   checkpoint_every=2)
  wd = str(tmp_path_factory.mktemp("fp") / "run")
  experiment.run(cfg, wd)
  return wd


def test_trajectory_against_direct_forwards_and_launch_eval(run):
  res = fixed_point.trajectory(run, max_passes=3, n_examples=8)
  assert res["passes"] == [1, 2, 3] and res["sleep_windows"] == 1 and res["step"] == 2
  assert np.isnan(res["change"]["all"][0]) and res["to_last"]["all"][-1] == 0.0
  assert set(res["change"]) == {"all", *map(str, res["depths"])}
  assert sum(res["count"][str(d)] for d in res["depths"]) == res["count"]["all"] == 8
  # Reference: the fast weights after sleeping the state window at N = 2 and 3, from windowed_forward directly.
  from flax import nnx
  from sleep_jax import windowed
  from sleep_jax.model import HybridLM
  from sleep_jax.train import checkpoint as ckpt_lib
  exp = experiment.experiment_from_config(experiment.load_run_config(run))
  model = HybridLM(exp.model, rngs=nnx.Rngs(0))
  nnx.update(model, ckpt_lib.load_params(run, nnx.split(model, nnx.Param, ...)[1]))
  model.eval()
  seed = exp.train.eval_seed
  tokens = np.stack([exp.task.make_example(exp.task_config, seed, i, "eval")["tokens"] for i in range(8)])
  window = exp.task.window(exp.task_config)
  fw = {}
  for n in (2, 3):
    out = windowed.windowed_forward(model, tokens[:, :window], None, dataclasses.replace(exp.sleep, n_passes=n),
                                    return_logits="none", sleep_schedule=(True,))
    fw[n] = fixed_point._state_matrix(out.fast_weights, 8)
  want = np.mean(np.linalg.norm(fw[3] - fw[2], axis=1) / np.linalg.norm(fw[3], axis=1))
  np.testing.assert_allclose(res["change"]["all"][2], want, rtol=1e-6)
  assert res["norm"]["all"][0] == pytest.approx(1.0)
  # Accuracy at N = 3 is launch.eval's on the same 8 examples (one eval batch of 8).
  _, ev = experiment.evaluate_run(run, overrides=["sleep.n_passes=3"], eval_batches=1)
  assert ev["count"] == 8
  np.testing.assert_allclose(res["accuracy"]["all"][2], ev["accuracy"], atol=1e-6)
  for d in res["depths"]:
    np.testing.assert_allclose(res["accuracy"][str(d)][2], ev[f"accuracy/depth={d}"], atol=1e-6)
  assert fixed_point.report(res).count("\n") == 3 + 1
  assert len(fixed_point.figure(res).axes) == 2


def test_cli_writes_files_and_refuses_bad_input(run, tmp_path, capsys):
  out = str(tmp_path / "fp.json")
  assert fixed_point.main([f"--workdir={run}", "--max_passes=2", "--examples=4", f"--output={out}"]) == 0
  with open(out) as f:
    assert json.load(f)["passes"] == [1, 2]
  assert os.path.exists(str(tmp_path / "fp.png"))
  for args, match in ((["--max_passes=1"], "max_passes must be >= 2"), (["--examples=0"], "examples must be >= 1")):
    with pytest.raises(SystemExit):
      fixed_point.main([f"--workdir={run}", *args])
    assert match in capsys.readouterr().err
  with pytest.raises(SystemExit):
    fixed_point.main([f"--workdir={tmp_path / 'nope'}"])
  assert "has no config.json" in capsys.readouterr().err
