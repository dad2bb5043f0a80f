"""The train state: one explicit pytree, split once from an NNX model.

The model is split into a static ``graphdef`` (kept outside the state), its
``nnx.Param`` leaves (trained) and any other variables (carried unchanged).
Hot loops jit pure functions of :class:`TrainState`; the module is only
re-assembled (``nnx.merge``) inside the traced step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a step reads and writes.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: ``nnx.State`` of the model's ``nnx.Param`` variables.
    opt_state: the optax state of ``params``.
    rng: raw uint32 PRNG key; the step's key is ``fold_in(rng, step)``.
    model_state: the model's non-Param variables, carried unchanged.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any


def split_model(model: nnx.Module):
  """Returns ``(graphdef, params, model_state)`` of an NNX module."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def merge_model(graphdef, state: TrainState) -> nnx.Module:
  """Re-assembles the module from a graphdef and a train state."""
  return nnx.merge(graphdef, state.params, state.model_state)


def create_train_state(model_factory: ModelFactory, tx: optax.GradientTransformation, seed: int):
  """Initialises a model and its optimizer.

  Args:
    model_factory: ``rngs -> nnx.Module``.
    tx: the optimizer.
    seed: parameter init and step RNG seed.

  Returns:
    ``(graphdef, state)``.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_factory(nnx.Rngs(seed))))

  def init():
    # Jitted: eager init would compile one tiny program per op.
    _, params, rest = split_model(model_factory(nnx.Rngs(seed)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(seed), model_state=rest)

  return graphdef, jax.jit(init)()


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
