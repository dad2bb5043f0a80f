"""Causal multi-head attention with RoPE over a window, a kept prefix or a ring cache.

One masking rule serves every mode. A query at absolute position ``p`` may attend
to a key at position ``s`` iff the key slot is filled (``s >= 0``), ``s <= p``
and, when a ``window`` ``L`` is given, ``s > p - L``. With hard eviction a
window holds at most ``L`` tokens and no prefix, so the rule reduces to a causal
mask inside the window. With sliding eviction the previous window's keys and
values (from its last sleep pass) are passed as a prefix and the rule keeps
exactly the ``L - 1`` most recent of them. Decoding writes each token into a
ring buffer of ``L`` slots at ``position % L``; the same rule masks stale slots.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.nn.norms import RMSNorm
from sleep_jax.nn.rope import apply_rope

_NEG = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of one attention layer, with the position of each slot.

  Attributes:
    k: ``[B, S, H, K]`` keys after RoPE (``H``: the layer's key/value heads).
    v: ``[B, S, H, K]`` values.
    pos: ``[S]`` int32 absolute position held by each slot, ``-1`` if empty.
  """
  k: jax.Array
  v: jax.Array
  pos: jax.Array

  @property
  def size(self) -> int:
    return self.pos.shape[0]

  @classmethod
  def empty(cls, batch: int, size: int, n_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
    """An all-empty cache of ``size`` slots."""
    z = jnp.zeros((batch, size, n_heads, head_dim), dtype)
    return cls(k=z, v=z, pos=jnp.full((size,), -1, jnp.int32))

  def cleared(self) -> "KVCache":
    """The same buffers with every slot marked empty (hard eviction)."""
    return KVCache(k=self.k, v=self.v, pos=jnp.full_like(self.pos, -1))


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None) -> jax.Array:
  """``[..., T, S]`` boolean mask: filled, causal and (if ``window``) within ``L``."""
  q = q_pos[..., :, None]
  k = k_pos[..., None, :]
  ok = (k >= 0) & (k <= q)
  if window is not None:
    ok = ok & (k > q - window)
  return ok


