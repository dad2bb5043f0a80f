"""A pure training step: ``train_step(state, batch) -> (state, metrics)``.

The step is built from an injected ``loss_fn(model, batch) -> (loss, aux)``
(e.g. ``windowed_loss`` with the sleep config bound), so sleep, remat and the
task live in the loss; the step only differentiates, clips, guards against
non-finite values and applies the optimizer.

Contract of ``loss_fn``: ``loss`` is the mean over the positions where
``batch["loss_mask"]`` is 1 (so shards can be re-weighted exactly by their token
counts); ``aux`` may carry ``predictions`` and ``token_loss`` ([B, T]) as
attributes or dict keys, which are passed through for the task evaluator, and
``cost``, a dict of per-example ``[B]`` compute (``sleep_jax.cost.sequence_cost``,
as ``windowed_loss`` gives), reduced over the global batch into the
``sleep/*`` metrics (:data:`COST_METRICS`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sleep_jax.train.state import TrainState, merge_model

LossFn = Callable[..., tuple[jax.Array, Any]]

# Compute of the step, from aux["cost"] (zeros when the loss reports none):
# total wake and sleep FLOPs over the global batch, the mean passes per window
# that slept (wake pass included: the paper's N, averaged under adaptive sleep),
# windows slept per sequence, and the step's N (a randomised N's draw).
COST_METRICS = ("sleep/wake_flops", "sleep/sleep_flops", "sleep/passes", "sleep/sleep_windows", "sleep/n_passes")
SCALAR_METRICS = ("loss", "grad_norm", "n_tokens", "loss_finite", "grads_finite") + COST_METRICS
PER_EXAMPLE_OUTPUTS = ("predictions", "token_loss")
# The eval step's per-example compute ([B] float32, zeros when the loss reports
# none): passes summed over the windows that slept, those windows, and the
# wake and sleep FLOPs. ``metrics.evaluate`` reduces them to ``sleep/*`` keys.
EVAL_COST_OUTPUTS = ("sleep_passes", "sleep_windows", "wake_flops", "sleep_flops")
EVAL_EXAMPLE_OUTPUTS = PER_EXAMPLE_OUTPUTS + EVAL_COST_OUTPUTS


def _aux_get(aux, name):
  if isinstance(aux, dict):
    return aux.get(name)
  return getattr(aux, name, None)


def _per_example(aux, batch) -> dict:
  # Always present (zeros when aux lacks them) so the output structure, and
  # hence the shard_map out_specs, is known without tracing the step.
  shape = jnp.shape(batch["loss_mask"])
  out = {}
  for name, dtype in zip(PER_EXAMPLE_OUTPUTS, (jnp.int32, jnp.float32)):
    value = _aux_get(aux, name)
    out[name] = jnp.zeros(shape, dtype) if value is None else jnp.asarray(value, dtype)
  return out


def _cost_metrics(aux, batch, axis_name) -> dict:
  cost = _aux_get(aux, "cost") or {}
  keys = ("wake_flops", "sleep_flops", "sleep_passes", "sleep_windows", "n_passes")
  sums = {k: jnp.sum(jnp.asarray(cost[k], jnp.float32)) if k in cost else jnp.zeros((), jnp.float32) for k in keys}
  sums["examples"] = jnp.asarray(jnp.shape(batch["loss_mask"])[0], jnp.float32)
  if axis_name:
    sums = lax.psum(sums, axis_name)
  examples = jnp.maximum(sums["examples"], 1.0)
  return {"sleep/wake_flops": sums["wake_flops"], "sleep/sleep_flops": sums["sleep_flops"],
          "sleep/passes": sums["sleep_passes"] / jnp.maximum(sums["sleep_windows"], 1.0),
          "sleep/sleep_windows": sums["sleep_windows"] / examples, "sleep/n_passes": sums["n_passes"] / examples}


def step_rngs(model_state, step):
  """``model_state`` with the step folded into every RNG key (an NNX stream's, e.g. dropout's).

  The train state carries the model's non-parameter variables unchanged
  (``TrainState.model_state``), so without this every step would draw the same
  dropout masks; with it step ``s`` draws from ``fold_in(key, s)``:
  different masks per step, the same per seed. Other leaves are returned as
  they are (a model without RNG streams is untouched).
  """
  def fold(x):
    is_key = jnp.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)
    return jax.random.fold_in(x, step) if is_key else x
  return jax.tree.map(fold, model_state)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, graphdef, *,
                    schedules: dict[str, Callable] | None = None, axis_name: str | None = None,
                    with_rng: bool = False) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the (unjitted) pure train step.

  Args:
    loss_fn: ``(model, batch) -> (loss, aux)``, or ``(model, batch, rng)`` when
      ``with_rng``.
    tx: optimizer.
    graphdef: the model's static graph definition.
    schedules: learning-rate schedules reported as ``lr/<name>`` metrics.
    axis_name: the data-parallel mesh axis when the step runs inside
      ``jax.shard_map``; ``None`` on one device.
    with_rng: pass ``fold_in(state.rng, state.step)`` to ``loss_fn``.

  Returns:
    ``train_step(state, batch) -> (state, metrics)``. ``metrics`` holds the
    scalars ``loss`` (global masked mean), ``grad_norm`` (before clipping),
    ``n_tokens``, ``loss_finite``, ``grads_finite``, ``lr/<group>``, the
    compute accounting :data:`COST_METRICS`, and per-example ``predictions``
    / ``token_loss`` (zeros when ``aux`` lacks them). A step
    whose loss or gradients are not finite leaves params and optimizer state
    unchanged (the host stops the run; see ``loop.py``).
  """
  grads_fn = make_grads_fn(loss_fn, graphdef, axis_name=axis_name, with_rng=with_rng)
  apply_fn = make_apply_fn(tx, schedules=schedules)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    loss, grads, metrics = grads_fn(state, batch)
    return apply_fn(state, loss, grads, metrics)

  return train_step


