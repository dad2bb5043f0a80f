"""The ``python -m tasks`` CLI and the registry."""
import os
import subprocess
import sys

import pytest

import tasks
from tasks import __main__ as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_registry():
  assert tasks.list_tasks() == ["depo", "gsm_math", "rule110"]
  for name in tasks.list_tasks():
    task = tasks.get_task(name)
    assert {"paper", "small"} <= set(task.presets)
    for config in task.presets.values():
      ex = task.make_example(config, 0, 0)
      assert ex["tokens"].shape == (task.seq_len(config),)
      assert ex["tokens"].max() < task.vocab_size(config) == task.tokenizer(config).vocab_size
      assert 1 <= task.window(config) <= task.seq_len(config)
      assert task.eviction(config) in ("hard", "sliding")
  with pytest.raises(ValueError, match="unknown task"):
    tasks.get_task("rule30")
  with pytest.raises(ValueError, match="no preset"):
    tasks.get_task("depo").preset("huge")
  with pytest.raises(ValueError, match="already registered"):
    tasks.register(tasks.Task(**{**tasks.get_task("depo").__dict__, "depth_name": "x"}))


@pytest.mark.parametrize("name", ["rule110", "depo", "gsm_math"])
def test_show_in_process(name, capsys):
  assert cli.main(["show", name, "--preset", "small", "-n", "2", "--split", "eval"]) == 0
  out = capsys.readouterr().out
  assert out.count("\n[") == 2 and "target[" in out and "meta:" in out
  task = tasks.get_task(name)
  config = task.preset("small")
  text = task.tokenizer(config).decode(task.make_example(config, 0, 1, "eval")["tokens"][-5:])
  assert text in out


def test_bench_runs(capsys):
  assert cli.main(["bench", "--tasks", "rule110", "--presets", "small", "--seconds", "0.05"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and lines[1].split()[:3] == ["rule110", "small", "34"]


def test_cli_subprocess():
  out = subprocess.run([sys.executable, "-m", "tasks", "show", "rule110", "--preset", "small", "-n", "3"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.count("\n[") == 3 and "?" in out.stdout
  bad = subprocess.run([sys.executable, "-m", "tasks", "show", "depo", "--preset", "huge"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert bad.returncode == 2 and "no preset" in bad.stderr


def test_show_config_file(capsys, tmp_path):
  """--config shows the task a config file trains on (its overrides over the preset), not the preset."""
  path = os.path.join(REPO, "launch", "configs", "gsm_math_small.py")
  assert cli.main(["show", "gsm_math", "--config", path, "-n", "1", "--split", "eval"]) == 0
  out = capsys.readouterr().out
  from launch import experiment
  from launch.configs import gsm_math_small
  exp = experiment.experiment_from_config(gsm_math_small.get_config())
  assert exp.task_config != tasks.get_task("gsm_math").preset("small")  # the file overrides its preset
  assert f"config {path}" in out and f"T = {exp.task.seq_len(exp.task_config)}," in out
  ex = exp.task.make_example(exp.task_config, 0, 0, "eval")
  words = [w for w in exp.task.tokenizer(exp.task_config).decode(ex["tokens"]).split(" ") if w != "<pad>"]
  assert " ".join(words) in out
  assert "(auxiliary: trained on, not scored)" in out  # line_values, which only the file turns on
  # Bad inputs: another task's config, a missing file, a Python file that is not a config.
  assert cli.main(["show", "depo", "--config", path]) == 2
  assert "trains task 'gsm_math', not 'depo'" in capsys.readouterr().err
  assert cli.main(["show", "depo", "--config", str(tmp_path / "nope.py")]) == 2
  assert "no such file" in capsys.readouterr().err
  (tmp_path / "plain.py").write_text("x = 1\n")
  assert cli.main(["show", "depo", "--config", str(tmp_path / "plain.py")]) == 2
  assert "no get_config()" in capsys.readouterr().err
