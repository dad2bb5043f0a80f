"""The hybrid attention / Gated DeltaNet language model.

``HybridLM`` is ``Embed -> blocks -> RMSNorm -> OutProj``. A block is a pre-norm
sequence mixer (causal attention with RoPE, or Gated DeltaNet) plus residual,
then a pre-norm SwiGLU MLP plus residual; with ``ModelConfig.canon_size`` each
normalised input first passes a Canon layer (a short causal convolution with a
residual, zero at initialisation). The layout (default: alternating
attention and GDN, starting with attention) comes from ``ModelConfig``.

The model exposes the pieces that the windowed forward (``windowed.py``), sleep
(``consolidate.py``) and the streaming session (``session.py``) compose:
:meth:`HybridLM.embed_tokens`, :meth:`HybridLM.run_blocks` over any block range
(prelude ``[0, p)``, looped core ``[p, n - c)``, coda ``[n - c, n)``),
:meth:`HybridLM.unembed`, and :meth:`HybridLM.decode_step` for one token. Fast
weights are explicit inputs and outputs, never module attributes.

``HybridLM`` meets the sleepable-model protocol (``sleep_jax.protocol``):
``core``, ``init_kv``, ``init_decode_state`` and ``decode`` are those pieces
under the protocol's names. The windowed forward runs it on its own path, which
also knows the prelude and coda and fuses the windows of an ``N = 1`` forward;
for a layout without prelude or coda that path equals the protocol's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax.config import BLOCK_TYPES, ModelConfig
from sleep_jax.fast_weights import FastWeights, gdn_slots, init_fast_weights
from sleep_jax.nn.attention import Attention, KVCache
from sleep_jax.nn.gated_deltanet import GatedDeltaNet, causal_conv
from sleep_jax.nn.mlp import SwiGLU
from sleep_jax.nn.norms import RMSNorm


def compute_dtype(config: ModelConfig):
  return jnp.dtype(config.dtype)


def check_token_ids(tokens, vocab_size: int, name: str = "tokens") -> None:
  """Raises if concrete ``tokens`` hold an id outside ``[0, vocab_size)``.

  Traced tokens (under ``jit``, ``vmap``, ``grad``, ``lax.scan``) cannot be
  checked and pass unchecked; there an id ``>= vocab_size`` gives NaN logits
  (the embedding gather fills out-of-range rows with NaN) and a negative id
  silently reads the embedding counted from the end (``-1`` is id
  ``vocab_size - 1``). Check data on the host before jitted steps, as the
  launch paths do (``sleep_jax.windowed.CheckedSchedule``).

  Args:
    tokens: an integer array (numpy or concrete jax), or a tracer.
    vocab_size: the model's ``ModelConfig.vocab_size``.
    name: the argument's name, for the message.

  Raises:
    ValueError: one line naming ``name``, the valid range and the offending
      minimum / maximum.
  """
  if isinstance(tokens, jax.core.Tracer) or not jnp.size(tokens):
    return
  t = np.asarray(tokens)
  lo, hi = int(t.min()), int(t.max())
  if lo < 0 or hi >= vocab_size:
    raise ValueError(f"{name} must lie in [0, {vocab_size}) (vocab_size); got min {lo}, max {hi}")


class Block(nnx.Module):
  """Pre-norm mixer + residual, then pre-norm SwiGLU + residual.

  With ``config.canon_size = c > 0`` the block also has two Canon layers
  (``ModelConfig.canon_size``): depthwise causal convolutions of width ``c``
  with a residual on the normalised inputs of the mixer (``canon_conv_a``)
  and of the MLP (``canon_conv_c``)::

      y = mixer_norm(x); y = y + conv(y, canon_conv_a); x = x + mixer(y)
      z = mlp_norm(x);   z = z + conv(z, canon_conv_c); x = x + mlp(z)

  Their weights ``[c, d_model]`` start at zero, so the block starts as the
  block without them. Like the GDN short convolution they restart from zeros
  at every call (every window and sleep pass), and at every window start of a
  whole-sequence call (``windows``); :meth:`step` carries their last ``c - 1``
  inputs.
  """

  def __init__(self, kind: str, config: ModelConfig, *, rngs: nnx.Rngs):
    if kind not in BLOCK_TYPES:
      raise ValueError(f"unknown block type {kind!r}; known: {BLOCK_TYPES}")
    dtype = compute_dtype(config)
    self.kind = kind
    zc = config.norm_zero_centered
    self.mixer_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=zc)
    if kind == "attn":
      self.mixer = Attention(config.d_model, config.n_heads, config.head_dim, rope_theta=config.rope_theta,
                             dtype=dtype, n_kv_heads=config.num_kv_heads, output_gate=config.attn_output_gate,
                             qk_norm=config.attn_qk_norm, rope_dim=config.rope_dim, norm_eps=config.norm_eps,
                             norm_zero_centered=zc, rngs=rngs)
    else:
      self.mixer = GatedDeltaNet(config.d_model, config.num_gdn_heads, config.gdn_head_dim, config.gdn_v_dim,
                                 conv_size=config.conv_size, norm_eps=config.norm_eps, dtype=dtype,
                                 impl=config.gdn_impl, chunk_size=config.gdn_chunk_size,
                                 decay_init=config.gdn_decay_init, n_key_heads=config.num_gdn_key_heads,
                                 rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=zc)
    self.mlp = SwiGLU(config.d_model, config.mlp_width, dtype=dtype, rngs=rngs)
    self.canon_size = config.canon_size
    self.dtype = dtype
    if config.canon_size:
      # Zero, so the Canon layers start as the identity (no random draw: the other parameters are unchanged).
      self.canon_conv_a = nnx.Param(jnp.zeros((config.canon_size, config.d_model), jnp.float32))
      self.canon_conv_c = nnx.Param(jnp.zeros((config.canon_size, config.d_model), jnp.float32))

  def _canon(self, weight, x, segment=None):
    """``x + conv(x)`` over a window (zeros before it; restarting every ``segment`` positions)."""
    return x + causal_conv(x, weight[...], segment=segment)

  def _canon_step(self, weight, x, history):
    """``(x + conv(x), history)`` for one token ``x [B, 1, D]`` after ``history [B, c - 1, D]``."""
    full = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    out = x + causal_conv(x, weight[...], history)
    return out, full[:, full.shape[1] - (self.canon_size - 1):].astype(history.dtype)

  def init_canon_histories(self, batch_size: int) -> tuple[jax.Array, ...]:
    """Zero Canon-A and Canon-C histories ``[B, c - 1, D]`` (``()`` without Canon layers)."""
    if not self.canon_size:
      return ()
    d = self.canon_conv_a[...].shape[1]
    return tuple(jnp.zeros((batch_size, self.canon_size - 1, d), self.dtype) for _ in range(2))

  def __call__(self, x, positions, *, state=None, prefix=None, window=None, windows=None):
    """Runs the block over a window.

    Args:
      x: ``[B, T, D]``.
      positions: ``[T]`` int32 absolute positions.
      state: GDN fast-weight state ``[B, H, Dk, Dv]`` (GDN blocks only).
      prefix: kept ``KVCache`` (attention blocks only; sliding eviction).
      window: attention span ``L`` (None: unlimited).
      windows: ``"hard"`` / ``"sliding"``: ``x`` is a whole sequence of
        windows of ``window`` tokens, run as one call per window would under
        that eviction: attention by ``attention.windowed_attention``, the
        GDN conv and the Canon layers restarting at every window start.
        None: ``x`` is one window.

    Returns:
      ``(x, state, kv)``: ``state`` is None for attention, ``kv`` None for GDN.
    """
    segment = window if windows else None
    y = self.mixer_norm(x)
    if self.canon_size:
      y = self._canon(self.canon_conv_a, y, segment)
    kv = None
    if self.kind == "attn":
      y, kv = self.mixer(y, positions, prefix=prefix, window=window, windows=windows)
    else:
      y, state = self.mixer(y, state, segment=segment)
    x = x + y.astype(x.dtype)
    z = self.mlp_norm(x)
    if self.canon_size:
      z = self._canon(self.canon_conv_c, z, segment)
    x = x + self.mlp(z).astype(x.dtype)
    return x, state, kv

  def step(self, x, position, cache, canon=(), *, window=None):
    """One decoding token.

    Args:
      x: ``[B, 1, D]``.
      position: scalar int32 absolute position.
      cache: a ``KVCache`` ring (attention) or ``(state, conv_history)`` (GDN).
      canon: ``(canon_a_history, canon_c_history)`` (:meth:`init_canon_histories`),
        or ``()`` without Canon layers.
      window: attention span ``L`` (None: unlimited).

    Returns:
      ``(x, cache, canon)``.
    """
    y = self.mixer_norm(x)
    if self.canon_size:
      hist_a, hist_c = canon
      y, hist_a = self._canon_step(self.canon_conv_a, y, hist_a)
    if self.kind == "attn":
      y, cache = self.mixer.step(y, position, cache, window=window)
    else:
      state, history = cache
      y, state, history = self.mixer.step(y, state, history)
      cache = (state, history)
    x = x + y.astype(x.dtype)
    z = self.mlp_norm(x)
    if self.canon_size:
      z, hist_c = self._canon_step(self.canon_conv_c, z, hist_c)
      canon = (hist_a, hist_c)
    x = x + self.mlp(z).astype(x.dtype)
    return x, cache, canon


class HybridLM(nnx.Module):
  """Hybrid attention / Gated DeltaNet LM.

  Params are float32; activations run in ``config.dtype``; logits and fast
  weights are float32.

  Attributes:
    config: the ``ModelConfig``.
    embed: token embedding, init ``N(0, embed_init_std^2)``.
    blocks: the layout's blocks.
    final_norm: RMSNorm before the output projection.
    lm_head: output projection (absent when ``tie_embeddings``).
    sleep_adapter: ``d x d`` linear map, zero at initialisation, of the input
      re-injected into every sleep pass (present only when
      ``config.sleep_reinject != "none"``).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, ModelConfig):
      raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    for i, kind in enumerate(config.block_types):
      if kind not in BLOCK_TYPES:
        raise ValueError(f"config.layout[{i}] = {kind!r} is not a known block type {BLOCK_TYPES}")
    self.config = config
    dtype = compute_dtype(config)
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, param_dtype=jnp.float32,
                           embedding_init=nnx.initializers.normal(stddev=config.embed_init_std), rngs=rngs)
    self.blocks = nnx.List([Block(kind, config, rngs=rngs) for kind in config.block_types])
    self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=config.norm_zero_centered)
    if not config.tie_embeddings:
      self.lm_head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False, dtype=dtype,
                                param_dtype=jnp.float32, rngs=rngs)
    if config.sleep_reinject != "none":
      # Last, so the other parameters draw what they draw without it; zero, so it starts as the identity.
      self.sleep_adapter = nnx.Linear(config.d_model, config.d_model, use_bias=False, dtype=dtype,
                                      param_dtype=jnp.float32, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  # -- static structure -------------------------------------------------------------------------
  @property
  def n_blocks(self) -> int:
    return len(self.config.block_types)

  @property
  def gdn_slots(self) -> tuple[int, ...]:
    """Per block: index into ``FastWeights.states`` or -1."""
    return gdn_slots(self.config)

  @property
  def attn_slots(self) -> tuple[int, ...]:
    """Per block: index into the tuple of attention caches or -1."""
    slots, n = [], 0
    for kind in self.config.block_types:
      slots.append(n if kind == "attn" else -1)
      n += kind == "attn"
    return tuple(slots)

  @property
  def n_attn(self) -> int:
    return sum(1 for kind in self.config.block_types if kind == "attn")

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  def init_fast_weights(self, batch_size: int) -> FastWeights:
    return init_fast_weights(self.config, batch_size)

  # -- pieces ------------------------------------------------------------------------------------
  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """``[B, T]`` int tokens -> ``[B, T, D]`` hidden states in the compute dtype."""
    return self.embed(tokens)

  def unembed(self, h: jax.Array) -> jax.Array:
    """``[B, T, D]`` -> float32 logits ``[B, T, V]``."""
    h = self.final_norm(h)
    if self.config.tie_embeddings:
      logits = self.embed.attend(h)
    else:
      logits = self.lm_head(h)
    return logits.astype(jnp.float32)

  def run_blocks(self, h: jax.Array, fast_weights: FastWeights, positions: jax.Array, *, start: int = 0,
                 stop: int | None = None, prefixes=None, window: int | None = None,
                 windows: str | None = None):
    """Runs blocks ``[start, stop)`` over one window.

    Args:
      h: ``[B, T, D]``.
      fast_weights: states at the window (or pass) start; only the slots of
        GDN blocks in the range are read and replaced.
      positions: ``[T]`` int32 absolute positions.
      start: first block.
      stop: one past the last block (None: all).
      prefixes: None, or a tuple with one ``KVCache`` (or None) per attention
        block in layout order: the kept keys/values of sliding eviction.
      window: attention span ``L`` (None: unlimited).
      windows: ``"hard"`` or ``"sliding"``: ``h`` spans several windows of
        ``window`` tokens (positions from 0), run at once with the numbers of
        one call per window without sleep (the ``N = 1`` forward of
        ``windowed_forward``): each window's GDN conv restarts from zeros, and
        under ``"hard"`` attention sees only its own window. None: ``h`` is
        one window.

    Returns:
      ``(h, fast_weights, kvs)`` with ``kvs`` a dict from attention slot to the
      ``KVCache`` of this window's own keys/values, for the blocks in range.
    """
    stop = self.n_blocks if stop is None else stop
    if windows not in (None, "hard", "sliding") or (windows is not None and window is None):
      raise ValueError(f"windows must be None, 'hard' or 'sliding' (with a window), got {windows!r}")
    gslots, aslots = self.gdn_slots, self.attn_slots
    updates, kvs = {}, {}
    for i in range(start, stop):
      block = self.blocks[i]
      if block.kind == "attn":
        prefix = None if prefixes is None else prefixes[aslots[i]]
        h, _, kv = block(h, positions, prefix=prefix, window=window, windows=windows)
        kvs[aslots[i]] = kv
      else:
        h, s, _ = block(h, positions, state=fast_weights.states[gslots[i]], window=window, windows=windows)
        updates[gslots[i]] = s
    return h, fast_weights.replace(updates), kvs

  def __call__(self, tokens: jax.Array, fast_weights: FastWeights | None = None, *,
               positions: jax.Array | None = None) -> tuple[jax.Array, FastWeights]:
    """One ordinary pass over ``tokens`` with full causal attention (no eviction).

    Args:
      tokens: ``[B, T]`` int32 ids in ``[0, vocab_size)``; checked when
        concrete, not under tracing (see :func:`check_token_ids`).
      fast_weights: initial states (None: zeros).
      positions: ``[T]`` positions (None: ``0..T-1``).

    Returns:
      ``(logits [B, T, V] float32, fast_weights)``.

    Raises:
      ValueError: concrete ``tokens`` outside ``[0, vocab_size)``.
    """
    check_token_ids(tokens, self.config.vocab_size)
    if fast_weights is None:
      fast_weights = self.init_fast_weights(tokens.shape[0])
    if positions is None:
      positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    h, fast_weights, _ = self.run_blocks(self.embed_tokens(tokens), fast_weights, positions)
    return self.unembed(h), fast_weights

  def inject_sleep_input(self, h: jax.Array, embedded: jax.Array, wake: jax.Array) -> jax.Array:
    """A sleep pass's core input under ``ModelConfig.sleep_reinject``.

    Args:
      h: ``[B, W, D]`` the input the pass would read without re-injection
        (the previous pass's core output, or the wake-pass input under
        ``SleepConfig.replay``).
      embedded: ``[B, W, D]`` the core's wake-pass input (the embedded
        window, after the prelude).
      wake: ``[B, W, D]`` the core's wake-pass output.

    Returns:
      ``h`` itself (``"none"``), or ``h + A x`` with ``x`` the ``embedded``
      (``"embedding"``) or ``wake`` (``"wake"``) states and ``A`` the
      zero-initialised ``sleep_adapter``.
    """
    mode = self.config.sleep_reinject
    if mode == "none":
      return h
    return h + self.sleep_adapter(embedded if mode == "embedding" else wake).astype(h.dtype)

  # -- the sleepable-model protocol (sleep_jax.protocol) -------------------------------------------
  def core(self, h: jax.Array, fast_weights: FastWeights, positions: jax.Array, prefix=None, *,
           window: int | None = None):
    """One pass of the looped core (blocks ``core_range``) over a window.

    Returns:
      ``(h, fast_weights, kv)`` with ``kv`` the core's attention blocks' own
      ``KVCache`` (the whole model's, as ``prefix`` is, when there is no
      prelude or coda).
    """
    c0, c1 = self.config.core_range
    h, fast_weights, kvs = self.run_blocks(h, fast_weights, positions, start=c0, stop=c1, prefixes=prefix,
                                           window=window)
    return h, fast_weights, tuple(kvs[i] for i in sorted(kvs))

  def init_kv(self, batch_size: int, size: int) -> tuple[KVCache, ...]:
    """Empty ring caches of ``size`` slots, one per attention block (``init_kv_caches``)."""
    return self.init_kv_caches(batch_size, size)

  def clear_kv(self, kv: tuple[KVCache, ...]) -> tuple[KVCache, ...]:
    """Hard eviction: every slot marked empty (the buffers are kept)."""
    return tuple(c.cleared() for c in kv)

  def init_decode_state(self, batch_size: int) -> tuple[jax.Array, ...]:
    """The short-conv histories (``init_conv_histories``: the GDN convs', then the Canon layers'), reset at
    each window start."""
    return self.init_conv_histories(batch_size)

  def decode(self, tokens: jax.Array, position: jax.Array, fast_weights: FastWeights, kv, decode_state, *,
             window: int | None = None):
    """:meth:`decode_step` under the protocol's name."""
    return self.decode_step(tokens, position, fast_weights, kv, decode_state, window=window)

  def window_flops(self, sleep, width: int):
    """``cost.window_flops`` of this model."""
    from sleep_jax.cost import window_flops
    return window_flops(self.config, sleep, width)

  def decode_flops(self, sleep) -> float:
    """``cost.decode_flops`` of this model."""
    from sleep_jax.cost import decode_flops
    return decode_flops(self.config, sleep)

  # -- decoding ----------------------------------------------------------------------------------
  def init_conv_histories(self, batch_size: int) -> tuple[jax.Array, ...]:
    """Zero short-conv histories (reset at each window start): one ``[B, conv_size - 1, C]`` per GDN block in
    layout order, then, with ``canon_size = c > 0``, two ``[B, c - 1, d_model]`` per block in layout order
    (its Canon-A, then its Canon-C)."""
    gdn = tuple(b.mixer.init_conv_history(batch_size) for b in self.blocks if b.kind == "gdn")
    return gdn + tuple(h for b in self.blocks for h in b.init_canon_histories(batch_size))

  def init_kv_caches(self, batch_size: int, size: int) -> tuple[KVCache, ...]:
    """Empty ring caches of ``size`` slots, one per attention block."""
    dtype = compute_dtype(self.config)
    return tuple(KVCache.empty(batch_size, size, self.config.num_kv_heads, self.config.head_dim, dtype)
                 for _ in range(self.n_attn))

  def decode_step(self, tokens: jax.Array, position: jax.Array, fast_weights: FastWeights,
                  kv_caches: tuple[KVCache, ...], conv_histories: tuple[jax.Array, ...], *,
                  window: int | None = None):
    """One ordinary forward for one token per batch row.

    Args:
      tokens: ``[B]`` int32 ids in ``[0, vocab_size)``; checked when
        concrete, not under tracing (see :func:`check_token_ids`).
      position: scalar int32 absolute position.
      fast_weights: GDN states.
      kv_caches: ring caches per attention block.
      conv_histories: the short-conv histories of :meth:`init_conv_histories`:
        one per GDN block, then two per block (Canon-A, Canon-C) when
        ``canon_size > 0``.
      window: attention span ``L`` (None: unlimited; then the rings must hold
        the whole context).

    Returns:
      ``(logits [B, V] float32, fast_weights, kv_caches, conv_histories)``.

    Raises:
      ValueError: concrete ``tokens`` outside ``[0, vocab_size)``, or
        ``conv_histories`` of the wrong length.
    """
    check_token_ids(tokens, self.config.vocab_size)
    h = self.embed_tokens(tokens[:, None])
    n_gdn = sum(1 for b in self.blocks if b.kind == "gdn")
    n_conv = n_gdn + (2 * self.n_blocks if self.config.canon_size else 0)
    if len(conv_histories) != n_conv:
      raise ValueError(f"conv_histories must hold {n_conv} arrays (init_conv_histories), got {len(conv_histories)}")
    states, kvs = list(fast_weights.states), list(kv_caches)
    convs, canons = list(conv_histories[:n_gdn]), list(conv_histories[n_gdn:])
    gslots, aslots = self.gdn_slots, self.attn_slots
    for i, block in enumerate(self.blocks):
      canon = tuple(canons[2 * i:2 * i + 2]) if self.config.canon_size else ()
      if block.kind == "attn":
        h, kvs[aslots[i]], canon = block.step(h, position, kvs[aslots[i]], canon, window=window)
      else:
        g = gslots[i]
        h, (states[g], convs[g]), canon = block.step(h, position, (states[g], convs[g]), canon)
      if canon:
        canons[2 * i], canons[2 * i + 1] = canon
    return self.unembed(h)[:, 0], FastWeights(tuple(states)), tuple(kvs), tuple(convs) + tuple(canons)
