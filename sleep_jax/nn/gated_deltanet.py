"""Gated DeltaNet sequence mixer (fla's parameterisation).

Per token, with ``x`` the normed block input::

    q, k, v = SiLU(conv(W_q x)), SiLU(conv(W_k x)), SiLU(conv(W_v x))   # causal depthwise conv
    q, k    = q / |q|, k / |k|                                          # per head L2 norm
    log_alpha = -exp(A_log) * softplus(W_a x + dt_bias)                 # forget gate, log space
    beta      = sigmoid(W_b x)                                          # write strength
    o, S  = gated_delta_rule(q, k, v, log_alpha, beta, initial_state=S)
    out   = W_o (GatedRMSNorm(o, W_g x))

The fast-weight state ``S`` (``[B, H, Dk, Dv]``, float32) is passed in and
returned; it is the only thing that crosses window boundaries. The short
convolution restarts from zeros at the start of every call (every sleep pass
and every window): design decision, ours, so that only ``S`` carries memory
across passes and windows. During token-by-token decoding the convolution's
last ``conv_size - 1`` inputs are carried in a :class:`ConvState`-like buffer
that the caller zeroes at each window start.

SiLU is applied to ``v`` as well as ``q``/``k`` (fla's default short-conv
activation).

Grouped value heads (``n_key_heads < n_heads``, Qwen3-Next's layout): ``q``
and ``k`` have ``n_key_heads`` heads, each serving ``n_heads // n_key_heads``
consecutive value heads; the state keeps one ``[Dk, Dv]`` matrix per value
head. The gates ``a``, ``b`` and the output gate are per value head.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax import ops
from sleep_jax.nn.norms import GatedRMSNorm


def causal_conv(x: jax.Array, weight: jax.Array, history: jax.Array | None = None, *,
                segment: int | None = None) -> jax.Array:
  """Depthwise causal convolution.

  Args:
    x: ``[B, T, C]``.
    weight: ``[K, C]``; ``out[t] = sum_j weight[j] * x[t - K + 1 + j]``.
    history: ``[B, K - 1, C]`` inputs preceding ``x`` (None: zeros).
    segment: restart from zeros every ``segment`` positions (at ``t = 0,
      segment, 2 segment, ...``): the same numbers as one call per segment.
      None: one segment.

  Returns:
    ``[B, T, C]`` in ``x``'s dtype.
  """
  ksize = weight.shape[0]
  b, t, c = x.shape
  if history is None:
    history = jnp.zeros((b, ksize - 1, c), x.dtype)
  xp = jnp.concatenate([history.astype(x.dtype), x], axis=1)
  w = weight.astype(x.dtype)
  if segment is None or segment >= t:
    return sum(xp[:, j:j + t] * w[j] for j in range(ksize))
  # Tap j reads lag K - 1 - j; it reaches into the previous segment when lag > t mod segment.
  offset = np.arange(t) % segment
  return sum(xp[:, j:j + t] * jnp.asarray((ksize - 1 - j <= offset)[None, :, None], x.dtype) * w[j]
             for j in range(ksize))


def fused_linear(x: jax.Array, layers, dtype) -> list[jax.Array]:
  """``[layer(x) for layer in layers]`` as one matmul over the layers' concatenated kernels.

  The layers (bias-free ``nnx.Linear`` of one input width) keep their own
  parameters, so checkpoints and imports see separate projections; the step
  runs one ``[D, sum of widths]`` product instead of one small product per
  layer (on CPU, many small matmuls cost far more than their FLOPs).
  """
  widths = [layer.kernel.shape[1] for layer in layers]
  kernel = jnp.concatenate([layer.kernel[...] for layer in layers], axis=1)
  y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
  return jnp.split(y, np.cumsum(widths)[:-1].tolist(), axis=-1)


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps)).astype(x.dtype)


class GatedDeltaNet(nnx.Module):
  """Gated DeltaNet mixer; see the module docstring for the math. A public building block.

  The fast-weight sequence mixer of ``HybridLM``, usable in a model of your
  own (``sleep_jax.protocol``): its state is an explicit input and output, so
  the model's ``core`` threads it and sleep consolidates it::

      gdn = GatedDeltaNet(d_model=64, n_heads=2, head_dim=32, value_dim=32, rngs=nnx.Rngs(0))
      state = jnp.zeros((batch, 2, 32, 32), jnp.float32)
      y, state = gdn(x, state)                         # a window: x [B, T, 64]
      history = gdn.init_conv_history(batch)            # streaming, reset at each window start
      y1, state, history = gdn.step(x1, state, history)  # one token: x1 [B, 1, 64]

  Args:
    d_model: input and output width ``D``.
    n_heads: heads ``H``.
    head_dim: key width per head ``Dk``.
    value_dim: value width per head ``Dv``.
    conv_size: short causal convolution width (restarts from zeros every call).
    norm_eps: epsilon of the gated output norm.
    dtype: compute dtype (parameters and the state are float32).
    impl: the update rule's implementation (``ops.gated_delta_rule``).
    chunk_size: chunk of the chunked / Pallas forms.
    decay_init: range of the forget rates ``A`` at initialisation.
    rngs: parameter initialisation.
  """

  def __init__(self, d_model: int, n_heads: int, head_dim: int, value_dim: int, *, conv_size: int = 4,
               norm_eps: float = 1e-6, dtype=jnp.float32, impl: str = "auto", chunk_size: int = 64,
               decay_init: tuple[float, float] = (1.0, 16.0), n_key_heads: int | None = None,
               rngs: nnx.Rngs):
    n_key_heads = n_heads if n_key_heads is None else n_key_heads
    if n_heads % n_key_heads:
      raise ValueError(f"n_key_heads={n_key_heads} must divide n_heads={n_heads}")
    kw = dict(use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.q_proj = nnx.Linear(d_model, n_key_heads * head_dim, **kw)
    self.k_proj = nnx.Linear(d_model, n_key_heads * head_dim, **kw)
    self.v_proj = nnx.Linear(d_model, n_heads * value_dim, **kw)
    self.a_proj = nnx.Linear(d_model, n_heads, **kw)
    self.b_proj = nnx.Linear(d_model, n_heads, **kw)
    self.g_proj = nnx.Linear(d_model, n_heads * value_dim, **kw)
    self.o_proj = nnx.Linear(n_heads * value_dim, d_model, **kw)
    channels = 2 * n_key_heads * head_dim + n_heads * value_dim
    bound = 1.0 / math.sqrt(conv_size)
    self.conv_weight = nnx.Param(
        jax.random.uniform(rngs.params(), (conv_size, channels), jnp.float32, -bound, bound))
    # Mamba-style inits: decay rates A in decay_init (default [1, 16]), time steps dt in [1e-3, 1e-1].
    low, high = decay_init
    self.A_log = nnx.Param(jnp.log(jax.random.uniform(rngs.params(), (n_heads,), jnp.float32, low, high)))
    dt = jnp.exp(jax.random.uniform(rngs.params(), (n_heads,), jnp.float32, np.log(1e-3), np.log(1e-1)))
    self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))  # inverse softplus
    self.o_norm = GatedRMSNorm(value_dim, eps=norm_eps)
    self.n_heads = n_heads
    self.n_key_heads = n_key_heads
    self.head_dim = head_dim
    self.value_dim = value_dim
    self.conv_size = conv_size
    self.dtype = dtype
    self.impl = impl
    self.chunk_size = chunk_size

  @property
  def conv_channels(self) -> int:
    return 2 * self.n_key_heads * self.head_dim + self.n_heads * self.value_dim

  def _features(self, x, history, segment=None):
    """Projections, conv and gates for a ``[B, T, D]`` input; also the output gate's projection."""
    b, t, _ = x.shape
    h, hk, dk, dv = self.n_heads, self.n_key_heads, self.head_dim, self.value_dim
    q, k, v, a, b_raw, g = fused_linear(
        x, [self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj, self.g_proj], self.dtype)
    raw = jnp.concatenate([q, k, v], axis=-1)
    full = jnp.concatenate([jnp.zeros((b, self.conv_size - 1, raw.shape[-1]), raw.dtype)
                            if history is None else history.astype(raw.dtype), raw], axis=1)
    new_history = full[:, full.shape[1] - (self.conv_size - 1):]
    mixed = jax.nn.silu(causal_conv(raw, self.conv_weight[...], history, segment=segment))
    q, k, v = jnp.split(mixed, [hk * dk, 2 * hk * dk], axis=-1)
    q = _l2_normalize(q.reshape(b, t, hk, dk))
    k = _l2_normalize(k.reshape(b, t, hk, dk))
    if hk != h:  # value head i reads query / key head i // (h // hk)
      q, k = jnp.repeat(q, h // hk, axis=2), jnp.repeat(k, h // hk, axis=2)
    v = v.reshape(b, t, h, dv)
    log_alpha = -jnp.exp(self.A_log[...]) * jax.nn.softplus(a.astype(jnp.float32) + self.dt_bias[...])
    beta = jax.nn.sigmoid(b_raw.astype(jnp.float32))
    return q, k, v, log_alpha, beta, g, new_history

  def _output(self, g, o):
    b, t = o.shape[:2]
    y = self.o_norm(o.astype(self.dtype), g.reshape(b, t, self.n_heads, self.value_dim))
    return self.o_proj(y.reshape(b, t, self.n_heads * self.value_dim))

  def __call__(self, x: jax.Array, state: jax.Array, *, segment: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Runs over a window, conv state starting from zeros.

    Args:
      x: ``[B, T, D]``.
      state: ``[B, H, Dk, Dv]`` float32 fast weights at the window start.
      segment: the conv restarts from zeros every ``segment`` positions while
        the fast weights run on: the numbers of one call per window of
        ``segment`` tokens, chained through ``state`` (None: one window).

    Returns:
      ``(out [B, T, D], state after the last token)``.
    """
    q, k, v, log_alpha, beta, g, _ = self._features(x, None, segment)
    o, state = ops.gated_delta_rule(q, k, v, log_alpha, beta, initial_state=state, impl=self.impl,
                                    chunk_size=self.chunk_size)
    return self._output(g, o), state

  def init_conv_history(self, batch: int) -> jax.Array:
    """Zero conv history ``[B, conv_size - 1, C]`` for decoding."""
    return jnp.zeros((batch, self.conv_size - 1, self.conv_channels), self.dtype)

  def step(self, x: jax.Array, state: jax.Array, history: jax.Array):
    """Decodes one token.

    Args:
      x: ``[B, 1, D]``.
      state: ``[B, H, Dk, Dv]`` float32.
      history: ``[B, conv_size - 1, C]`` previous conv inputs of this window.

    Returns:
      ``(out [B, 1, D], state, history)``.
    """
    q, k, v, log_alpha, beta, g, history = self._features(x, history)
    o, state = ops.gated_delta_step(q[:, 0], k[:, 0], v[:, 0], log_alpha[:, 0], beta[:, 0], state)
    return self._output(g, o[:, None]), state, history
