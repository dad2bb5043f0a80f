"""The paper's optimizer: Muon for hidden 2-D weight matrices, AdamW for the rest.

Which parameters count as "hidden matrices" is decided by :func:`param_labels`
from the parameter's path and rank, so the split is visible and testable
(``describe_param_groups``) instead of buried in optax masks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from optax import contrib as optax_contrib

from sleep_jax.train.config import OptimizerConfig

MUON = "muon"
ADAMW = "adamw"


def path_str(path) -> str:
  """'/'-joined parameter path without the nnx ``value`` leaf key."""
  parts = []
  for p in path:
    name = getattr(p, "key", None)
    if name is None:
      name = getattr(p, "name", None)
    if name is None:
      name = getattr(p, "idx", p)
    if name == "value":
      continue
    parts.append(str(name))
  return "/".join(parts)


def param_label(path: str, shape: tuple[int, ...], config: OptimizerConfig) -> str:
  """Returns "muon" for a hidden 2-D weight matrix and "adamw" otherwise."""
  if config.kind == "adamw" or len(shape) != 2:
    return ADAMW
  lowered = path.lower()
  if any(pat.lower() in lowered for pat in config.adamw_patterns):
    return ADAMW
  return MUON


def param_labels(params, config: OptimizerConfig):
  """A tree like ``params`` whose leaves are "muon" or "adamw"."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: param_label(path_str(p), tuple(jnp.shape(x)), config), params)


def describe_param_groups(params, config: OptimizerConfig) -> dict[str, list[str]]:
  """Lists parameter paths per optimizer group (for logs and tests)."""
  groups: dict[str, list[str]] = {MUON: [], ADAMW: []}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    s = path_str(path)
    groups[param_label(s, tuple(jnp.shape(x)), config)].append(s)
  return groups


def make_schedule(peak: float, config: OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Warm-up then cosine / linear / constant; ``decay_steps`` defaults to ``num_steps``.

  With ``config.restarts`` the schedule runs once per segment between restarts
  (and the run's end), each over its own length.

  Raises:
    ValueError: a restart at or beyond ``num_steps``.
  """
  if config.restarts:
    if config.restarts[-1] >= num_steps:
      raise ValueError(f"OptimizerConfig.restarts {config.restarts} must all be below the run's num_steps "
                       f"({num_steps})")
    edges = (0, *config.restarts, num_steps)
    one = dataclasses.replace(config, restarts=())
    return optax.join_schedules([make_schedule(peak, one, b - a) for a, b in zip(edges, edges[1:])],
                                list(config.restarts))
  total = max(config.decay_steps or num_steps, 1)
  warmup = min(config.warmup_steps, total)
  end = peak * config.min_lr_ratio
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), end_value=end)
  if config.schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)),
         optax.linear_schedule(peak, end, max(total - warmup, 1))], [warmup])
  return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                              [warmup])


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation with its learning-rate schedules (for metrics).

  Attributes:
    tx: the gradient transformation (clipping included).
    schedules: group name -> learning-rate schedule.
  """
  tx: optax.GradientTransformation
  schedules: dict[str, Callable]


def make_optimizer(config: OptimizerConfig, num_steps: int) -> Optimizer:
  """Builds the optimizer.

  Args:
    config: optimizer configuration.
    num_steps: the run's step count (default decay horizon).

  Returns:
    An :class:`Optimizer`. Its ``tx`` expects the parameter tree it is
    initialised with; labels are computed from that tree's paths and shapes.
  """
  if not isinstance(config, OptimizerConfig):
    raise ValueError(f"config must be an OptimizerConfig, got {type(config).__name__}")
  adamw_sched = make_schedule(config.adamw_lr if config.kind == "muon_adamw" else config.lr, config, num_steps)
  adamw = optax.adamw(adamw_sched, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay)
  schedules = {ADAMW: adamw_sched}
  if config.kind == "muon_adamw":
    muon_sched = make_schedule(config.lr, config, num_steps)
    schedules[MUON] = muon_sched
    muon = optax_contrib.muon(muon_sched, ns_steps=config.muon_ns_steps, beta=config.muon_beta,
                              weight_decay=config.weight_decay)
    tx = optax.multi_transform({MUON: muon, ADAMW: adamw}, lambda p: param_labels(p, config))
  else:
    tx = adamw
  if config.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  return Optimizer(tx=tx, schedules=schedules)
