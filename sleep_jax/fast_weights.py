"""Fast weights: the Gated DeltaNet states, the only memory that crosses windows.

``FastWeights.states[i]`` is the ``[B, H, Dk, Dv]`` float32 state of the
``i``-th GDN block in layout order (``ModelConfig.block_types``). Short-conv
states are not carried: each window and each sleep pass restarts them from
zeros (design decision, ours), so only ``S`` crosses pass and window
boundaries.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleep_jax.array_typing import GdnState
from sleep_jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FastWeights:
  """Per-GDN-layer fast-weight states (a pytree).

  Attributes:
    states: one ``[B, H, Dk, Dv]`` (``b h k v``) float32 array per GDN block,
      in layout order. Runtime-checked (``array_typing.typed``) wherever a
      ``FastWeights`` enters or leaves a public function, every state against
      the same ``b h k v``.
  """
  states: tuple[GdnState, ...]

  def __post_init__(self):
    object.__setattr__(self, "states", tuple(self.states))

  @property
  def n_layers(self) -> int:
    return len(self.states)

  def replace(self, updates: dict[int, jax.Array]) -> "FastWeights":
    """Returns a copy with ``states[i] = updates[i]`` for each key ``i``."""
    states = list(self.states)
    for i, s in updates.items():
      states[i] = s
    return FastWeights(states=tuple(states))


def gdn_slots(config: ModelConfig) -> tuple[int, ...]:
  """For each block, its index into ``FastWeights.states`` (``-1`` for attention)."""
  slots, n = [], 0
  for kind in config.block_types:
    if kind == "gdn":
      slots.append(n)
      n += 1
    else:
      slots.append(-1)
  return tuple(slots)


def init_fast_weights(config: ModelConfig, batch_size: int) -> FastWeights:
  """Zero fast weights for a batch (the start of every sequence).

  Args:
    config: the model config.
    batch_size: ``B``.

  Returns:
    ``FastWeights`` with one zero ``[B, H, Dk, Dv]`` float32 state per GDN block.

  Raises:
    ValueError: if ``batch_size < 1``.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  n = sum(1 for kind in config.block_types if kind == "gdn")
  shape = (batch_size, config.num_gdn_heads, config.gdn_head_dim, config.gdn_v_dim)
  return FastWeights(states=tuple(jnp.zeros(shape, jnp.float32) for _ in range(n)))
