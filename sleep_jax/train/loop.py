"""The training loop: a thin shell around the pure step.

It wires a model factory, a loss function and data iterators (all injected)
to the optimizer, the data mesh, checkpoints and metrics. Nothing here is task
or model specific; ``launch/train.py`` supplies ``windowed_loss`` and the task
datasets.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sleep_jax.train import checkpoint as ckpt_lib
from sleep_jax.train import metrics as metrics_lib
from sleep_jax.train import optimizer as opt_lib
from sleep_jax.train import parallel
from sleep_jax.train import profiling
from sleep_jax.train import state as state_lib
from sleep_jax.train import step as step_lib
from sleep_jax.train import tensorboard as tb_lib
from sleep_jax.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run returns.

  Attributes:
    step: steps taken in total (including those before a resume).
    state: the final train state.
    graphdef: the model's graph definition (``nnx.merge(graphdef, ...)``).
    last_train: the last logged training metrics.
    eval: the final evaluation result (empty if no evaluator).
    resumed_from: the step restored on start, or ``None``.
  """
  step: int
  state: Any
  graphdef: Any
  last_train: dict
  eval: dict
  resumed_from: int | None


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The injected pieces of a run.

  Attributes:
    model_factory: ``nnx.Rngs -> nnx.Module``.
    loss_fn: ``(model, batch) -> (loss, aux)``, a masked mean (see ``step.py``);
      evaluation uses it as is. If it has a ``for_step(step, seed)`` method
      (e.g. ``windowed.WindowedLoss`` with a randomised ``N``), training step
      ``step`` uses the loss that returns instead; it must be hashable, and
      steps whose losses compare equal share one compiled step (compiled the
      first time it is needed). Where it reports its compute (``aux["cost"]``,
      from ``sleep_jax.cost``), the step logs it as ``sleep/*`` metrics.
    train_data: ``() -> iterator`` of this process's numpy batches; the
      iterator has ``get_state()`` / ``set_state()``.
    eval_data: ``() -> iterable`` of numpy eval batches, or ``None``.
    evaluator: ``() -> Evaluator`` (``update`` / ``result``), or ``None``.
    meta: JSON-able run description saved with every checkpoint.
  """
  model_factory: Callable
  loss_fn: Callable
  train_data: Callable[[], Iterator[dict]]
  eval_data: Callable[[], Any] | None = None
  evaluator: Callable[[], Any] | None = None
  meta: dict = dataclasses.field(default_factory=dict)


def _abstract_with_sharding(tree, mesh, fsdp: bool = False):
  if fsdp:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        parallel.fsdp_shardings(tree, mesh))
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover
    return None
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def make_eval_fn(loss_fn, graphdef, mesh) -> Callable[[Any, dict], dict]:
  """``(state, numpy batch) -> {"predictions", "token_loss"}`` for this process's rows."""
  fn = parallel.data_parallel_eval_step(step_lib.make_eval_step(loss_fn, graphdef), mesh)

  def run(state, batch):
    out = fn(state, parallel.shard_batch(batch, mesh))
    return {k: parallel.local_rows(v) for k, v in out.items()}

  return run


class TrainSteps:
  """A run's jitted train steps: ``steps(s)`` is step ``s``'s, one compiled step per distinct loss.

  A loss with ``for_step(step, seed)`` (a randomised ``N``) gives each step its
  loss; steps whose losses compare equal share one step, built on first use
  with ``parallel.make_data_parallel_train_step`` (``make_fsdp_train_step``
  when parameters and optimizer state are sharded, ``TrainConfig.fsdp``).
  """

  def __init__(self, loss_fn, opt, graphdef, mesh, seed: int, *, fsdp_state=None):
    self._loss_fn, self._opt, self._graphdef, self._mesh, self._seed = loss_fn, opt, graphdef, mesh, seed
    self._fsdp_state = fsdp_state  # the abstract train state, when parameters are sharded (fsdp)
    self._for_step = getattr(loss_fn, "for_step", None)
    self.compiled: dict[Any, Callable] = {}

  def loss_for(self, s: int):
    """The loss step ``s`` trains on."""
    return self._loss_fn if self._for_step is None else self._for_step(s, self._seed)

  def __call__(self, s: int) -> Callable:
    loss_fn = self.loss_for(s)
    if loss_fn not in self.compiled:
      if self._fsdp_state is not None:
        self.compiled[loss_fn] = parallel.make_fsdp_train_step(loss_fn, self._opt, self._graphdef, self._mesh,
                                                               self._fsdp_state)
      else:
        self.compiled[loss_fn] = parallel.make_data_parallel_train_step(loss_fn, self._opt, self._graphdef,
                                                                        self._mesh)
    return self.compiled[loss_fn]


@dataclasses.dataclass
class TrainSetup:
  """What a run trains with before its first step: the mesh, optimizer, model and its steps.

  Attributes:
    mesh: the data mesh.
    local_batch: this process's rows per batch.
    opt: the optimizer (``tx`` and ``schedules``).
    graphdef: the model's graph definition.
    state: the freshly initialised train state (not yet replicated).
    steps: the run's :class:`TrainSteps`.
  """
  mesh: Any
  local_batch: int
  opt: Any
  graphdef: Any
  state: Any
  steps: TrainSteps


def setup_training(spec: RunSpec, config: TrainConfig) -> TrainSetup:
  """Assembles a run's mesh, optimizer, initial state and train steps, as :func:`train` runs them.

  ``launch.paper_cost`` times the step this returns, so it measures the
  trainer's own step.
  """
  mesh = parallel.make_data_mesh(config.num_devices)
  local_batch = parallel.check_batch_size(config.batch_size, mesh)
  opt = opt_lib.make_optimizer(config.optimizer, config.num_steps)
  graphdef, state = state_lib.create_train_state(spec.model_factory, opt.tx, config.seed)
  fsdp_state = jax.eval_shape(lambda: state) if config.fsdp else None
  return TrainSetup(mesh=mesh, local_batch=local_batch, opt=opt, graphdef=graphdef, state=state,
                    steps=TrainSteps(spec.loss_fn, opt, graphdef, mesh, config.seed, fsdp_state=fsdp_state))


def restore_or_init(setup: TrainSetup, config: TrainConfig, checkpointer, data_iter):
  """The run's starting state: the latest checkpoint that restores (and its data position), else a fresh one.

  A fresh state takes ``config.init_from``'s parameters if given.

  Returns:
    ``(state, restored checkpoint or None)``, the state replicated over the
    mesh or, with ``config.fsdp``, sharded; ``data_iter`` is moved to the
    checkpoint's data position.
  """
  state = setup.state
  restored = checkpointer.restore_latest(_abstract_with_sharding(jax.eval_shape(lambda: state), setup.mesh,
                                                                 config.fsdp))
  if restored is None:
    if config.init_from:
      params = ckpt_lib.load_params(config.init_from, state.params)
      state = dataclasses.replace(state, params=params, opt_state=setup.opt.tx.init(params))
      log.info("initialised parameters from %s", config.init_from)
    place = parallel.shard_fsdp if config.fsdp else parallel.replicate
    return place(state, setup.mesh), None
  for s, reason in restored.skipped:
    log.warning("skipped unreadable checkpoint step %d: %s", s, reason)
  if restored.data_state is not None:
    data_iter.set_state(restored.data_state)
  else:
    log.warning("checkpoint step %d has no data iterator state; the data stream restarts", restored.step)
  log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
  return restored.state, restored


def train_record(metrics: dict, *, step: int, tokens: int, steps_per_s: float, tokens_per_s: float) -> dict:
  """The JSONL record of a logged training step, from its fetched metrics.

  Where the loss reported its compute (``sleep/wake_flops`` > 0),
  ``sleep/relative_cost`` is the step's FLOPs over its wake (``N = 1``)
  FLOPs, whatever ``N`` was drawn or adaptive sleep chose; where it reported
  passes but no FLOPs (a model ``cost.model_flops`` cannot count), only the
  zero FLOP entries are dropped; otherwise every zero ``sleep/*`` placeholder is. Per-example outputs are
  not part of it.
  """
  rec = metrics_lib.to_python({k: v for k, v in metrics.items() if k not in step_lib.PER_EXAMPLE_OUTPUTS})
  if rec.get("sleep/wake_flops"):
    rec["sleep/relative_cost"] = 1.0 + rec["sleep/sleep_flops"] / rec["sleep/wake_flops"]
  elif rec.get("sleep/n_passes") or rec.get("sleep/sleep_windows"):
    # The loss reports its passes but not their FLOPs (a model that cannot count them, cost.model_flops).
    rec = {k: v for k, v in rec.items() if k not in ("sleep/wake_flops", "sleep/sleep_flops")}
  else:  # the loss reports no compute
    rec = {k: v for k, v in rec.items() if k not in step_lib.COST_METRICS}
  rec.update({"kind": "train", "step": step, "tokens": tokens, "steps_per_s": steps_per_s,
              "tokens_per_s": tokens_per_s})
  return rec


class StepLog:
  """The steps dispatched since the last sync, and what :meth:`flush` makes of them.

  Dispatch is asynchronous: a step's metrics are device arrays until fetched.
  ``flush`` fetches every pending step's scalars (so the host blocks at least
  every ``sync_every`` steps), stops the run at the first non-finite one
  (writing a ``stop`` record first), and on a logging step writes the last
  step's :func:`train_record`, with the task evaluator's ``train/*`` accuracy
  on its batch.

  Attributes:
    last: the last record written.
  """

  def __init__(self, writer, *, batch_size: int, evaluator=None, bar=None, clock=time.perf_counter):
    self._writer, self._batch_size, self._evaluator, self._bar, self._clock = writer, batch_size, evaluator, bar, clock
    self._pending: list[tuple[int, dict, dict]] = []
    self._window_start, self._window_steps = clock(), 0
    self.seq_len = 0
    self.last: dict = {}

  def tokens(self, step: int) -> int:
    """Training tokens after ``step`` steps."""
    return step * self._batch_size * self.seq_len

  def __len__(self) -> int:
    return len(self._pending)

  def add(self, s: int, metrics: dict, batch: dict) -> None:
    """Records dispatched step ``s`` (0-based) with its metrics and this process's batch."""
    self.seq_len = self.seq_len or int(np.shape(batch["tokens"])[1])
    self._pending.append((s, metrics, batch))
    self._window_steps += 1

  def flush(self, log_now: bool, last_checkpoint: int | None) -> None:
    """Fetches the pending steps, checks them, and writes a record if ``log_now``.

    Raises:
      NonFiniteError: a pending step's loss or gradients were not finite.
    """
    if not self._pending:
      return
    scalars = lambda m: {k: v for k, v in m.items() if k not in step_lib.PER_EXAMPLE_OUTPUTS}
    fetched = jax.device_get([scalars(m) for _, m, _ in self._pending])
    for (s, _, _), m in zip(self._pending, fetched):
      try:
        metrics_lib.check_finite(s, m, last_checkpoint)
      except metrics_lib.NonFiniteError as e:
        self._writer.write({"kind": "stop", "step": s, "tokens": self.tokens(s), "reason": str(e),
                            "quantity": e.quantity})
        raise
    if log_now:
      self._log(fetched[-1])
    if self._bar is not None:
      self._bar.update(len(self._pending))  # advanced once the steps have actually run
    self._pending.clear()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

  def _log(self, fetched: dict) -> None:
    s, metrics, batch = self._pending[-1]
    elapsed = max(self._clock() - self._window_start, 1e-9)
    rec = train_record(fetched, step=s + 1, tokens=self.tokens(s + 1), steps_per_s=self._window_steps / elapsed,
                       tokens_per_s=self._window_steps * self._batch_size * self.seq_len / elapsed)
    if self._evaluator is not None and "predictions" in metrics:
      ev = self._evaluator()
      ev.update(batch, parallel.local_rows(metrics["predictions"]), parallel.local_rows(metrics["token_loss"]))
      rec.update({f"train/{k}": float(v) for k, v in ev.result().items()})
    self._writer.write(rec)
    self.last = rec
    if self._bar is not None:
      post = {"loss": f"{rec['loss']:.4f}", "tok/s": f"{rec['tokens_per_s']:.0f}"}
      if "train/accuracy" in rec:
        post["acc"] = f"{rec['train/accuracy']:.3f}"
      self._bar.set_postfix(post, refresh=False)
    self._window_start, self._window_steps = self._clock(), 0


def evaluate_and_log(spec: RunSpec, eval_fn, state, writer, *, step: int, tokens: int,
                     max_batches: int | None) -> dict:
  """Evaluates ``state`` on ``spec``'s eval split and writes an ``eval`` record.

  Args:
    spec: supplies ``eval_data`` and ``evaluator``.
    eval_fn: ``(state, batch) -> outputs`` (:func:`make_eval_fn`).
    state: the train state to evaluate.
    writer: where the record goes (``write(dict)``).
    step: the step the record is for.
    tokens: training tokens at ``step``.
    max_batches: eval batches (``None``: the whole split).

  Returns:
    The evaluator's result; ``{}`` (and no record) without eval data or an evaluator.
  """
  if spec.eval_data is None or spec.evaluator is None:
    return {}
  result = metrics_lib.evaluate(functools.partial(eval_fn, state), spec.eval_data(), spec.evaluator(),
                                max_batches=max_batches)
  writer.write({"kind": "eval", "step": step, "tokens": tokens, **result})
  return result


def _check_rows(batch: dict, local_batch: int, config: TrainConfig) -> None:
  if np.shape(batch["tokens"])[0] != local_batch:
    raise ValueError(f"the data iterator gave {np.shape(batch['tokens'])[0]} rows; this process expects "
                     f"{local_batch} (batch_size {config.batch_size} over {jax.process_count()} processes)")


def _write_eval_json(workdir: str, step: int, result: dict) -> None:
  import json
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"step": step, **result}, f, indent=1, sort_keys=True)


def train(spec: RunSpec, config: TrainConfig, workdir: str) -> TrainResult:
  """Trains (or resumes) a run in ``workdir``.

  On start the latest checkpoint that restores is loaded (train state and data
  iterator state); with none, the model is initialised (from
  ``config.init_from``'s parameters if given). Metrics go to
  ``<workdir>/metrics.jsonl``; the final evaluation also to
  ``<workdir>/eval.json``.

  Args:
    spec: the model, loss and data.
    config: the trainer configuration.
    workdir: the run directory.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteError: the loss or the gradients became NaN/inf (the last good
      checkpoint is kept, nothing is saved after the bad step).
    CheckpointError: checkpoints exist but none restores.
    ValueError: the batch does not split over the devices, or a bad argument.
  """
  if not workdir:
    raise ValueError("workdir must be a non-empty path")
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  setup = setup_training(spec, config)
  if is_main:
    groups = opt_lib.describe_param_groups(setup.state.params, config.optimizer)
    log.info("params: %d; %d tensors on muon, %d on adamw", state_lib.count_params(setup.state.params),
             len(groups["muon"]), len(groups["adamw"]))
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), max_to_keep=config.max_to_keep)
  data_iter = spec.train_data()
  state, restored = restore_or_init(setup, config, checkpointer, data_iter)
  start = int(jax.device_get(state.step))
  last_saved = restored.step if restored is not None else None
  if is_main:
    log.info("train state: %d bytes on device 0 (%s)", parallel.bytes_per_device(state),
             "parameters and optimizer state sharded, fsdp" if config.fsdp else "replicated")
  eval_fn = make_eval_fn(spec.loss_fn, setup.graphdef, setup.mesh)
  # Every record goes to metrics.jsonl and to TensorBoard event files beside it.
  writer = tb_lib.FanOut(metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_main),
                         tb_lib.run_writer(workdir, config, spec.meta, enabled=is_main))
  profiler = profiling.StepProfiler.for_run(workdir, config.profile_steps, enabled=is_main)
  steps = StepLog(writer, batch_size=config.batch_size, evaluator=spec.evaluator,
                  bar=_progress(config.num_steps, start, config.progress and is_main))
  run_eval = lambda state, step: evaluate_and_log(spec, eval_fn, state, writer, step=step, tokens=steps.tokens(step),
                                                  max_batches=config.eval_batches)

  try:
    for s in range(start, config.num_steps):
      batch = next(data_iter)
      _check_rows(batch, setup.local_batch, config)
      state, m = profiler.run(s, setup.steps(s), state, parallel.shard_batch(batch, setup.mesh))
      steps.add(s, m, batch)
      done = s + 1
      log_now = done % config.log_every == 0 or done == config.num_steps
      save_now = config.checkpoint_every and done % config.checkpoint_every == 0
      if log_now or save_now or len(steps) >= config.sync_every:
        steps.flush(log_now, last_saved)
      if save_now and done != config.num_steps:
        checkpointer.save(done, state, data_state=data_iter.get_state(), meta=spec.meta)
        last_saved = done
      if config.eval_every and done % config.eval_every == 0 and done != config.num_steps:
        run_eval(state, done)
    steps.flush(True, last_saved)
    if start < config.num_steps or last_saved != config.num_steps:
      checkpointer.save(config.num_steps, state, data_state=data_iter.get_state(), meta=spec.meta)
    result = run_eval(state, config.num_steps)
    if is_main and result:
      _write_eval_json(workdir, config.num_steps, result)
  finally:
    for closing in (steps, profiler, writer, checkpointer):
      closing.close()
  return TrainResult(step=config.num_steps, state=state, graphdef=setup.graphdef, last_train=steps.last,
                     eval=result, resumed_from=restored.step if restored is not None else None)


def evaluate_checkpoint(spec: RunSpec, config: TrainConfig, source: str, *, step: int | None = None,
                        max_batches: int | None = None) -> tuple[int, dict]:
  """Evaluates the parameters of a run's checkpoint on ``spec.eval_data``.

  Args:
    spec: the model, loss, eval data and evaluator (the model config must
      match the checkpoint's; the sleep config may differ, e.g. more passes).
    config: supplies the seed, ``num_devices`` and ``batch_size`` checks.
    source: a run's workdir or its ``checkpoints`` directory.
    step: the checkpoint step (``None``: the newest that restores).
    max_batches: eval batches (``None``: the whole split).

  Returns:
    ``(step, result)`` with the task evaluator's result.

  Raises:
    CheckpointError: nothing restorable at ``source``.
    ValueError: no eval data or evaluator in ``spec``, or a bad batch split.
  """
  if spec.eval_data is None or spec.evaluator is None:
    raise ValueError("spec needs eval_data and evaluator to evaluate")
  mesh = parallel.make_data_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  graphdef, fresh = state_lib.create_train_state(spec.model_factory, optax.identity(), config.seed)
  params, loaded = ckpt_lib.load_params(source, fresh.params, step=step, return_step=True)
  state = parallel.replicate(dataclasses.replace(fresh, step=np.int32(loaded), params=params), mesh)
  eval_fn = make_eval_fn(spec.loss_fn, graphdef, mesh)
  result = metrics_lib.evaluate(functools.partial(eval_fn, state), spec.eval_data(), spec.evaluator(),
                                max_batches=max_batches)
  return loaded, result