def make_grads_fn(loss_fn: LossFn, graphdef, *, axis_name: str | None = None, with_rng: bool = False,
                  reduce_grads: bool = True) -> Callable[[TrainState, dict], tuple[jax.Array, Any, dict]]:
  """The differentiating half of :func:`make_train_step`.

  Returns:
    ``grads_fn(state, batch) -> (loss, grads, metrics)``: the global masked
    mean loss, the gradients (this shard's share, psummed over ``axis_name``
    when ``reduce_grads``; unreduced otherwise, for a caller that
    reduce-scatters them itself) and the metrics that need the batch
    (``n_tokens``, :data:`COST_METRICS`, per-example outputs).
  """

  def grads_fn(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    n_local = jnp.sum(batch["loss_mask"]).astype(jnp.float32)
    n_total = lax.psum(n_local, axis_name) if axis_name else n_local

    def objective(params):
      model = merge_model(graphdef, TrainState(state.step, params, None, state.rng,
                                               step_rngs(state.model_state, state.step)))
      loss, aux = loss_fn(model, batch, rng) if with_rng else loss_fn(model, batch)
      if axis_name:
        # This shard's share of the global masked mean: re-weighting by token
        # counts makes the summed loss the mean over all masked tokens, exactly
        # as on one device (shards may hold different numbers of answer tokens).
        loss = jnp.where(n_local > 0, loss * n_local, 0.0) / jnp.maximum(n_total, 1.0)
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    if axis_name:
      # The step runs under shard_map(check_vma=False) (pmap semantics): the
      # gradient above is this shard's, so the global one is the psum. (With
      # check_vma=True jax would already have summed it, and a psum/pmean here
      # would scale it by n_devices.)
      loss = lax.psum(loss, axis_name)
      if reduce_grads:
        grads = lax.psum(grads, axis_name)
    metrics = {"n_tokens": n_total}
    metrics.update(_cost_metrics(aux, batch, axis_name))
    metrics.update(_per_example(aux, batch))
    return loss, grads, metrics

  return grads_fn


def make_apply_fn(tx: optax.GradientTransformation, *, schedules: dict[str, Callable] | None = None
                  ) -> Callable[[TrainState, jax.Array, Any, dict], tuple[TrainState, dict]]:
  """The updating half of :func:`make_train_step`: clip-free norm, finiteness guard, optimizer.

  Returns:
    ``apply_fn(state, loss, grads, metrics) -> (state, metrics)`` with the
    global gradients; a non-finite loss or gradient leaves params and
    optimizer state unchanged. Elementwise apart from the gradient norm and
    the optimizer's own reductions, so it runs on sharded state as well
    (``parallel.make_fsdp_train_step``).
  """
  schedules = dict(schedules or {})

  def apply_fn(state: TrainState, loss, grads, batch_metrics: dict):
    grad_norm = optax.tree.norm(grads)
    loss_finite = jnp.isfinite(loss)
    grads_finite = jnp.isfinite(grad_norm)
    ok = jnp.logical_and(loss_finite, grads_finite)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt_state, state.opt_state), rng=state.rng,
                           model_state=state.model_state)
    metrics = {**batch_metrics, "loss": loss, "grad_norm": grad_norm, "loss_finite": loss_finite,
               "grads_finite": grads_finite}
    for name, sched in schedules.items():
      metrics[f"lr/{name}"] = jnp.asarray(sched(state.step), jnp.float32)
    return new_state, metrics

  return apply_fn


def _eval_cost(aux, batch) -> dict:
  cost = _aux_get(aux, "cost") or {}
  b = jnp.shape(batch["loss_mask"])[0]
  return {k: jnp.asarray(cost[k], jnp.float32) if k in cost else jnp.zeros((b,), jnp.float32)
          for k in EVAL_COST_OUTPUTS}


def make_eval_step(loss_fn: LossFn, graphdef) -> Callable[[TrainState, dict], dict]:
  """``eval_step(state, batch) -> {loss, n_tokens, predictions, token_loss, <EVAL_COST_OUTPUTS>}`` (no update).

  ``predictions`` and ``token_loss`` are ``[B, T]``; the compute outputs
  (:data:`EVAL_COST_OUTPUTS`) are per example, ``[B]``: what each example's
  sleep ran, which under adaptive sleep differs from example to example.
  """

  def eval_step(state: TrainState, batch: dict) -> dict:
    model = merge_model(graphdef, state)
    model.eval()  # dropout off (deterministic=True where a module has the attribute)
    loss, aux = loss_fn(model, batch)
    out = {"loss": loss, "n_tokens": jnp.sum(batch["loss_mask"]).astype(jnp.float32)}
    out.update(_per_example(aux, batch))
    out.update(_eval_cost(aux, batch))
    return out

  return eval_step
