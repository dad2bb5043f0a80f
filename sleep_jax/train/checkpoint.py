"""Checkpoints: an orbax ``CheckpointManager`` with the train state and the data
iterator state as separate items.

Items per step: ``state`` (``StandardSave`` of the :class:`TrainState`),
``data`` (``JsonSave`` of the grain iterator state, so a resume continues the
exact data stream) and ``meta`` (``JsonSave``: step, config, metrics).

Atomicity comes from orbax: a step is written to a temporary directory and
renamed into place only when complete, so a process killed during a save
leaves the previous steps as the latest. A step directory that exists but does
not restore (truncated or corrupted files) is reported and skipped in favour
of the next older one; if no step restores, :class:`CheckpointError` says why
for each.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from sleep_jax.train.optimizer import path_str

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
  """A checkpoint directory exists but nothing in it can be restored."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint.

  Attributes:
    step: the checkpoint's step.
    state: the restored train state.
    data_state: the data iterator state (JSON), or ``None`` if not saved.
    meta: the ``meta`` item (JSON), or ``{}``.
    skipped: ``(step, reason)`` for newer steps that failed to restore.
  """
  step: int
  state: Any
  data_state: Any
  meta: dict
  skipped: tuple[tuple[int, str], ...] = ()


def failure_reason(e: BaseException, limit: int = 400) -> str:
  """Why a restore failed, in the exception's own words: ``Type: message``.

  The message is what tells a missing file from a truncated one or a shape
  mismatch; its lines are joined and cut at ``limit`` characters.
  """
  message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
  text = f"{type(e).__name__}: {message}" if message else type(e).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _manager(directory: str, max_to_keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
  """Periodic and final saves, and restore of the latest good step.

  Args:
    directory: where step directories live (created if missing).
    max_to_keep: steps kept on disk.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if not directory:
      raise ValueError("directory must be a non-empty path")
    self.directory = os.path.abspath(directory)
    self._mngr = _manager(self.directory, max_to_keep)

  def steps(self) -> list[int]:
    """Completed steps on disk, oldest first."""
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, *, data_state: Any = None, meta: dict | None = None) -> None:
    """Saves ``state`` (and the iterator state and metadata) as ``step``; blocks until written."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self._mngr.save(int(step), args=ocp.args.Composite(**items), force=True)
    self._mngr.wait_until_finished()

  def _restore_step(self, step: int, abstract_state) -> Restored:
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if os.path.isdir(os.path.join(self.directory, str(step), "data")):
      items["data"] = ocp.args.JsonRestore()
    r = self._mngr.restore(step, args=ocp.args.Composite(**items))
    state = r["state"]
    for leaf in jax.tree.leaves(state):
      # A partly overwritten array can restore with the right shape but garbage;
      # orbax catches most damage, this guards the shapes at least.
      if leaf is None:
        raise CheckpointError(f"step {step}: a state leaf restored as None")
    return Restored(step=step, state=state, data_state=r.get("data"), meta=dict(r.get("meta") or {}))

  def restore_latest(self, abstract_state) -> Restored | None:
    """Restores the newest step that restores cleanly.

    Args:
      abstract_state: a tree of ``jax.ShapeDtypeStruct`` (with shardings) like
        the train state.

    Returns:
      The restored checkpoint, or ``None`` if there are no checkpoints.

    Raises:
      CheckpointError: if checkpoints exist but none restores.
    """
    skipped = []
    for step in reversed(self.steps()):
      try:
        restored = self._restore_step(step, abstract_state)
      except Exception as e:  # orbax raises many types for damaged files.
        reason = failure_reason(e)
        log.warning("checkpoint step %d in %s does not restore (%s); trying an older one", step,
                    self.directory, reason)
        skipped.append((step, reason))
        continue
      return dataclasses.replace(restored, skipped=tuple(skipped))
    if skipped:
      detail = "; ".join(f"step {s}: {r}" for s, r in skipped)
      raise CheckpointError(f"no checkpoint in {self.directory} restores ({detail}). Move the directory away "
                            "to start afresh.")
    return None

  def latest_data_state(self) -> Any:
    """The data iterator state of the newest step (``None`` if none was saved)."""
    steps = self.steps()
    if not steps or not os.path.isdir(os.path.join(self.directory, str(steps[-1]), "data")):
      return None
    return self._mngr.restore(steps[-1], args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

  def close(self) -> None:
    self._mngr.close()


def checkpoint_dir(workdir: str) -> str:
  """The checkpoint directory of a run's workdir."""
  return os.path.join(workdir, "checkpoints")


def _host_restore(directory: str, step: int):
  """Restore args that read a step's train state as numpy arrays, whatever devices saved it.

  ``StandardRestore()`` without a target puts each array back on the saving
  run's sharding and fails on another topology (a 4-device run read by one
  process, a GPU run read on a CPU host); only host values are needed here.
  """
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / "state").tree
  return ocp.args.PyTreeRestore(restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def load_params(source: str, abstract_params, *, step: int | None = None, return_step: bool = False,
                strict: bool = True):
  """Loads only the parameters from another run's latest good checkpoint.

  Used to retrofit sleep onto a model trained with ``N = 1``: same model
  config, new sleep config, fresh optimizer.

  Args:
    source: a run's workdir, or its ``checkpoints`` directory.
    abstract_params: the current model's params tree (arrays or
      ``ShapeDtypeStruct``), used for structure, shapes and dtypes.
    step: load this step instead of the newest one that restores.
    return_step: also return the step loaded.
    strict: refuse a checkpoint holding parameters the model lacks (a
      checkpoint of another model whose first blocks happen to fit); ``False``
      ignores them.

  Returns:
    The params tree with the loaded values (numpy arrays), and the step if
    ``return_step``.

  Raises:
    CheckpointError: no restorable checkpoint, or a parameter missing or of the
      wrong shape (or, if ``strict``, one the model lacks).
  """
  source = os.path.abspath(os.path.expanduser(source))  # orbax refuses relative paths
  directory = source
  if os.path.isdir(checkpoint_dir(source)):
    directory = checkpoint_dir(source)
  if not os.path.exists(directory):
    raise CheckpointError(f"init_from: {source} does not exist")
  if not os.path.isdir(directory):
    raise CheckpointError(f"init_from: {source} is not a directory")
  mngr = _manager(directory, create=False)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise CheckpointError(f"init_from: no checkpoints in {directory}")
  if step is not None:
    if step not in steps:
      raise CheckpointError(f"no checkpoint step {step} in {directory}; steps: {steps}")
    steps = [step]
  errors = []
  raw = None
  try:
    for step in reversed(steps):
      try:
        raw = mngr.restore(step, args=ocp.args.Composite(state=_host_restore(directory, step)))["state"]
        break
      except Exception as e:  # orbax raises many types for damaged files.
        reason = failure_reason(e)
        log.warning("checkpoint step %d in %s does not restore (%s); trying an older one", step, directory, reason)
        errors.append(f"step {step}: {reason}")
  finally:
    mngr.close()
  if raw is None:
    raise CheckpointError(f"init_from: no checkpoint in {directory} restores ({'; '.join(errors)})")
  saved = {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(raw["params"])[0]}

  def pick(path, like):
    name = path_str(path)
    if name not in saved:
      raise CheckpointError(f"init_from: parameter {name!r} is not in {directory} step {step}")
    value = saved[name]
    if value.shape != tuple(like.shape):
      raise CheckpointError(f"init_from: parameter {name!r} has shape {value.shape} in the checkpoint, "
                            f"{tuple(like.shape)} in the model")
    return value.astype(like.dtype)

  params = jax.tree_util.tree_map_with_path(pick, abstract_params)
  if strict:
    extra = sorted(set(saved) - {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]})
    if extra:
      raise CheckpointError(f"init_from: {len(extra)} parameter(s) in {directory} step {step} are not in the model "
                            f"(e.g. {extra[0]!r}): a checkpoint of another model (layout or sizes)")
  return (params, step) if return_step else params
