"""Data parallelism with ``jax.shard_map`` over a ``data`` mesh axis.

The train state is replicated (``P()``) and the batch split along its first
axis (``P("data")``). The mesh uses ``Auto`` axes: ``jax.make_mesh`` defaults
to ``Explicit`` in this jax version, which makes shard_map reject inputs whose
sharding differs from ``in_specs`` and breaks some plain-jit code.

Gradient semantics: the step runs with ``check_vma=False`` (pmap semantics:
the gradient of the replicated params is the shard's own) and psums each
shard's token-weighted loss share and gradient (see ``step.py``). With the
default ``check_vma=True`` the gradient of a replicated input would already
come back summed, and the usual ``pmean`` of grads would give ``n_devices x``
the gradient; it would also reject kernels whose loop carries are not
annotated as varying over the axis (the chunked gated delta rule's
``fori_loop`` is one), so the unchecked mode is the robust choice here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sleep_jax.train.step import EVAL_EXAMPLE_OUTPUTS, PER_EXAMPLE_OUTPUTS, SCALAR_METRICS, make_train_step

DATA_AXIS = "data"


def make_data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh with an Auto axis over the first ``num_devices`` devices.

  Args:
    num_devices: devices to use; ``None`` means all (every host's) devices.

  Raises:
    ValueError: if more devices are requested than exist, or, with several
      processes, fewer than all of them.
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if num_devices < 1 or num_devices > len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}] (devices available), got {num_devices}")
  if jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError(f"num_devices must be all {len(devices)} devices with {jax.process_count()} processes, "
                     f"got {num_devices}")
  return jax.make_mesh((num_devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:num_devices])


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """Returns the per-process batch size, or raises if the global batch does not split evenly."""
  n_dev = mesh.devices.size
  if batch_size % n_dev:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {n_dev} devices of the data mesh")
  n_proc = jax.process_count()
  if batch_size % n_proc:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {n_proc} processes")
  return batch_size // n_proc


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree replicated on every device of the mesh."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def shard_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Assembles this process's rows into global arrays split along ``data``."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded along its first axis, in order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows, axis=0)


def _metric_specs(metrics: dict) -> dict:
  return {k: (P(DATA_AXIS) if k in PER_EXAMPLE_OUTPUTS else P()) for k in metrics}


def metric_specs(schedule_names) -> dict:
  """shard_map out_specs of the step's metrics: scalars replicated, per-example split."""
  specs = {k: P() for k in SCALAR_METRICS}
  specs.update({f"lr/{n}": P() for n in schedule_names})
  specs.update({k: P(DATA_AXIS) for k in PER_EXAMPLE_OUTPUTS})
  return specs


def data_parallel_train_step(train_step: Callable, mesh: jax.sharding.Mesh, *, schedule_names=(),
                             donate: bool = True) -> Callable:
  """Jits a train step over the data mesh.

  Args:
    train_step: built by ``make_train_step(..., axis_name="data")``.
    mesh: the data mesh.
    schedule_names: the ``schedules`` keys given to ``make_train_step``.
    donate: donate the input state's buffers.

  Returns:
    ``step(state, batch) -> (state, metrics)`` on global arrays; the state is
    replicated, per-example metrics are split along ``data``.
  """
  fn = jax.shard_map(train_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                     out_specs=(P(), metric_specs(schedule_names)), check_vma=False)
  return jax.jit(fn, donate_argnums=(0,) if donate else ())


def make_data_parallel_train_step(loss_fn: Callable, optimizer, graphdef, mesh: jax.sharding.Mesh, *,
                                  donate: bool = True) -> Callable:
  """A run's jitted train step: :func:`make_train_step` over the data mesh, its schedules as ``lr/*`` metrics.

  The one place a run's step is assembled: ``loop.train`` builds each of its
  steps (one per distinct loss) with it, and so does the training benchmark.

  Args:
    loss_fn: ``(model, batch) -> (loss, aux)`` (see ``step.py``).
    optimizer: an ``optimizer.Optimizer`` (``tx`` and ``schedules``).
    graphdef: the model's static graph definition.
    mesh: the data mesh.
    donate: donate the input state's buffers.

  Returns:
    ``step(state, batch) -> (state, metrics)`` on global arrays (see
    :func:`data_parallel_train_step`).
  """
  train_step = make_train_step(loss_fn, optimizer.tx, graphdef, schedules=optimizer.schedules, axis_name=DATA_AXIS)
  return data_parallel_train_step(train_step, mesh, schedule_names=tuple(optimizer.schedules), donate=donate)


