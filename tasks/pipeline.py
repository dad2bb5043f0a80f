"""grain pipelines over the task generators.

``TaskSource`` is a ``grain.sources.RandomAccessDataSource`` whose record ``i``
is ``make_example(config, seed, i, split)``: nothing is stored, every record is
generated on demand and is the same in every process. ``make_dataset`` wraps it
as

  source -> [shard_index::shard_count] -> seed + shuffle -> map(drop meta)
  -> batch(drop_remainder) -> repeat(num_epochs) -> to_iter_dataset
  -> [mp_prefetch(worker_count)]

whose iterator has JSON-serialisable ``get_state()`` / ``set_state()``: a
restored iterator yields exactly the batches the original would have.

Workers: with ``worker_count > 0`` grain spawns processes, so the
caller must run under an ``if __name__ == "__main__":`` guard and have parsed
absl flags (``absl.app.run`` or ``absl.flags.FLAGS.mark_as_parsed()``). The
source and transform here are module-level and pickle by task name.
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np

from tasks import example as ex_lib
from tasks.registry import Task, get_task


class TaskSource(grain.sources.RandomAccessDataSource):
  """Random access to one split of a task: record ``i`` is example ``i``."""

  def __init__(self, task: str | Task, config, split: str, *, seed: int):
    """Creates the source.

    Args:
      task: a registered task or its name.
      config: the task's configuration.
      split: "train" or "eval"; the length is the config's
        ``num_train_examples`` or ``num_eval_examples``.
      seed: data seed (>= 0).

    Raises:
      ValueError: for an unknown task or split, a config of the wrong class or
        a bad seed.
    """
    task = get_task(task) if isinstance(task, str) else task
    task.check_config(config)
    ex_lib.split_id(split)
    ex_lib.check_seed_index(seed, 0)
    # Keep only picklable state: workers look the task up again by name.
    self._task_name = task.name
    self._config = config
    self._split = split
    self._seed = int(seed)
    self._len = int(config.num_train_examples if split == "train" else config.num_eval_examples)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for a source of length {self._len}")
    return get_task(self._task_name).make_example(self._config, self._seed, index, self._split)

  def __repr__(self) -> str:
    return f"TaskSource({self._task_name!r}, split={self._split!r}, seed={self._seed}, len={self._len})"


class DropMeta(grain.transforms.Map):
  """Keeps the stackable arrays of an example, dropping ``meta``."""

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: element[k] for k in ex_lib.ARRAY_KEYS}


def make_dataset(task: str | Task, config, split: str, *, seed: int, batch_size: int,
                 num_epochs: int | None = None, shuffle: bool = True, worker_count: int = 0,
                 shard_index: int = 0, shard_count: int = 1,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Builds the batched, repeating data pipeline of one task split.

  Args:
    task: a registered task or its name.
    config: the task's configuration.
    split: "train" or "eval".
    seed: data seed; examples and the shuffle order derive from it.
    batch_size: examples per batch (per host); the remainder of an epoch is
      dropped so every batch stacks to ``[batch_size, T]``.
    num_epochs: passes over the split; ``None`` repeats forever. Each epoch is
      reshuffled.
    shuffle: shuffle within each epoch (global permutation of this shard).
    worker_count: grain worker processes (0: generate in this process).
    shard_index: this host's shard.
    shard_count: number of hosts; shard ``i`` holds records ``i, i + n, ...``.
    read_options: grain read options (default: 2 threads, 4 batches ahead).

  Returns:
    A ``grain.IterDataset``; ``iter(ds)`` yields dicts of numpy arrays
    ``tokens``, ``targets``, ``loss_mask``, ``depth``, ``answer_id``, each
    ``[batch_size, T]``, and has ``get_state()`` / ``set_state()``.

  Raises:
    ValueError: for a bad argument, naming it.
  """
  is_int = ex_lib.is_int
  source = TaskSource(task, config, split, seed=seed)
  ex_lib.require(is_int(batch_size) and batch_size >= 1, f"batch_size must be an integer >= 1, got {batch_size!r}")
  ex_lib.require(num_epochs is None or (is_int(num_epochs) and num_epochs >= 1),
                 f"num_epochs must be None or an integer >= 1, got {num_epochs!r}")
  ex_lib.require(is_int(worker_count) and worker_count >= 0,
                 f"worker_count must be an integer >= 0, got {worker_count!r}")
  ex_lib.require(is_int(shard_count) and shard_count >= 1, f"shard_count must be an integer >= 1, got {shard_count!r}")
  ex_lib.require(is_int(shard_index) and 0 <= shard_index < shard_count,
                 f"shard_index must be an integer in [0, shard_count={shard_count}), got {shard_index!r}")
  shard_len = len(range(shard_index, len(source), shard_count))
  ex_lib.require(shard_len >= batch_size,
                 f"batch_size ({batch_size}) exceeds the {shard_len} examples of this shard of the {split!r} split")

  ds = grain.MapDataset.source(source)
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  if shuffle:
    # A seed distinct from the generation seed's role, per split.
    ds = ds.seed(int(np.random.SeedSequence([seed, ex_lib.split_id(split), 0x5EED]).generate_state(1)[0]))
    ds = ds.shuffle()
  ds = ds.map(DropMeta()).batch(batch_size, drop_remainder=True).repeat(num_epochs)
  if read_options is None:
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
  it_ds = ds.to_iter_dataset(read_options)
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds
