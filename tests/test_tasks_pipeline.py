"""grain pipelines: order, checkpoint/restore, epochs, sharding, cross-process determinism, workers."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tasks
from tasks import example as ex_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ex_lib.ARRAY_KEYS


def small(task_name: str, **overrides):
  task = tasks.get_task(task_name)
  return task, dataclasses.replace(task.preset("small"), **overrides)


def row_ids(task, config, batches, n, split="train", seed=0):
  """Maps each batch row back to its example index by brute force over 0..n-1."""
  lookup = {task.make_example(config, seed, i, split)["tokens"].tobytes(): i for i in range(n)}
  return [lookup[r.tobytes()] for b in batches for r in b["tokens"]]


def test_unshuffled_batches_are_the_examples_in_order():
  task, config = small("depo")
  it = iter(tasks.make_dataset("depo", config, "eval", seed=3, batch_size=4, shuffle=False, num_epochs=1))
  batches = [next(it) for _ in range(2)]
  for k, b in enumerate(batches):
    assert sorted(b) == sorted(KEYS)
    for j in range(4):
      ex = task.make_example(config, 3, 4 * k + j, "eval")
      for key in KEYS:
        assert b[key].shape == (4, task.seq_len(config))
        np.testing.assert_array_equal(b[key][j], ex[key])
  assert batches[0]["tokens"].dtype == np.int32 and batches[0]["loss_mask"].dtype == np.float32


@pytest.mark.parametrize("task_name", ["rule110", "depo", "gsm_math"])
def test_state_restore_mid_epoch_gives_identical_batches(task_name):
  _, config = small(task_name)
  ds = tasks.make_dataset(task_name, config, "train", seed=5, batch_size=4)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable
  expected = [next(it) for _ in range(3)]
  resumed = iter(tasks.make_dataset(task_name, config, "train", seed=5, batch_size=4))
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    for key in KEYS:
      np.testing.assert_array_equal(got[key], want[key])


def test_epochs_reshuffle_and_end():
  task, config = small("rule110", num_train_examples=16)
  it = iter(tasks.make_dataset("rule110", config, "train", seed=0, batch_size=4, num_epochs=2))
  batches = list(it)
  assert len(batches) == 8
  ids = row_ids(task, config, batches, 16)
  first, second = ids[:16], ids[16:]
  assert sorted(first) == sorted(second) == list(range(16))
  assert first != second and first != list(range(16))
  # The shuffle (and the examples) depend on the seed.
  other = row_ids(task, config, list(tasks.make_dataset("rule110", config, "train", seed=1, batch_size=4,
                                                        num_epochs=1)), 16, seed=1)
  assert sorted(other) == list(range(16)) and other != first


def test_drop_remainder():
  _, config = small("rule110", num_eval_examples=10)
  batches = list(tasks.make_dataset("rule110", config, "eval", seed=0, batch_size=4, num_epochs=1))
  assert len(batches) == 2 and all(b["tokens"].shape[0] == 4 for b in batches)


def test_shards_partition_the_split():
  task, config = small("rule110", num_train_examples=24)
  seen = []
  for shard in range(3):
    ds = tasks.make_dataset("rule110", config, "train", seed=0, batch_size=4, num_epochs=1, shard_index=shard,
                            shard_count=3)
    ids = row_ids(task, config, list(ds), 24)
    assert len(ids) == 8 and all(i % 3 == shard for i in ids)
    seen += ids
  assert sorted(seen) == list(range(24))


def test_bad_arguments():
  _, config = small("rule110")
  with pytest.raises(ValueError, match="batch_size"):
    tasks.make_dataset("rule110", config, "train", seed=0, batch_size=0)
  with pytest.raises(ValueError, match="shard_index"):
    tasks.make_dataset("rule110", config, "train", seed=0, batch_size=2, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="split"):
    tasks.make_dataset("rule110", config, "test", seed=0, batch_size=2)
  with pytest.raises(ValueError, match="Rule110Config"):
    tasks.make_dataset("rule110", tasks.get_task("depo").preset("small"), "train", seed=0, batch_size=2)
  with pytest.raises(ValueError, match="unknown task"):
    tasks.make_dataset("rule30", config, "train", seed=0, batch_size=2)
  with pytest.raises(ValueError, match="exceeds"):
    tasks.make_dataset("rule110", dataclasses.replace(config, num_eval_examples=3), "eval", seed=0, batch_size=4)
  with pytest.raises(ValueError, match="num_epochs"):
    tasks.make_dataset("rule110", config, "train", seed=0, batch_size=2, num_epochs=0)
  with pytest.raises(ValueError, match="seed"):
    tasks.make_dataset("rule110", config, "train", seed=-1, batch_size=2)


_HASH_SCRIPT = """
import hashlib
import tasks
from tasks import example as ex_lib


def example_hashes():
  out = []
  for name in tasks.list_tasks():
    task = tasks.get_task(name)
    config = task.preset("small")
    for split in ("train", "eval"):
      h = hashlib.sha256()
      for i in range(20):
        ex = task.make_example(config, 11, i, split)
        for key in ex_lib.ARRAY_KEYS:
          h.update(ex[key].tobytes())
      out.append(f"{name} {split} {h.hexdigest()}")
  return out


if __name__ == "__main__":
  print("\\n".join(example_hashes()))
"""


def test_examples_identical_across_processes():
  # The same hashing code runs in a fresh interpreter (another hash seed) and here.
  here = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True, check=True,
                        cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "123"}, timeout=120).stdout.strip().split("\n")
  namespace = {"__name__": "hashes"}
  exec(_HASH_SCRIPT, namespace)
  local = namespace["example_hashes"]()
  assert here == local
  assert len(set(line.split()[-1] for line in local)) == len(local)


_WORKER_SCRIPT = """
import json, sys
import numpy as np
from absl import flags
import tasks

def batches(it, n):
  return [np.concatenate([b[k].ravel().astype(np.float64) for k in sorted(b)]) for b in (next(it) for _ in range(n))]

def main():
  flags.FLAGS.mark_as_parsed()
  config = tasks.get_task("gsm_math").preset("small")
  make = lambda w: tasks.make_dataset("gsm_math", config, "train", seed=2, batch_size=4, worker_count=w)
  ref = iter(make(0))
  want = batches(ref, 6)
  it = iter(make(2))
  first = batches(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  rest = batches(it, 3)
  resumed = iter(make(2))
  resumed.set_state(state)
  again = batches(resumed, 3)
  ok = all(np.array_equal(a, b) for a, b in zip(first + rest, want))
  ok_resume = all(np.array_equal(a, b) for a, b in zip(again, rest))
  print(json.dumps({"same_as_0_workers": ok, "resume": ok_resume}))

if __name__ == "__main__":
  main()
"""


@pytest.mark.slow
def test_two_workers_match_and_resume(tmp_path):
  script = tmp_path / "workers.py"
  script.write_text(textwrap.dedent(_WORKER_SCRIPT))
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {"same_as_0_workers": True, "resume": True}