def dot_product_attention(q, k, v, mask):
  """Softmax attention; logits and softmax in float32.

  Args:
    q: ``[B, T, H, K]``.
    k: ``[B, S, H, K]``.
    v: ``[B, S, H, K]``.
    mask: ``[T, S]`` boolean; every row must allow at least one key.

  Returns:
    ``[B, T, H, K]`` in ``v``'s dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("...thk,...shk->...hts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask[..., None, :, :], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("...hts,...shk->...thk", probs, v)


# On CPU a short sequence attends faster as one masked T x T product than as many small per-window products
# (XLA CPU runs a few large matmuls far faster than many tiny ones): at T = 100, L = 24, batch 32, 2 heads of
# 32 the fused N = 1 train step took 193 ms against 217 ms blocked (one pinned core, 2026-12-02). The masked
# product does T / L times the attention-score work of the windows, so longer sequences, and accelerators,
# run window by window.
DENSE_MAX_T_CPU = 256


def windowed_attention(q, k, v, positions, window: int, eviction: str):
  """Attention over a sequence cut into windows of ``window`` tokens, every window at once.

  The numbers and the matmul shapes of one :class:`Attention` call per
  window (the loop of ``windowed_forward`` with no sleep pass): under
  ``"hard"`` eviction a window attends causally to itself; under
  ``"sliding"`` to the previous window's keys as well (the kept prefix, an
  empty one of ``window`` slots for the first window) within ``window``
  positions. Full windows run as one batched product over a window axis; a
  short last window runs on its own, as in the loop. On CPU, sequences of at
  most ``DENSE_MAX_T_CPU`` tokens run as one masked product instead (the same
  numbers; more, but faster, arithmetic).

  Args:
    q: ``[B, T, H, K]`` (RoPE applied at absolute positions).
    k: ``[B, T, H, K]``.
    v: ``[B, T, H, K]``.
    positions: ``[T]`` int32, ``0..T-1``.
    window: ``L``.
    eviction: ``"hard"`` or ``"sliding"``.

  Returns:
    ``[B, T, H, K]`` in ``v``'s dtype.
  """
  b, t = q.shape[:2]
  if t <= DENSE_MAX_T_CPU and jax.default_backend() == "cpu":
    # Eviction as a mask on one product: the keys of other windows (hard), or more than L - 1 back (sliding).
    mask = attention_mask(positions, positions, window)
    if eviction == "hard":
      mask = mask & (positions[:, None] // window == positions[None, :] // window)
    return dot_product_attention(q, k, v, mask)
  n_full, rest = divmod(t, window)
  cut = n_full * window
  sliding = eviction == "sliding"

  def previous(x, fill):
    # Each window's predecessor (a block of `fill` before the first): [B, n, L, ...] -> [B, n, L, ...].
    return jnp.concatenate([jnp.full_like(x[:, :1], fill), x[:, :-1]], axis=1)

  outs = []
  if n_full:
    blocks = lambda x: x[:, :cut].reshape((b, n_full, window) + x.shape[2:])
    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    qpos = positions[:cut].reshape(n_full, window)
    kpos = qpos
    if sliding:
      kb = jnp.concatenate([previous(kb, 0), kb], axis=2)
      vb = jnp.concatenate([previous(vb, 0), vb], axis=2)
      kpos = jnp.concatenate([previous(qpos[None], -1)[0], qpos], axis=1)
    out = dot_product_attention(qb, kb, vb, attention_mask(qpos, kpos, window))
    outs.append(out.reshape((b, cut) + out.shape[3:]))
  if rest:
    qt, kt, vt, pt = q[:, cut:], k[:, cut:], v[:, cut:], positions[cut:]
    kpos = pt
    if sliding:
      if n_full:
        kp, vp, pp = k[:, cut - window:cut], v[:, cut - window:cut], positions[cut - window:cut]
      else:
        kp, vp = jnp.zeros_like(k[:, :1]).repeat(window, 1), jnp.zeros_like(v[:, :1]).repeat(window, 1)
        pp = jnp.full((window,), -1, positions.dtype)
      kt, vt, kpos = jnp.concatenate([kp, kt], 1), jnp.concatenate([vp, vt], 1), jnp.concatenate([pp, pt])
    outs.append(dot_product_attention(qt, kt, vt, attention_mask(pt, kpos, window)))
  return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


class Attention(nnx.Module):
  """Causal multi-head self-attention with RoPE. A public building block.

  The attention block of ``HybridLM``, usable in a model of your own
  (``sleep_jax.protocol``): a window's call returns its own keys and values
  (a :class:`KVCache`), which is what sliding eviction keeps as the next
  window's ``prefix``, and :meth:`step` decodes one token into a ring of
  ``L`` slots::

      attn = Attention(d_model=64, n_heads=2, head_dim=32, rngs=nnx.Rngs(0))
      y, kv = attn(x, positions, prefix=None, window=L)     # a window: x [B, W, 64], positions [W]
      ring = KVCache.empty(batch, L, 2, 32)
      y1, ring = attn.step(x1, position, ring, window=L)    # one token: x1 [B, 1, 64]

  Params are float32; projections and scores run in ``dtype`` with float32
  softmax. Options (all off by default, the plain layer): grouped-query heads
  (``n_kv_heads``; caches hold the ``n_kv_heads`` key/value heads), a sigmoid
  output gate (``output_gate``: ``o * sigmoid(g_proj(x))`` per head and
  channel before ``o_proj``), per-head RMSNorm of queries and keys before RoPE
  (``qk_norm``) and partial rotary (``rope_dim``).

  Args:
    d_model: input and output width.
    n_heads: query heads.
    head_dim: width per head.
    rope_theta: RoPE base.
    dtype: compute dtype.
    n_kv_heads: key/value heads (None: ``n_heads``); divides ``n_heads``.
    output_gate: the sigmoid output gate.
    qk_norm: RMSNorm of each query and key head.
    rope_dim: rotary width per head (None: ``head_dim``).
    norm_eps: the q/k norms' epsilon.
    norm_zero_centered: the q/k norms scale by ``1 + w`` (weights start at 0).
    rngs: parameter initialisation.
  """

  def __init__(self, d_model: int, n_heads: int, head_dim: int, *, rope_theta: float = 10_000.0,
               dtype=jnp.float32, n_kv_heads: int | None = None, output_gate: bool = False,
               qk_norm: bool = False, rope_dim: int | None = None, norm_eps: float = 1e-6,
               norm_zero_centered: bool = False, rngs: nnx.Rngs):
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if n_heads % n_kv_heads:
      raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
    kw = dict(use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.q_proj = nnx.Linear(d_model, n_heads * head_dim, **kw)
    self.k_proj = nnx.Linear(d_model, n_kv_heads * head_dim, **kw)
    self.v_proj = nnx.Linear(d_model, n_kv_heads * head_dim, **kw)
    self.o_proj = nnx.Linear(n_heads * head_dim, d_model, **kw)
    if output_gate:
      self.g_proj = nnx.Linear(d_model, n_heads * head_dim, **kw)
    if qk_norm:
      self.q_norm = RMSNorm(head_dim, eps=norm_eps, zero_centered=norm_zero_centered)
      self.k_norm = RMSNorm(head_dim, eps=norm_eps, zero_centered=norm_zero_centered)
    self.n_heads = n_heads
    self.n_kv_heads = n_kv_heads
    self.head_dim = head_dim
    self.rope_theta = rope_theta
    self.output_gate = output_gate
    self.qk_norm = qk_norm
    self.rope_dim = None if rope_dim is None or rope_dim >= head_dim else rope_dim

  def _qkv(self, x, positions):
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions, theta=self.rope_theta, rope_dim=self.rope_dim)
    k = apply_rope(k, positions, theta=self.rope_theta, rope_dim=self.rope_dim)
    v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    return q, k, v

  def _expand(self, x):
    """``[B, S, Hkv, K]`` -> ``[B, S, H, K]``: query head ``i`` reads key/value head ``i // group``."""
    group = self.n_heads // self.n_kv_heads
    return x if group == 1 else jnp.repeat(x, group, axis=2)

  def _out(self, x, o):
    """Output gate (if any) and projection of ``o [B, T, H, K]``."""
    b, t = x.shape[:2]
    o = o.reshape(b, t, self.n_heads * self.head_dim)
    if self.output_gate:
      o = o * jax.nn.sigmoid(self.g_proj(x)).astype(o.dtype)
    return self.o_proj(o)

  def __call__(self, x: jax.Array, positions: jax.Array, *, prefix: KVCache | None = None,
               window: int | None = None, windows: str | None = None) -> tuple[jax.Array, KVCache]:
    """Attends over ``prefix`` (if any) and the tokens of ``x`` causally.

    Args:
      x: ``[B, T, D]``.
      positions: ``[T]`` int32 absolute positions of ``x``'s tokens.
      prefix: kept keys/values from earlier tokens (sliding eviction), or None.
      window: ``L``; keys more than ``L - 1`` positions back are masked. None
        means unlimited (full causal attention).
      windows: ``"hard"`` or ``"sliding"``: ``x`` is a whole sequence (from
        position 0) of windows of ``window`` tokens, attended as one call per
        window would (:func:`windowed_attention`); ``prefix`` must be None.

    Returns:
      ``(out [B, T, D], kv)`` where ``kv`` holds this call's own keys/values
      and positions (not the prefix).
    """
    q, k, v = self._qkv(x, positions)
    positions = positions.astype(jnp.int32)
    own = KVCache(k=k, v=v, pos=positions)
    if prefix is not None and prefix.size:
      k_all = jnp.concatenate([prefix.k.astype(k.dtype), k], axis=1)
      v_all = jnp.concatenate([prefix.v.astype(v.dtype), v], axis=1)
      pos_all = jnp.concatenate([prefix.pos, positions])
    else:
      k_all, v_all, pos_all = k, v, positions
    if windows is not None:
      if prefix is not None and prefix.size or window is None:
        raise ValueError("windows= needs a window and no prefix")
      o = windowed_attention(q, self._expand(k), self._expand(v), positions, window, windows)
    else:
      o = dot_product_attention(q, self._expand(k_all), self._expand(v_all),
                                attention_mask(positions, pos_all, window))
    return self._out(x, o), own

  def step(self, x: jax.Array, position: jax.Array, cache: KVCache, *,
           window: int | None = None) -> tuple[jax.Array, KVCache]:
    """Decodes one token into a ring cache.

    Args:
      x: ``[B, 1, D]``.
      position: scalar int32 absolute position of the token.
      cache: ring of ``S`` slots; the token is written at ``position % S``.
      window: ``L`` (None: no limit, the cache must then be large enough to
        hold the whole context).

    Returns:
      ``(out [B, 1, D], updated cache)``.
    """
    position = jnp.asarray(position, jnp.int32)
    q, k, v = self._qkv(x, position[None])
    slot = position % cache.size
    cache = KVCache(
        k=jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), slot, axis=1),
        v=jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), slot, axis=1),
        pos=jax.lax.dynamic_update_index_in_dim(cache.pos, position, slot, axis=0))
    o = dot_product_attention(q, self._expand(cache.k.astype(q.dtype)), self._expand(cache.v.astype(q.dtype)),
                              attention_mask(position[None], cache.pos, window))
    return self._out(x, o), cache
