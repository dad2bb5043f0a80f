"""Two processes on localhost with jax.distributed (CPU, gloo) train the same as one process.

Slow: run with ``python3 -m pytest -q -m slow tests/test_train_multihost.py``. It starts three Python
processes: one process with 2 CPU devices, then 2 processes with 1 CPU device each; each trains the same tiny
model for a few steps through ``sleep_jax.train.loop.train`` and saves its final parameters.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sleep_jax.testing import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    workdir, n_proc, pid, port, n_dev = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    import jax
    jax.config.update("jax_num_cpu_devices", n_dev)
    from sleep_jax.train import distributed
    if n_proc > 1:
      distributed.initialize(f"localhost:{port}", n_proc, pid)
    import numpy as np
    from sleep_jax.train import config as tcfg, loop
    from train_helpers import TinyLM, make_batch, tiny_loss

    GLOBAL = 8

    class Shard:
      # Global batch s is make_batch(s, GLOBAL); this process reads its contiguous rows.
      def __init__(self):
        self.s = 0
      def __iter__(self):
        return self
      def __next__(self):
        b = make_batch(self.s, GLOBAL)
        rows = GLOBAL // jax.process_count()
        self.s += 1
        return {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in b.items()}
      def get_state(self):
        return {"s": self.s}
      def set_state(self, st):
        self.s = st["s"]

    spec = loop.RunSpec(model_factory=TinyLM, loss_fn=tiny_loss, train_data=Shard)
    opt = tcfg.OptimizerConfig(kind="muon_adamw", lr=1e-2, adamw_lr=1e-2, warmup_steps=1)
    cfg = tcfg.TrainConfig(num_steps=4, batch_size=GLOBAL, optimizer=opt, log_every=2, checkpoint_every=2,
                           progress=False)
    result = loop.train(spec, cfg, workdir)
    leaves = jax.tree.leaves(jax.device_get(result.state.params))
    if jax.process_index() == 0:
      np.savez(os.path.join(workdir, "params.npz"), *[np.asarray(x) for x in leaves])
    print("done", jax.process_index(), flush=True)
""")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  one = str(tmp_path / "one")
  p = subprocess.run([sys.executable, str(script), REPO, one, "1", "0", "0", "2"], env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  import portpicker
  port = str(portpicker.pick_unused_port())
  two = str(tmp_path / "two")
  procs = [subprocess.Popen([sys.executable, str(script), REPO, two, "2", str(i), port, "1"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [pr.communicate(timeout=600) for pr in procs]
  for pr, (out, err) in zip(procs, outs):
    assert pr.returncode == 0, err[-3000:]
  a = np.load(os.path.join(one, "params.npz"))
  b = np.load(os.path.join(two, "params.npz"))
  assert len(a.files) == len(b.files) > 0
  for k in a.files:
    assert_close(a[k], b[k], "float32", what=f"param {k}")
