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
      first time it is needed).
    train_data: ``() -> iterator`` of this process's numpy batches; the
      iterator has ``get_state()`` / ``set_state()``.
    eval_data: ``() -> iterable`` of numpy eval batches, or ``None``.
    evaluator: ``() -> Evaluator`` (``update`` / ``result``), or ``None``.
    sleep_cost: ``loss_mask -> dict`` of sleep-cost metrics, or ``None``
      (host-side, fixed ``N``). Where the loss reports its compute (e.g.
      ``windowed_loss``), the step's ``sleep/*`` metrics replace the ones that
      depend on ``N``: ``sleep/relative_cost`` is then FLOPs over wake FLOPs.
    meta: JSON-able run description saved with every checkpoint.
  """
  model_factory: Callable
  loss_fn: Callable
  train_data: Callable[[], Iterator[dict]]
  eval_data: Callable[[], Any] | None = None
  evaluator: Callable[[], Any] | None = None
  sleep_cost: Callable[[np.ndarray], dict] | None = None
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
  mesh = parallel.make_data_mesh(config.num_devices)
  local_batch = parallel.check_batch_size(config.batch_size, mesh)
  opt = opt_lib.make_optimizer(config.optimizer, config.num_steps)
  graphdef, state = state_lib.create_train_state(spec.model_factory, opt.tx, config.seed)
  if is_main:
    groups = opt_lib.describe_param_groups(state.params, config.optimizer)
    log.info("params: %d; %d tensors on muon, %d on adamw", state_lib.count_params(state.params),
             len(groups["muon"]), len(groups["adamw"]))
    log.debug("param groups: %s", groups)

  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), max_to_keep=config.max_to_keep)
  abstract_state = jax.eval_shape(lambda: state)
  restored = checkpointer.restore_latest(_abstract_with_sharding(abstract_state, mesh, config.fsdp))
  data_iter = spec.train_data()
  if restored is not None:
    for s, reason in restored.skipped:
      log.warning("skipped unreadable checkpoint step %d: %s", s, reason)
    state = restored.state
    if restored.data_state is not None:
      data_iter.set_state(restored.data_state)
    else:
      log.warning("checkpoint step %d has no data iterator state; the data stream restarts", restored.step)
    log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
  else:
    if config.init_from:
      params = ckpt_lib.load_params(config.init_from, state.params)
      state = dataclasses.replace(state, params=params, opt_state=opt.tx.init(params))
      log.info("initialised parameters from %s", config.init_from)
    state = parallel.shard_fsdp(state, mesh) if config.fsdp else parallel.replicate(state, mesh)
  if is_main:
    log.info("train state: %d bytes on device 0 (%s)", parallel.bytes_per_device(state),
             "parameters and optimizer state sharded, fsdp" if config.fsdp else "replicated")
  start = int(jax.device_get(state.step))
  last_saved = restored.step if restored is not None else None

  loss_for_step = getattr(spec.loss_fn, "for_step", None)
  step_fns: dict[Any, Callable] = {}

  def step_fn_for(s: int) -> Callable:
    # One jitted step per distinct loss (e.g. per randomised N), built on first use.
    loss_fn = spec.loss_fn if loss_for_step is None else loss_for_step(s, config.seed)
    if loss_fn not in step_fns:
      if config.fsdp:
        step_fns[loss_fn] = parallel.make_fsdp_train_step(loss_fn, opt, graphdef, mesh, abstract_state)
      else:
        step_fns[loss_fn] = parallel.make_data_parallel_train_step(loss_fn, opt, graphdef, mesh)
    return step_fns[loss_fn]

  eval_fn = make_eval_fn(spec.loss_fn, graphdef, mesh)
  # Every record goes to metrics.jsonl and to TensorBoard event files beside it.
  writer = tb_lib.FanOut(metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_main),
                         tb_lib.run_writer(workdir, config, spec.meta, enabled=is_main))
  profiler = profiling.StepProfiler.for_run(workdir, config.profile_steps, enabled=is_main)
  bar = _progress(config.num_steps, start, config.progress and is_main)

  def run_eval(step: int) -> dict:
    if spec.eval_data is None or spec.evaluator is None:
      return {}
    result = metrics_lib.evaluate(functools.partial(eval_fn, state), spec.eval_data(), spec.evaluator(),
                                  max_batches=config.eval_batches)
    writer.write({"kind": "eval", "step": step, "tokens": tokens_seen(step), **result})
    return result

  seq_len = None
  tokens_seen = lambda step: step * config.batch_size * (seq_len or 0)
  pending: list[tuple[int, dict, dict]] = []
  window_start, window_steps = time.perf_counter(), 0
  last_train: dict = {}

  def flush(log_now: bool) -> None:
    nonlocal window_start, window_steps, last_train
    if not pending:
      return
    scalars = lambda m: {k: v for k, v in m.items() if k not in step_lib.PER_EXAMPLE_OUTPUTS}
    fetched = jax.device_get([scalars(m) for _, m, _ in pending])
    for (s, _, _), m in zip(pending, fetched):
      try:
        metrics_lib.check_finite(s, m, last_saved)
      except metrics_lib.NonFiniteError as e:
        writer.write({"kind": "stop", "step": s, "tokens": tokens_seen(s), "reason": str(e),
                      "quantity": e.quantity})
        raise
    s, last_m, batch = pending[-1]
    m = fetched[-1]
    if log_now:
      elapsed = max(time.perf_counter() - window_start, 1e-9)
      rec = metrics_lib.to_python(m)
      reported = bool(rec.get("sleep/wake_flops"))
      if reported:
        # The step's own accounting (what ran, whatever N was drawn or adaptive
        # sleep chose) replaces the host-side fixed-N estimate: relative_cost
        # becomes the step's FLOPs over its wake (N = 1) FLOPs.
        rec["sleep/relative_cost"] = 1.0 + rec["sleep/sleep_flops"] / rec["sleep/wake_flops"]
      else:  # the loss reports no compute
        rec = {k: v for k, v in rec.items() if k not in step_lib.COST_METRICS}
      if spec.sleep_cost is not None:
        host = spec.sleep_cost(batch["loss_mask"])
        if reported:
          host.pop("sleep/block_passes", None)
        rec = {**host, **rec}
      rec.update({"kind": "train", "step": s + 1, "tokens": tokens_seen(s + 1),
                  "steps_per_s": window_steps / elapsed,
                  "tokens_per_s": window_steps * config.batch_size * seq_len / elapsed})
      if spec.evaluator is not None and "predictions" in last_m:
        ev = spec.evaluator()
        ev.update(batch, parallel.local_rows(last_m["predictions"]), parallel.local_rows(last_m["token_loss"]))
        rec.update({f"train/{k}": float(v) for k, v in ev.result().items()})
      writer.write(rec)
      last_train = rec
      if bar is not None:
        post = {"loss": f"{rec['loss']:.4f}", "tok/s": f"{rec['tokens_per_s']:.0f}"}
        if "train/accuracy" in rec:
          post["acc"] = f"{rec['train/accuracy']:.3f}"
        bar.set_postfix(post, refresh=False)
      window_start, window_steps = time.perf_counter(), 0
    if bar is not None:
      # Advanced when the steps have actually run (dispatch is asynchronous).
      bar.update(len(pending))
    pending.clear()

  try:
    for s in range(start, config.num_steps):
      batch = next(data_iter)
      seq_len = seq_len or int(np.shape(batch["tokens"])[1])
      if np.shape(batch["tokens"])[0] != local_batch:
        raise ValueError(f"the data iterator gave {np.shape(batch['tokens'])[0]} rows; this process expects "
                         f"{local_batch} (batch_size {config.batch_size} over {jax.process_count()} processes)")
      state, m = profiler.run(s, step_fn_for(s), state, parallel.shard_batch(batch, mesh))
      pending.append((s, m, batch))
      window_steps += 1
      done = s + 1
      log_now = done % config.log_every == 0 or done == config.num_steps
      save_now = config.checkpoint_every and done % config.checkpoint_every == 0
      if log_now or save_now or len(pending) >= config.sync_every:
        flush(log_now)
      if save_now and done != config.num_steps:
        checkpointer.save(done, state, data_state=data_iter.get_state(), meta=spec.meta)
        last_saved = done
      if config.eval_every and done % config.eval_every == 0 and done != config.num_steps:
        run_eval(done)
    flush(True)
    final = config.num_steps
    if start < final or last_saved != final:
      checkpointer.save(final, state, data_state=data_iter.get_state(), meta=spec.meta)
    result = run_eval(final)
    if is_main and result:
      import json
      with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump({"step": final, **result}, f, indent=1, sort_keys=True)
  finally:
    if bar is not None:
      bar.close()
    profiler.close()
    writer.close()
    checkpointer.close()
  return TrainResult(step=config.num_steps, state=state, graphdef=graphdef, last_train=last_train,
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