def data_parallel_eval_step(eval_step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Jits ``eval_step(state, batch) -> dict`` over the data mesh; every output is split along ``data``.

  Scalars come back as one value per device (``[n_devices]``).
  """

  def per_shard(state, batch):
    out = eval_step(state, batch)
    return {k: (v if k in EVAL_EXAMPLE_OUTPUTS else v[None]) for k, v in out.items()}

  return jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS),
                               check_vma=False))


# -- FSDP: parameters and optimizer state sharded over the data axis ---------------------------------------
# Leaves with fewer elements than this stay replicated: sharding a norm scale or a scalar saves nothing and
# costs a collective per use.
FSDP_MIN_SIZE = 1024


def fsdp_spec(shape, n_devices: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """The FSDP partition of one array: its largest axis that ``n_devices`` divides, over ``data``.

  A function of the shape alone, so a parameter, its gradient and its
  optimizer moments (same shape) get the same layout and the optimizer's
  elementwise update needs no communication. Arrays smaller than
  ``min_size`` elements, or with no divisible axis, stay replicated (``P()``).
  """
  shape = tuple(shape)
  if n_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  axes = [i for i, d in enumerate(shape) if d % n_devices == 0]
  if not axes:
    return P()
  axis = max(axes, key=lambda i: (shape[i], -i))
  return P(*([None] * axis + [DATA_AXIS]))


def fsdp_specs(tree, mesh: jax.sharding.Mesh):
  """:func:`fsdp_spec` of every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
  n = mesh.devices.size
  return jax.tree.map(lambda x: fsdp_spec(np.shape(x), n), tree)


def fsdp_shardings(tree, mesh: jax.sharding.Mesh):
  """``NamedSharding`` of every leaf of ``tree`` under :func:`fsdp_spec`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), fsdp_specs(tree, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def shard_fsdp(tree, mesh: jax.sharding.Mesh):
  """Places a pytree (a train state) with every large leaf split over ``data`` (:func:`fsdp_spec`)."""
  shardings = fsdp_shardings(tree, mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]), tree, shardings)


def bytes_per_device(tree) -> int:
  """Bytes of ``tree``'s arrays held on the first device (the largest share under these layouts)."""
  device = jax.devices()[0]
  total = 0
  for x in jax.tree.leaves(tree):
    for shard in getattr(x, "addressable_shards", ()):
      if shard.device == device:
        total += shard.data.nbytes
  return total


def _reduce_scatter(grads, specs, axis_name: str):
  """psum of each gradient leaf over ``axis_name``, left split as ``specs`` says (a reduce-scatter)."""

  def one(g, spec):
    if not any(s == DATA_AXIS for s in spec):
      return lax.psum(g, axis_name)
    axis = list(spec).index(DATA_AXIS)
    return lax.psum_scatter(g, axis_name, scatter_dimension=axis, tiled=True)

  return jax.tree.map(one, grads, specs, is_leaf=lambda x: isinstance(x, P))


def make_fsdp_train_step(loss_fn: Callable, optimizer, graphdef, mesh: jax.sharding.Mesh, abstract_state, *,
                         donate: bool = True) -> Callable:
  """A run's train step with parameters and optimizer state sharded over ``data`` (FSDP style).

  The data-parallel step's numbers (:func:`make_data_parallel_train_step`),
  laid out differently: between steps every large leaf of the train state
  (parameters, optimizer moments) lives split over the devices
  (:func:`fsdp_spec`). Inside the step the parameters are gathered for the
  forward and backward pass (``shard_map`` with a replicated in-spec: XLA
  all-gathers them), each device's gradient is reduce-scattered to the same
  split, and the optimizer update runs on the shards (``jax.jit`` with the
  sharded layout in and out), so the optimizer state is never replicated.
  Only reduction orders differ from the replicated step (the gradient's
  reduce-scatter, the gradient norm, the optimizer's own reductions).

  Args:
    loss_fn: ``(model, batch) -> (loss, aux)`` (see ``step.py``).
    optimizer: an ``optimizer.Optimizer`` (``tx`` and ``schedules``).
    graphdef: the model's static graph definition.
    mesh: the data mesh.
    abstract_state: the train state (arrays or ``ShapeDtypeStruct``) whose
      shapes fix the layout.
    donate: donate the input state's buffers.

  Returns:
    ``step(state, batch) -> (state, metrics)`` on global arrays; the state
    must be placed by :func:`shard_fsdp`.
  """
  from sleep_jax.train.step import make_apply_fn, make_grads_fn

  schedules = optimizer.schedules
  grads_fn = make_grads_fn(loss_fn, graphdef, axis_name=DATA_AXIS, reduce_grads=False)
  apply_fn = make_apply_fn(optimizer.tx, schedules=schedules)
  param_specs = fsdp_specs(abstract_state.params, mesh)

  def per_shard(state, batch):
    loss, grads, metrics = grads_fn(state, batch)
    return loss, _reduce_scatter(grads, param_specs, DATA_AXIS), metrics

  batch_metric_specs = {k: v for k, v in metric_specs(tuple(schedules)).items()
                        if k not in ("loss", "grad_norm", "loss_finite", "grads_finite") and not k.startswith("lr/")}
  sharded_grads = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                out_specs=(P(), param_specs, batch_metric_specs), check_vma=False)

  def step(state, batch):
    # The optimizer state stays out of the shard_map: only what the forward reads is gathered.
    loss, grads, metrics = sharded_grads(dataclasses.replace(state, opt_state=None), batch)
    return apply_fn(state, loss, grads, metrics)

  state_shardings = fsdp_shardings(abstract_state, mesh)
  out_metrics = {k: NamedSharding(mesh, v) for k, v in metric_specs(tuple(schedules)).items()}
  return jax.jit(step, in_shardings=(state_shardings, NamedSharding(mesh, P(DATA_AXIS))),
                 out_shardings=(state_shardings, out_metrics), donate_argnums=(0,) if donate else ())
