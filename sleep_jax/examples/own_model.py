"""A sleepable model that is not ``HybridLM``: your own Flax NNX model, with sleep.

``OwnLM`` is what a user would write to give an architecture of their own the
paper's sleep: its own Gated-DeltaNet-style layer (:class:`DeltaMixer`, built
directly on ``sleep_jax.ops.gated_delta_rule``: no short convolution, a plain
sigmoid forget gate), the library's attention block
(``sleep_jax.nn.Attention``), a block order of its own (fast-weight mixer
first, then attention, then an MLP, each pre-norm with a residual) and dropout
on every residual branch. It meets the sleepable-model protocol
(``sleep_jax.protocol``), so ``windowed_forward`` / ``windowed_loss``, the
trainer (``launch.experiment.run(..., model_factory=...)``) and
``SleepSession`` take it as they take ``HybridLM``. The notebook
``notebooks/own_model.ipynb`` walks through it.

Fast weights are a plain tuple of ``[B, H, Dk, Dv]`` float32 states, one per
block (any pytree would do); the attention memory is a tuple of
``sleep_jax.nn.KVCache``, one per block.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax import ops
from sleep_jax.nn import Attention, KVCache


@dataclasses.dataclass(frozen=True)
class OwnConfig:
  """Sizes of :class:`OwnLM`.

  Attributes:
    vocab_size: token ids are ``[0, vocab_size)``.
    d_model: width.
    n_blocks: blocks (each: delta mixer, attention, MLP).
    n_heads: heads of both mixers.
    head_dim: key / value width per head.
    mlp_width: hidden width of the MLP.
    dropout: dropout rate on every residual branch.
  """
  vocab_size: int = 16
  d_model: int = 32
  n_blocks: int = 2
  n_heads: int = 2
  head_dim: int = 16
  mlp_width: int = 64
  dropout: float = 0.1


class DeltaMixer(nnx.Module):
  """A fast-weight mixer on the gated delta rule: ``S <- a S + k (b (v - S^T k))^T``, ``o = S^T q``."""

  def __init__(self, d_model: int, n_heads: int, head_dim: int, *, rngs: nnx.Rngs):
    self.qkv = nnx.Linear(d_model, 3 * n_heads * head_dim, use_bias=False, rngs=rngs)
    self.gates = nnx.Linear(d_model, 2 * n_heads, rngs=rngs)
    self.out = nnx.Linear(n_heads * head_dim, d_model, use_bias=False, rngs=rngs)
    self.n_heads, self.head_dim = n_heads, head_dim

  def _inputs(self, x):
    *lead, _ = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(*lead, 3 * self.n_heads, self.head_dim), 3, axis=-2)
    q, k = (y / (jnp.linalg.norm(y, axis=-1, keepdims=True) + 1e-6) for y in (q, k))
    a, b = jnp.split(self.gates(x), 2, axis=-1)
    # Forget gate in log space, near 1 at init (sigmoid(a + 3) ~ 0.95); write strength in (0, 1).
    return q, k, v, jax.nn.log_sigmoid(a + 3.0), jax.nn.sigmoid(b)

  def __call__(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x [B, T, D]``, ``state [B, H, Dk, Dv]`` -> ``(y [B, T, D], state)``."""
    q, k, v, log_alpha, beta = self._inputs(x)
    o, state = ops.gated_delta_rule(q, k, v, log_alpha, beta, initial_state=state, impl="reference")
    return self.out(o.reshape(*x.shape[:2], -1)), state

  def step(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token: ``x [B, D]`` -> ``(y [B, D], state)`` (the same numbers as ``__call__``)."""
    q, k, v, log_alpha, beta = self._inputs(x)
    o, state = ops.gated_delta_step(q, k, v, log_alpha, beta, state)
    return self.out(o.reshape(x.shape[0], -1)), state


class OwnBlock(nnx.Module):
  """Delta mixer, then attention, then MLP; pre-norm, dropout on each residual branch."""

  def __init__(self, cfg: OwnConfig, *, rngs: nnx.Rngs):
    d = cfg.d_model
    self.norms = nnx.List([nnx.RMSNorm(d, rngs=rngs) for _ in range(3)])
    self.delta = DeltaMixer(d, cfg.n_heads, cfg.head_dim, rngs=rngs)
    self.attn = Attention(d, cfg.n_heads, cfg.head_dim, rngs=rngs)
    self.up = nnx.Linear(d, cfg.mlp_width, rngs=rngs)
    self.down = nnx.Linear(cfg.mlp_width, d, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def _mlp(self, x):
    return self.down(jax.nn.gelu(self.up(x)))

  def __call__(self, x, state, positions, prefix, *, window):
    y, state = self.delta(self.norms[0](x), state)
    x = x + self.drop(y)
    y, kv = self.attn(self.norms[1](x), positions, prefix=prefix, window=window)
    x = x + self.drop(y)
    return x + self.drop(self._mlp(self.norms[2](x))), state, kv

  def step(self, x, position, state, ring, *, window):
    y, state = self.delta.step(self.norms[0](x)[:, 0], state)
    x = x + self.drop(y[:, None])
    y, ring = self.attn.step(self.norms[1](x), position, ring, window=window)
    x = x + self.drop(y)
    return x + self.drop(self._mlp(self.norms[2](x))), state, ring


class OwnLM(nnx.Module):
  """A small LM meeting the sleepable-model protocol; every block is in the looped core."""

  def __init__(self, cfg: OwnConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vocab_size = cfg.vocab_size
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.blocks = nnx.List([OwnBlock(cfg, rngs=rngs) for _ in range(cfg.n_blocks)])
    self.final_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs)

  # -- the protocol ------------------------------------------------------------------------------
  def init_fast_weights(self, batch_size: int) -> tuple[jax.Array, ...]:
    shape = (batch_size, self.cfg.n_heads, self.cfg.head_dim, self.cfg.head_dim)
    return tuple(jnp.zeros(shape, jnp.float32) for _ in range(self.cfg.n_blocks))

  def init_kv(self, batch_size: int, size: int) -> tuple[KVCache, ...]:
    return tuple(KVCache.empty(batch_size, size, self.cfg.n_heads, self.cfg.head_dim)
                 for _ in range(self.cfg.n_blocks))

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def core(self, h, fast_weights, positions, prefix, *, window=None):
    states, kvs = [], []
    for i, block in enumerate(self.blocks):
      h, s, kv = block(h, fast_weights[i], positions, None if prefix is None else prefix[i], window=window)
      states.append(s)
      kvs.append(kv)
    return h, tuple(states), tuple(kvs)

  def unembed(self, h: jax.Array) -> jax.Array:
    return self.head(self.final_norm(h)).astype(jnp.float32)

  def init_decode_state(self, batch_size: int) -> tuple:
    return ()  # no short convolution: nothing but the fast weights and the ring to carry

  def decode(self, tokens, position, fast_weights, kv, decode_state, *, window=None):
    h = self.embed(tokens[:, None])
    states, rings = [], []
    for i, block in enumerate(self.blocks):
      h, s, ring = block.step(h, position, fast_weights[i], kv[i], window=window)
      states.append(s)
      rings.append(ring)
    return self.unembed(h)[:, 0], tuple(states), tuple(rings), decode_state
