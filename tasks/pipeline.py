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

``StagedIterator`` chains such iterators into a curriculum: a fixed number of
batches from each stage's pipeline, then the last stage's forever, still
checkpointable.

Workers: with ``worker_count > 0`` grain spawns processes, so the
caller must run under an ``if __name__ == "__main__":`` guard and have parsed
absl flags (``absl.app.run`` or ``absl.flags.FLAGS.mark_as_parsed()``). The
source and transform here are module-level and pickle by task name.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

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


class StagedIterator:
  """A curriculum over batches: ``lengths[i]`` batches from stage ``i``, then the last stage forever.

  Each stage is a pipeline (e.g. :func:`make_dataset` of one task config); a
  stage's iterator is built when the stage begins (or is restored). Like the
  iterators it chains it has JSON-serialisable ``get_state()`` /
  ``set_state()``: ``{"stage": i, "taken": batches taken from stage i, "inner":
  stage i's iterator state}``, so a run restored mid-curriculum goes on with
  exactly the batches it would have seen.
  """

  def __init__(self, factories: Sequence[Callable[[], Any]], lengths: Sequence[int]):
    """Creates the iterator.

    Args:
      factories: one zero-argument callable per stage, returning that stage's
        checkpointable iterator.
      lengths: batches drawn from each stage but the last (``len(factories) -
        1`` integers >= 1).

    Raises:
      ValueError: no stage, or lengths that do not match the stages.
    """
    ex_lib.require(len(factories) >= 1, "StagedIterator needs at least one stage")
    ex_lib.require(len(lengths) == len(factories) - 1 and all(ex_lib.is_int(n) and n >= 1 for n in lengths),
                   f"StagedIterator: lengths must be {len(factories) - 1} integers >= 1 (one per stage but the "
                   f"last), got {list(lengths)!r}")
    self._factories = list(factories)
    self._lengths = [int(n) for n in lengths]
    self._stage, self._taken = 0, 0
    self._it = self._factories[0]()

  @property
  def stage(self) -> int:
    """The stage the next batch comes from."""
    return self._stage

  def __iter__(self):
    return self

  def __next__(self):
    while self._stage < len(self._lengths) and self._taken >= self._lengths[self._stage]:
      self._stage, self._taken = self._stage + 1, 0
      self._it = self._factories[self._stage]()
    batch = next(self._it)
    self._taken += 1
    return batch

  def get_state(self) -> dict:
    return {"stage": self._stage, "taken": self._taken, "inner": self._it.get_state()}

  def set_state(self, state: dict) -> None:
    """Restores a state from :meth:`get_state`; raises ValueError for one that does not fit these stages."""
    ok = (isinstance(state, dict) and {"stage", "taken", "inner"} <= set(state)
          and ex_lib.is_int(state["stage"]) and 0 <= state["stage"] < len(self._factories)
          and ex_lib.is_int(state["taken"]) and state["taken"] >= 0
          and (state["stage"] == len(self._lengths) or state["taken"] <= self._lengths[state["stage"]]))
    if not ok:
      raise ValueError(f"StagedIterator.set_state: {state!r} is not a state of this curriculum "
                       f"({len(self._factories)} stages, lengths {self._lengths}); was the checkpoint written "
                       "by a run with another curriculum?")
    self._stage, self._taken = int(state["stage"]), int(state["taken"])
    self._it = self._factories[self._stage]()
    self._it.set_state(state["inner"])
