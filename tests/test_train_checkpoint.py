"""Checkpoints: kill -9 during a save, corrupt step directories, restore of the latest good step."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from sleep_jax.train import checkpoint as ckpt_lib

_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    from sleep_jax.train.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], max_to_keep=5)
    n = int(sys.argv[2])
    for step in (1, 2):
      state = {"w": np.full((n,), step, np.float32), "b": np.full((8,), step, np.float32)}
      print(f"saving {step}", flush=True)
      ck.save(step, state, data_state={"pos": step})
      print(f"saved {step}", flush=True)
""")


def _abstract(n):
  return {"w": jax.ShapeDtypeStruct((n,), np.float32), "b": jax.ShapeDtypeStruct((8,), np.float32)}


def _tmp_dirs(directory):
  return [d for d in os.listdir(directory) if "tmp" in d]


def test_kill_during_save_leaves_previous_checkpoint(tmp_path):
  n = 48 * 2**20  # 192 MB: the save takes long enough to be caught mid-write.
  directory = str(tmp_path / "ckpt")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", _CHILD, directory, str(n)], stdout=subprocess.PIPE,
                          text=True, env=env)
  try:
    for line in proc.stdout:
      if line.strip() == "saving 2":
        break
    else:
      pytest.fail("the child never started its second save")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.isdir(directory) and _tmp_dirs(directory)):
      time.sleep(0.001)
    caught = bool(_tmp_dirs(directory))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert caught, "no temporary save directory seen before the kill (save not caught mid-write)"
  ck = ckpt_lib.Checkpointer(directory)
  assert ck.steps() == [1], f"steps after the kill: {ck.steps()}"
  restored = ck.restore_latest(_abstract(n))
  assert restored.step == 1 and restored.data_state == {"pos": 1}
  assert float(restored.state["w"][0]) == 1.0 and float(restored.state["w"][-1]) == 1.0


def _save_two(directory):
  ck = ckpt_lib.Checkpointer(directory)
  for step in (1, 2):
    ck.save(step, {"w": np.full((16,), step, np.float32), "b": np.full((8,), step, np.float32)},
            data_state={"pos": step})
  return ck


def _corrupt(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")


def test_corrupt_latest_falls_back_then_reports(tmp_path, caplog):
  directory = str(tmp_path / "ckpt")
  _save_two(directory)
  _corrupt(os.path.join(directory, "2"))
  ck = ckpt_lib.Checkpointer(directory)
  restored = ck.restore_latest(_abstract(16))
  assert restored.step == 1 and restored.skipped and restored.skipped[0][0] == 2
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.full((16,), 1, np.float32))
  assert "does not restore" in caplog.text
  _corrupt(os.path.join(directory, "1"))
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint .* restores"):
    ckpt_lib.Checkpointer(directory).restore_latest(_abstract(16))


def test_empty_directory_restores_nothing(tmp_path):
  assert ckpt_lib.Checkpointer(str(tmp_path / "none")).restore_latest(_abstract(4)) is None
  with pytest.raises(ValueError, match="directory"):
    ckpt_lib.Checkpointer("")


def _save_params(directory, steps=(1, 2), n=16):
  ck = ckpt_lib.Checkpointer(directory)
  for step in steps:
    ck.save(step, {"params": {"w": np.full((n,), step, np.float32)}}, data_state={"pos": step})
  ck.close()


def _params_like(n=16):
  return {"w": jax.ShapeDtypeStruct((n,), np.float32)}


def test_relative_paths_restore_like_absolute(tmp_path, monkeypatch):
  # orbax refuses relative paths ("Checkpoint path should be absolute"); every entry resolves them first.
  monkeypatch.chdir(tmp_path)
  _save_params(os.path.join("runs", "a", "checkpoints"))
  params, step = ckpt_lib.load_params(os.path.join("runs", "a"), _params_like(), return_step=True)
  assert step == 2 and float(params["w"][0]) == 2.0
  restored = ckpt_lib.Checkpointer(os.path.join("runs", "a", "checkpoints")).restore_latest(
      {"params": _params_like()})
  assert restored.step == 2 and restored.data_state == {"pos": 2}
  monkeypatch.setenv("HOME", str(tmp_path))
  params = ckpt_lib.load_params(os.path.join("~", "runs", "a"), _params_like())
  assert float(params["w"][-1]) == 2.0


def test_restore_failures_say_why(tmp_path, caplog):
  """Missing directory, shape mismatch and corrupt files each read differently, in the exception's words."""
  with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
    ckpt_lib.load_params(str(tmp_path / "missing"), _params_like())
  (tmp_path / "file").write_text("x")
  with pytest.raises(ckpt_lib.CheckpointError, match="is not a directory"):
    ckpt_lib.load_params(str(tmp_path / "file"), _params_like())
  run = str(tmp_path / "run")
  _save_params(os.path.join(run, "checkpoints"))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"'w' has shape \(16,\) in the checkpoint, \(8,\) in the model"):
    ckpt_lib.load_params(run, _params_like(8))
  _corrupt(os.path.join(run, "checkpoints", "2"))
  params, step = ckpt_lib.load_params(run, _params_like(), return_step=True)
  assert step == 1 and float(params["w"][0]) == 1.0  # the corrupt newest step is skipped for the good one
  assert "step 2" in caplog.text and "does not restore" in caplog.text
  _corrupt(os.path.join(run, "checkpoints", "1"))
  with pytest.raises(ckpt_lib.CheckpointError) as err:
    ckpt_lib.load_params(run, _params_like())
  msg = str(err.value)
  # Each step's reason carries the exception's message, not only its type name.
  for step in (1, 2):
    reason = msg.split(f"step {step}: ", 1)[1].split(";")[0]
    assert ":" in reason and len(reason.split(":", 1)[1].strip()) > 10, msg


def test_failure_reason_keeps_the_message():
  e = ValueError("Checkpoint path should be absolute.\n  Got: workdirs/x")
  assert ckpt_lib.failure_reason(e) == "ValueError: Checkpoint path should be absolute. Got: workdirs/x"
  assert ckpt_lib.failure_reason(KeyError()) == "KeyError"
  assert len(ckpt_lib.failure_reason(RuntimeError("x" * 1000), limit=50)) == 50
