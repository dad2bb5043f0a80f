"""Preparing a model trained without sleep for sleep.

(a) A ``HybridLM`` trained with ``N = 1`` runs with ``N > 1`` unchanged: sleep
    is a property of the forward (``SleepConfig.n_passes``), not of the
    parameters. :func:`with_passes` is that one-line change.
(b) :func:`insert_gdn_blocks` inserts new Gated DeltaNet blocks into a
    pretrained model (the paper's Ouro + inserted GDN layers). A new block's
    mixer output projection and MLP down projection are zero-initialised, so
    each new block adds exactly zero to the residual stream and the model's
    function is unchanged at insertion; gradients still reach the new blocks
    (through those zero projections), so they can learn to write and read
    fast weights. Every other parameter is copied.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from sleep_jax.config import SleepConfig
from sleep_jax.model import HybridLM


def with_passes(sleep: SleepConfig, n_passes: int) -> SleepConfig:
  """The same ``SleepConfig`` with ``N = n_passes`` (params need no change)."""
  return dataclasses.replace(sleep, n_passes=n_passes)


def insert_gdn_blocks(model: HybridLM, positions: Sequence[int], *, rngs: nnx.Rngs) -> HybridLM:
  """Returns a new model with GDN blocks inserted, computing the same function.

  Args:
    model: a pretrained ``HybridLM`` (left unchanged).
    positions: indices, in the NEW layout, where GDN blocks are inserted (each
      in ``[0, n_old + len(positions))``, distinct).
    rngs: initialises the new blocks' other parameters.

  Returns:
    A ``HybridLM`` whose layout is the old one with ``"gdn"`` at ``positions``.
    ``prelude`` and ``coda`` keep exactly the old prelude / coda blocks; every
    new block between them (including at the boundaries) joins the looped
    core, since inserted fast-weight layers are what sleep should loop.

  Raises:
    ValueError: for repeated or out-of-range positions.
  """
  cfg = model.config
  old = cfg.block_types
  n_new = len(old) + len(positions)
  pos = sorted(int(p) for p in positions)
  if len(set(pos)) != len(pos):
    raise ValueError(f"positions must be distinct, got {list(positions)}")
  if pos and (pos[0] < 0 or pos[-1] >= n_new):
    raise ValueError(f"positions must lie in [0, {n_new}), got {list(positions)}")
  old_to_new, j = [], 0
  for i in range(len(old)):
    while j in pos:
      j += 1
    old_to_new.append(j)
    j += 1
  layout = ["gdn"] * n_new
  for i, j in enumerate(old_to_new):
    layout[j] = old[i]
  c0, c1 = cfg.core_range
  prelude = old_to_new[c0 - 1] + 1 if c0 > 0 else 0
  coda = n_new - old_to_new[c1] if c1 < len(old) else 0
  new_cfg = dataclasses.replace(cfg, layout=tuple(layout), n_layers=n_new, prelude=prelude, coda=coda)
  new = HybridLM(new_cfg, rngs=rngs)
  nnx.update(new.embed, nnx.state(model.embed))
  nnx.update(new.final_norm, nnx.state(model.final_norm))
  if not cfg.tie_embeddings:
    nnx.update(new.lm_head, nnx.state(model.lm_head))
  for i, j in enumerate(old_to_new):
    nnx.update(new.blocks[j], nnx.state(model.blocks[i]))
  if cfg.sleep_reinject != "none":  # a trained re-injection adapter is the model's, not a new block's
    nnx.update(new.sleep_adapter, nnx.state(model.sleep_adapter))
  for j in pos:
    block = new.blocks[j]
    block.mixer.o_proj.kernel[...] = jnp.zeros_like(block.mixer.o_proj.kernel[...])
    block.mlp.down.kernel[...] = jnp.zeros_like(block.mlp.down.kernel[...])
  return new
