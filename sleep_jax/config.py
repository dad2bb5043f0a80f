"""Frozen, hashable configuration dataclasses.

The library never reads flags. ``launch/`` turns absl flags and ml_collections
config files into these dataclasses; everything under ``sleep_jax/`` only ever
sees them. Each validates itself on construction and raises ``ValueError``
naming the offending field.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Literal

import numpy as np

BLOCK_TYPES = ("attn", "gdn")
EVICTION_MODES = ("hard", "sliding")
GDN_IMPLS = ("auto", "reference", "chunked", "pallas")
COMPUTE_DTYPES = ("float32", "bfloat16")
SLEEP_REINJECT = ("none", "embedding", "wake")
HALT_MEASURES = ("fast_weights", "kl", "argmax")


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def _is_integer(value) -> bool:
  """A Python or numpy integer; not a bool (``True`` is an ``int`` to Python) and not a float."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _integer(owner: str, name: str, value, minimum: int, *, optional: bool = False, alias: str = ""):
  """``value`` as a Python ``int`` (numpy integers too, so the config stays hashable and equal to the
  same config spelled with ints), or ``None`` when ``optional``.

  Raises:
    ValueError: one line naming ``owner.name``, for a bool, a float (even an
      integral one), any other type, or a value below ``minimum``.
  """
  if optional and value is None:
    return None
  _require(_is_integer(value) and value >= minimum,
           f"{owner}.{name}{alias} must be {'None or ' if optional else ''}an integer >= {minimum}, got {value!r}")
  return int(value)


def _real(owner: str, name: str, value, *, positive: bool):
  """A finite real number (``> 0`` when ``positive``, else ``>= 0``): Python numbers are kept as
  given, numpy scalars become Python floats.

  Raises:
    ValueError: one line naming ``owner.name``.
  """
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
  ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
  _require(ok, f"{owner}.{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
  return value if isinstance(value, (int, float)) else float(value)


def _boolean(owner: str, name: str, value) -> bool:
  _require(isinstance(value, (bool, np.bool_)), f"{owner}.{name} must be a bool, got {value!r}")
  return bool(value)


def _dtype_name(value) -> str:
  """``"float32"`` or ``"bfloat16"`` from its name or any dtype spelling numpy understands
  (``jnp.bfloat16``, ``np.float32``, ``np.dtype("float32")``).

  Raises:
    ValueError: one line naming ``ModelConfig.dtype``.
  """
  if isinstance(value, str) and value in COMPUTE_DTYPES:
    return value
  try:
    name = np.dtype(value).name
  except (TypeError, ValueError):
    name = None
  _require(name in COMPUTE_DTYPES, f"ModelConfig.dtype must be 'float32' or 'bfloat16' (or that dtype), got {value!r}")
  return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hybrid attention / Gated DeltaNet language model.

  Integer fields take Python or numpy integers (stored as ``int``) and refuse
  bools and floats; each field is checked on construction.

  Attributes:
    vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
    d_model: residual width.
    n_layers: number of blocks (ignored when ``layout`` is given).
    layout: block types in order, each ``"attn"`` or ``"gdn"``. ``None`` means
      alternating attention and GDN, starting with attention (the paper's).
    n_heads: attention heads.
    head_dim: attention head dimension.
    gdn_n_heads: GDN heads (``None``: same as ``n_heads``).
    gdn_head_dim: GDN key (and query) head dimension ``Dk``.
    gdn_value_dim: GDN value head dimension ``Dv`` (``None``: ``gdn_head_dim``).
    conv_size: short causal convolution width on GDN q/k/v.
    mlp_hidden: SwiGLU hidden width (``None``: ``round_up(8/3 * d_model, 64)``).
    rope_theta: RoPE base.
    norm_eps: RMSNorm epsilon.
    embed_init_std: embedding init std. 1.0, not the usual 0.02: looped models
      stayed at the majority class with 0.02 (see BUILD_NOTES.md).
    prelude: blocks that run once before the looped core during sleep.
    coda: blocks that run once after the looped core during sleep.
    tie_embeddings: share the embedding and output projection.
    dtype: compute dtype ("float32" or "bfloat16"; a dtype such as
      ``jnp.bfloat16`` is stored as its name); params and fast weights stay
      float32.
    gdn_impl: implementation of the gated delta rule (see ``sleep_jax.ops``).
    gdn_chunk_size: chunk size for the chunked / Pallas implementations. Not
      read on CPU under ``gdn_impl="auto"``, which takes the measured chunk
      size for the sequence length (``sleep_jax.ops.gated_delta.api.AUTO_TABLE_CPU``);
      set ``gdn_impl="chunked"`` to use it there. On GPU / TPU ``"auto"`` is
      Pallas with this chunk size.
    gdn_decay_init: ``(low, high)``: the GDN decay rates ``A`` start uniform
      in this range (the forget gate is ``exp(-A * softplus(.))`` per token).
      The default ``(1, 16)`` is Mamba's; a lower range remembers longer at
      initialisation.
    n_kv_heads: attention key/value heads (grouped-query attention: query
      head ``i`` reads key/value head ``i // (n_heads // n_kv_heads)``);
      ``None``: ``n_heads``. Must divide ``n_heads``.
    attn_output_gate: attention output gate: a second query-sized projection
      ``g`` of the block input, and the attention output (before ``o_proj``)
      is multiplied by ``sigmoid(g)`` per head and channel (Qwen3-Next).
    attn_qk_norm: RMSNorm (learned scale over ``head_dim``, shared by the
      heads) on every query and key head before RoPE (Qwen3 / Qwen3-Next).
    rope_fraction: fraction of each attention head's dimensions that RoPE
      rotates (partial rotary): the first ``rope_dim = int(head_dim *
      rope_fraction)`` dimensions, half-split, the rest pass unrotated. 1.0:
      the whole head.
    norm_zero_centered: every RMSNorm but the GDN output norm stores its scale
      as an offset from one: ``y = norm(x) * (1 + scale)``, scale initialised
      to zero (Qwen3-Next). The function at initialisation is the same.
    gdn_n_key_heads: GDN query / key heads (``None``: ``gdn_n_heads``). Fewer
      key than value heads: each query / key head serves ``gdn_n_heads //
      gdn_n_key_heads`` consecutive value heads (Qwen3-Next's grouped value
      heads); the fast weights keep one state per value head.
    sleep_reinject: input re-injection into every sleep pass (the wake pass
      is unchanged). ``"none"`` (the paper's): a sleep pass reads only the
      previous pass's output. ``"embedding"``: each sleep pass adds
      ``A x`` to its input, ``x`` being the window's embedding as the looped
      core first saw it (after the prelude), through a learned ``d x d``
      adapter ``A`` (``HybridLM.sleep_adapter``) that starts at zero, so an
      untrained adapter gives the ``"none"`` model's numbers exactly.
      ``"wake"``: the same with ``x`` the core's wake-pass output. The
      "input recall" of Deep Thinking and Huginn's input injection: a pass
      that always sees the input can keep refining towards a fixed point
      instead of drifting from it.
    canon_size: width ``c`` of the "Canon layers" of Physics of Language
      Models part 4.1 (Allen-Zhu): short depthwise causal convolutions over
      the ``d_model`` channels, with a residual, on the normalised block
      inputs: Canon-A before the mixer (``y = mixer_norm(x); y = y +
      conv_a(y)``) and Canon-C before the MLP (``z = mlp_norm(x); z = z +
      conv_c(z)``), in every block, attention and GDN alike. Weights ``[c,
      d_model]``, no bias, no activation, initialised to zero (a design
      decision, ours): a model with canon layers starts out computing exactly
      what the same model without them computes, so switching them on changes
      nothing until training moves the weights. Like the GDN short
      convolution they restart from zeros at the start of every window and
      every sleep pass (nothing but the fast weights crosses a window
      boundary); decoding carries their last ``c - 1`` inputs per window in
      the decode state. ``0`` (the default): off, no parameters.
  """
  vocab_size: int
  d_model: int = 256
  n_layers: int = 4
  layout: tuple[str, ...] | None = None
  n_heads: int = 4
  head_dim: int = 64
  gdn_n_heads: int | None = None
  gdn_head_dim: int = 64
  gdn_value_dim: int | None = None
  conv_size: int = 4
  mlp_hidden: int | None = None
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  embed_init_std: float = 1.0
  prelude: int = 0
  coda: int = 0
  tie_embeddings: bool = False
  dtype: str = "float32"
  gdn_impl: str = "auto"
  gdn_chunk_size: int = 64
  gdn_decay_init: tuple[float, float] = (1.0, 16.0)
  n_kv_heads: int | None = None
  attn_output_gate: bool = False
  attn_qk_norm: bool = False
  rope_fraction: float = 1.0
  norm_zero_centered: bool = False
  gdn_n_key_heads: int | None = None
  sleep_reinject: str = "none"
  canon_size: int = 0

  def __post_init__(self):
    M = "ModelConfig"
    ints = dict(vocab_size=2, d_model=1, n_heads=1, head_dim=1, gdn_head_dim=1, conv_size=1, prelude=0, coda=0,
                gdn_chunk_size=1, canon_size=0)
    for name, minimum in ints.items():
      object.__setattr__(self, name, _integer(M, name, getattr(self, name), minimum))
    for name in ("gdn_n_heads", "gdn_value_dim", "mlp_hidden", "n_kv_heads", "gdn_n_key_heads"):
      object.__setattr__(self, name, _integer(M, name, getattr(self, name), 1, optional=True))
    for name in ("attn_output_gate", "attn_qk_norm", "norm_zero_centered"):
      object.__setattr__(self, name, _boolean(M, name, getattr(self, name)))
    object.__setattr__(self, "rope_fraction", _real(M, "rope_fraction", self.rope_fraction, positive=True))
    _require(self.rope_fraction <= 1, f"ModelConfig.rope_fraction must lie in (0, 1], got {self.rope_fraction!r}")
    _require(self.n_heads % self.num_kv_heads == 0,
             f"ModelConfig.n_kv_heads={self.num_kv_heads} must divide n_heads={self.n_heads}")
    _require(self.num_gdn_heads % self.num_gdn_key_heads == 0,
             f"ModelConfig.gdn_n_key_heads={self.num_gdn_key_heads} must divide gdn_n_heads={self.num_gdn_heads}")
    # n_layers is ignored when layout is given, but is still an integer.
    object.__setattr__(self, "n_layers", _integer(M, "n_layers", self.n_layers, 1 if self.layout is None else 0))
    for name, positive in (("rope_theta", True), ("norm_eps", False), ("embed_init_std", True)):
      object.__setattr__(self, name, _real(M, name, getattr(self, name), positive=positive))
    object.__setattr__(self, "tie_embeddings", _boolean(M, "tie_embeddings", self.tie_embeddings))
    object.__setattr__(self, "dtype", _dtype_name(self.dtype))
    if self.layout is not None:
      _require(not isinstance(self.layout, str), f"ModelConfig.layout must be a sequence of block types, got "
               f"the string {self.layout!r}")
      object.__setattr__(self, "layout", tuple(self.layout))
    decay = tuple(self.gdn_decay_init)
    _require(len(decay) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in decay)
             and 0 < decay[0] <= decay[1] and math.isfinite(decay[1]),
             f"ModelConfig.gdn_decay_init must be (low, high) with 0 < low <= high, got {self.gdn_decay_init!r}")
    object.__setattr__(self, "gdn_decay_init", tuple(float(x) for x in decay))
    _require(self.rope_dim % 2 == 0 and self.rope_dim >= 2,
             f"ModelConfig.head_dim * rope_fraction (the rotated dimensions) must be even and >= 2 for RoPE, got "
             f"int({self.head_dim} * {self.rope_fraction}) = {self.rope_dim}")
    _require(self.gdn_impl in GDN_IMPLS, f"ModelConfig.gdn_impl must be one of {GDN_IMPLS}, got {self.gdn_impl!r}")
    _require(self.sleep_reinject in SLEEP_REINJECT,
             f"ModelConfig.sleep_reinject must be one of {SLEEP_REINJECT}, got {self.sleep_reinject!r}")
    if self.layout is not None:
      _require(len(self.layout) >= 1, "ModelConfig.layout must name at least one block")
      for i, b in enumerate(self.layout):
        _require(b in BLOCK_TYPES, f"ModelConfig.layout[{i}] = {b!r} is not a known block type {BLOCK_TYPES}")
    n = len(self.block_types)
    _require(self.prelude + self.coda < n,
             f"ModelConfig.prelude + coda ({self.prelude} + {self.coda}) must leave at least one looped block of {n}")

  @property
  def block_types(self) -> tuple[str, ...]:
    """The block layout, resolved."""
    if self.layout is not None:
      return self.layout
    return tuple("attn" if i % 2 == 0 else "gdn" for i in range(self.n_layers))

  @property
  def num_gdn_heads(self) -> int:
    return self.gdn_n_heads if self.gdn_n_heads is not None else self.n_heads

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

  @property
  def num_gdn_key_heads(self) -> int:
    return self.gdn_n_key_heads if self.gdn_n_key_heads is not None else self.num_gdn_heads

  @property
  def rope_dim(self) -> int:
    """Dimensions of each attention head that RoPE rotates."""
    return int(self.head_dim * self.rope_fraction)

  @property
  def gdn_v_dim(self) -> int:
    return self.gdn_value_dim if self.gdn_value_dim is not None else self.gdn_head_dim

  @property
  def mlp_width(self) -> int:
    if self.mlp_hidden is not None:
      return self.mlp_hidden
    return ((8 * self.d_model // 3) + 63) // 64 * 64

  @property
  def core_range(self) -> tuple[int, int]:
    """Half-open block index range ``[start, stop)`` of the looped core."""
    return self.prelude, len(self.block_types) - self.coda


@dataclasses.dataclass(frozen=True)
class SleepConfig:
  """How the model sleeps.

  Integer fields take Python or numpy integers (stored as ``int``) and refuse
  bools and floats; each field is checked on construction.

  Attributes:
    window: consolidation window ``L`` in tokens; the attention cache holds at
      most this many tokens.
    n_passes: the paper's ``N``: passes of the looped core over a sleeping
      window, the wake pass included, so a window sleeps for ``N - 1`` passes
      after its wake pass (:attr:`n_sleep_passes`). ``N = 1`` is the plain
      hybrid; ``N = 0`` forgets the window (its wake pass still runs, then the
      fast weights revert to their window-start value).
    eviction: "hard" (clear the cache every ``L`` tokens) or "sliding" (after
      sleeping, keep the last ``L - 1`` tokens' keys and values, from the last
      pass).
    remat_passes: checkpoint each pass (activation memory O(1) in ``N``).
    remat_windows: checkpoint each window (activation memory O(1) in ``T/L``).
    grad_passes: backpropagate only through the last ``k`` of the ``N``
      passes of each sleeping window, counting the wake pass as pass 1
      (``None`` or ``k >= N``: all passes, as in the paper). Under adaptive
      sleep ``N`` is the cap and the cut sits at a fixed pass index, so an
      example that halted before it passes no gradient back through this
      window's sleep (nor, through ``S``, to earlier windows).
    replay: a control, not the paper's method. Every sleep pass re-reads the
      window (it consumes the looped core's wake-pass *input*, i.e. the
      embedded tokens after the prelude) instead of the previous pass's hidden
      states; the fast weights still accumulate across passes. Separates
      "refining hidden states" from "rereading the window".
    n_passes_train: training only: the values of ``N`` (paper's count) that
      training steps draw from, one per step, deterministically from
      ``(seed, step)`` (:meth:`draw_n_passes`), so a resumed run draws the
      same ``N``s. ``None``: every step uses ``n_passes``. Evaluation and
      serving always use ``n_passes``. The trainer compiles one step program
      per distinct value drawn.
    n_passes_train_weights: relative probabilities of the ``n_passes_train``
      values (``None``: uniform).
    n_passes_train_mean: training only: a heavy-tailed draw of ``N`` per step
      (Huginn's recurrence draw), in place of ``n_passes_train``:
      ``N = min(1 + Poisson(lam), n_passes_train_max)`` with
      ``lam ~ LogNormal(log(mean - 1) - sigma^2 / 2, sigma)``, so
      ``E[lam] = mean - 1`` and, before the cap, ``E[N] = mean``. Most steps
      run near the mean, a few far deeper, so the step function cannot count
      its passes. Deterministic in ``(seed, step)`` like ``n_passes_train``
      (:meth:`draw_n_passes`), one compiled step per distinct ``N`` (at
      most ``n_passes_train_max``). ``> 1``; needs ``n_passes_train_max``.
    n_passes_train_sigma: ``sigma`` of the log-normal, ``>= 0`` (``0``: a
      plain Poisson; Huginn uses 0.5). Only with ``n_passes_train_mean``.
    n_passes_train_max: the cap on the heavy-tailed ``N`` (paper's count,
      ``>= 1``); ``P(N = max)`` holds the whole tail.
    detach_passes_train: training only: a progressive (detached-prefix) loss,
      Deep Thinking's. Each training step draws ``P`` uniformly from
      ``0..detach_passes_train`` (deterministic in ``(seed, step)``, a stream
      of its own) and a sleeping window runs ``P`` extra sleep passes under
      ``stop_gradient`` right after its wake pass, then the step's ``N - 1``
      sleep passes with gradient (the last ``grad_passes`` of them when that
      is smaller): ``N + P`` passes in all. The gradient-carrying passes so
      start from a state some unknown number of passes in, so they learn to
      improve any state rather than to run a fixed-length program. ``P = 0``
      is today's step exactly, as is a step whose ``N < 2`` (no sleep pass to
      start late). Composes with a drawn ``N`` and adaptive sleep (the cap
      ``N``, drawn or ``max_passes``, becomes ``N + P``). One compiled step per distinct
      ``(N, P)``. ``None`` (off) or an integer ``>= 0``.
    halt_tol: adaptive sleep (``None``: off). Each example stops sleeping on a
      window once one sleep pass changes its looped core's fast weights by
      less than this, relatively: ``||S_n - S_{n-1}|| / ||S_{n-1}||`` over all
      the core's GDN states of that example. At least one sleep pass runs,
      at most ``max_n_passes - 1``; examples halt independently. So the cap
      must allow a sleep pass: ``max_passes >= 2``, or with ``max_passes``
      unset ``n_passes >= 2`` (or some ``n_passes_train`` value ``>= 2``);
      a cap below 2 is refused (a training step that draws ``N < 2`` runs
      fixed ``N``, see :meth:`with_n_passes`).
      ``0`` never halts (the same numbers as fixed ``N = max_n_passes``).
      Works in training (differentiable), evaluation and serving alike; the
      passes each example ran are reported (``WindowedOutput.passes``, the
      ``sleep/passes`` training metric, ``SleepSession.stats``). Batched, it
      saves compute only once every example of the batch has halted.
      What "changes" means is ``halt_measure``.
    halt_measure: the per-pass change adaptive sleep compares with
      ``halt_tol`` (read only with ``halt_tol``). ``"fast_weights"`` (the
      default): the fast weights' relative change above. ``"kl"``: the change
      of the window's predictions, ``KL(p_n || p_{n-1})`` between the
      next-token distributions after pass ``n`` and pass ``n - 1`` (pass 1
      being the wake pass's logits), averaged over the window's tokens; each
      sleep pass then also runs the coda and the output projection on its
      output to read the predictions. ``"argmax"``: the fraction of the
      window's tokens whose argmax prediction changed (halts once fewer than
      ``halt_tol`` change; ``halt_tol < 1 / W`` halts only when none does).
      For every measure ``halt_tol = 0`` never halts.
    max_passes: with ``halt_tol``, the most passes a sleeping window runs,
      paper's count, ``>= 2`` (``None``: ``n_passes``, which adaptive sleep
      otherwise ignores).
    unroll: unroll the scans over sleep passes and over same-shaped windows
      (the same numbers). The program holds one copy of the blocks per pass
      and window, so compilation takes longer; the step no longer pays a
      loop's per-iteration carry copies and fusion barriers, which dominate
      small windows on CPU (``python -m launch.bench train``).
    fuse_unslept: when no window of a forward runs a sleep pass (``N = 1``,
      or no window consolidates), run the whole sequence as one pass with
      the windows' eviction as masks (``windowed.forward_unslept``): the
      window loop's numbers up to float rounding, at a plain forward's cost.
      ``False`` always runs the window loop (the reference).
  """
  window: int
  n_passes: int = 1
  eviction: Literal["hard", "sliding"] = "hard"
  remat_passes: bool = True
  remat_windows: bool = True
  grad_passes: int | None = None
  replay: bool = False
  n_passes_train: tuple[int, ...] | None = None
  n_passes_train_weights: tuple[float, ...] | None = None
  n_passes_train_mean: float | None = None
  n_passes_train_sigma: float = 0.5
  n_passes_train_max: int | None = None
  detach_passes_train: int | None = None
  halt_tol: float | None = None
  halt_measure: str = "fast_weights"
  max_passes: int | None = None
  unroll: bool = False
  fuse_unslept: bool = True

  def __post_init__(self):
    S = "SleepConfig"
    object.__setattr__(self, "window", _integer(S, "window", self.window, 1, alias=" (L)"))
    object.__setattr__(self, "n_passes", _integer(S, "n_passes", self.n_passes, 0, alias=" (N)"))
    object.__setattr__(self, "grad_passes", _integer(S, "grad_passes", self.grad_passes, 1, optional=True))
    object.__setattr__(self, "max_passes", _integer(S, "max_passes", self.max_passes, 1, optional=True))
    for name in ("remat_passes", "remat_windows", "replay", "unroll", "fuse_unslept"):
      object.__setattr__(self, name, _boolean(S, name, getattr(self, name)))
    _require(self.eviction in EVICTION_MODES,
             f"SleepConfig.eviction must be one of {EVICTION_MODES}, got {self.eviction!r}")
    if self.n_passes_train is not None:
      train = tuple(self.n_passes_train)
      _require(len(train) >= 1 and all(_is_integer(n) and n >= 0 for n in train),
               f"SleepConfig.n_passes_train must be None or a non-empty tuple of integers >= 0, "
               f"got {self.n_passes_train!r}")
      object.__setattr__(self, "n_passes_train", tuple(int(n) for n in train))
    if self.n_passes_train_weights is not None:
      _require(self.n_passes_train is not None, "SleepConfig.n_passes_train_weights needs n_passes_train")
      w = tuple(float(x) for x in self.n_passes_train_weights)
      object.__setattr__(self, "n_passes_train_weights", w)
      _require(len(w) == len(self.n_passes_train),
               f"SleepConfig.n_passes_train_weights must have one weight per n_passes_train value "
               f"({len(self.n_passes_train)}), got {len(w)}")
      _require(all(math.isfinite(x) and x >= 0 for x in w) and sum(w) > 0,
               f"SleepConfig.n_passes_train_weights must be finite, >= 0 and not all zero, got {w!r}")
    self._check_heavy_tail()
    object.__setattr__(self, "detach_passes_train",
                       _integer(S, "detach_passes_train", self.detach_passes_train, 0, optional=True))
    _require(self.halt_measure in HALT_MEASURES,
             f"SleepConfig.halt_measure must be one of {HALT_MEASURES}, got {self.halt_measure!r}")
    if self.halt_tol is not None:
      _require(isinstance(self.halt_tol, (int, float, np.integer, np.floating))
               and not isinstance(self.halt_tol, (bool, np.bool_)) and self.halt_tol >= 0,
               f"SleepConfig.halt_tol must be None or a number >= 0, got {self.halt_tol!r}")
      object.__setattr__(self, "halt_tol", float(self.halt_tol))
    if self.max_passes is not None:
      _require(self.halt_tol is not None, "SleepConfig.max_passes needs halt_tol (adaptive sleep); for a fixed N "
               "set n_passes")
      _require(self.n_passes_train is None and self.n_passes_train_mean is None,
               "SleepConfig.max_passes fixes the adaptive cap, so n_passes_train / n_passes_train_mean "
               "(a per-step n_passes) would be ignored; leave max_passes None to draw the cap")
      _require(self.max_passes >= 2, f"SleepConfig.max_passes={self.max_passes} leaves adaptive sleep "
               f"(halt_tol={self.halt_tol:g}) no sleep pass to run (the wake pass is pass 1): set max_passes >= 2")
    elif self.halt_tol is not None:
      caps = (self.n_passes,) + (self.n_passes_train or ()) + (self.n_passes_train_max or 0,)
      drawn = ("" if self.n_passes_train is None else f" / n_passes_train={self.n_passes_train}") + (
          "" if self.n_passes_train_max is None else f" / n_passes_train_max={self.n_passes_train_max}")
      _require(max(caps) >= 2, f"SleepConfig.halt_tol={self.halt_tol:g} (adaptive sleep) is capped at n_passes="
               f"{self.n_passes}{drawn}, which leaves no sleep pass to run (the wake pass is pass 1): "
               "set max_passes >= 2")

  def _check_heavy_tail(self) -> None:
    S = "SleepConfig"
    object.__setattr__(self, "n_passes_train_max",
                       _integer(S, "n_passes_train_max", self.n_passes_train_max, 1, optional=True))
    object.__setattr__(self, "n_passes_train_sigma",
                       _real(S, "n_passes_train_sigma", self.n_passes_train_sigma, positive=False))
    if self.n_passes_train_mean is None:
      _require(self.n_passes_train_max is None and self.n_passes_train_sigma == 0.5,
               "SleepConfig.n_passes_train_max / n_passes_train_sigma shape the heavy-tailed draw of N and need "
               "n_passes_train_mean")
      return
    mean = _real(S, "n_passes_train_mean", self.n_passes_train_mean, positive=True)
    _require(mean > 1, f"SleepConfig.n_passes_train_mean is the mean N of the draw (wake pass included) and must "
             f"be > 1, got {mean!r}")
    object.__setattr__(self, "n_passes_train_mean", float(mean))
    _require(self.n_passes_train is None, "SleepConfig.n_passes_train_mean (a heavy-tailed draw of N) and "
             "n_passes_train (a draw from listed values) are two distributions of N: set one")
    _require(self.n_passes_train_max is not None, "SleepConfig.n_passes_train_mean needs n_passes_train_max, the "
             "cap on the drawn N (each distinct N compiles its own step)")

  @property
  def adaptive(self) -> bool:
    """Sleep halts per example (``halt_tol`` is set)."""
    return self.halt_tol is not None

  @property
  def max_n_passes(self) -> int:
    """The most passes a sleeping window runs, wake pass included: ``N``, or
    the adaptive cap (``max_passes``, default ``n_passes``)."""
    if self.halt_tol is not None and self.max_passes is not None:
      return self.max_passes
    return self.n_passes

  @property
  def n_sleep_passes(self) -> int:
    """Core passes a sleeping window runs after its wake pass (at most, when
    adaptive): ``max(max_n_passes - 1, 0)``."""
    return max(self.max_n_passes - 1, 0)

  @property
  def draws_n_passes(self) -> bool:
    """Training draws ``N`` per step (``n_passes_train`` or ``n_passes_train_mean``)."""
    return self.n_passes_train is not None or self.n_passes_train_mean is not None

  @property
  def varies_per_step(self) -> bool:
    """A training step's config depends on its step (:meth:`for_train_step` is not ``self`` at fixed N)."""
    return self.draws_n_passes or bool(self.detach_passes_train)

  def n_passes_train_distribution(self) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """``(values, probabilities)`` of the training draw of ``N``, or ``None`` when ``N`` is not drawn.

    For ``n_passes_train`` the normalised weights; for the heavy-tailed draw
    the exact law of ``min(1 + Poisson(lam), max)`` with log-normal ``lam``,
    the mixture over ``lam`` integrated by 120-node Gauss-Hermite
    quadrature (values of probability 0 to double precision are kept).
    """
    if self.n_passes_train is not None:
      w = np.asarray(self.n_passes_train_weights or (1.0,) * len(self.n_passes_train), np.float64)
      return self.n_passes_train, tuple(float(x) for x in w / w.sum())
    if self.n_passes_train_mean is None:
      return None
    top = self.n_passes_train_max
    z, wz = np.polynomial.hermite_e.hermegauss(120)
    wz = wz / wz.sum()
    mu, sigma = self._lognormal_mu(), self.n_passes_train_sigma
    lam = np.exp(mu + sigma * z)[:, None]  # [nodes, 1]
    k = np.arange(top - 1)[None, :]  # Poisson counts 0..top-2 map to N = 1..top-1
    lgamma = np.vectorize(math.lgamma)
    pmf = np.exp(-lam + k * np.log(lam) - lgamma(k + 1.0))
    below = (wz[:, None] * pmf).sum(axis=0)
    probs = np.concatenate([below, [max(1.0 - below.sum(), 0.0)]])
    return tuple(range(1, top + 1)), tuple(float(p) for p in probs / probs.sum())

  def _lognormal_mu(self) -> float:
    return math.log(self.n_passes_train_mean - 1.0) - self.n_passes_train_sigma ** 2 / 2

  def draw_n_passes(self, seed: int, step: int) -> int:
    """The ``N`` of training step ``step``: drawn from ``n_passes_train``.

    A pure function of ``(seed, step)`` (numpy's ``SeedSequence`` hash, which
    does not depend on the numpy version or platform), so a resumed run draws
    what the uninterrupted one did.

    Args:
      seed: the run's seed (``TrainConfig.seed``), ``>= 0``.
      step: the 0-based step, ``>= 0``.

    Returns:
      One of ``n_passes_train`` (with probability proportional to its
      weight), a heavy-tailed ``N`` in ``1..n_passes_train_max`` (see
      :attr:`n_passes_train_mean`; the log-normal by the inverse normal CDF
      and the Poisson by inversion, both in pure Python on the same hash
      bits, so numpy's generators, whose streams may change between
      versions, are not used), or ``n_passes`` when ``N`` is not drawn.
    """
    if self.n_passes_train_mean is not None:
      u_normal, u_poisson = _uniforms(seed, step, 0x5EEA, 2)
      lam = math.exp(self._lognormal_mu() + self.n_passes_train_sigma * statistics.NormalDist().inv_cdf(u_normal))
      return 1 + _poisson_inverse(lam, u_poisson, self.n_passes_train_max - 1)
    if self.n_passes_train is None:
      return self.n_passes
    # A fixed tag keeps this stream apart from other uses of (seed, step).
    u = _uniform_bits(seed, step, 0x5EE9)
    weights = self.n_passes_train_weights or (1.0,) * len(self.n_passes_train)
    cum = np.cumsum(np.asarray(weights, np.float64))
    cum = cum / cum[-1]  # exactly 1.0 at the end, so u < 1 never falls past it
    i = int(np.searchsorted(cum, u, side="right"))
    return self.n_passes_train[i]

  def draw_detach_passes(self, seed: int, step: int) -> int:
    """The detached prefix ``P`` of training step ``step`` (``0`` when ``detach_passes_train`` is unset).

    Uniform over ``0..detach_passes_train``, a pure function of ``(seed, step)``
    on a stream of its own (independent of the draw of ``N``).
    """
    if not self.detach_passes_train:
      return 0
    (u,) = _uniforms(seed, step, 0x5EEB, 1)
    return min(int(u * (self.detach_passes_train + 1)), self.detach_passes_train)

  def for_train_step(self, seed: int, step: int) -> "SleepConfig":
    """The fixed config training step ``step`` runs: its drawn ``N`` and detached prefix ``P``.

    ``N`` from :meth:`draw_n_passes`; with ``P = draw_detach_passes(...) > 0``
    and ``N >= 2``, ``n_passes = N + P`` with ``grad_passes`` the last
    ``min(grad_passes or N - 1, N - 1)`` passes (the ``P`` passes after the
    wake pass, and the wake pass with them, carry no gradient through the
    sleep; see :attr:`detach_passes_train`). ``self`` when nothing varies.
    """
    if not self.varies_per_step:
      return self
    return self.with_draw(self.draw_n_passes(seed, step), self.draw_detach_passes(seed, step))

  def with_draw(self, n_passes: int, detach_passes: int = 0) -> "SleepConfig":
    """The fixed config of a training step that drew ``N = n_passes`` and ``P = detach_passes`` (see
    :meth:`for_train_step`)."""
    out = self.with_n_passes(n_passes)
    n = out.max_n_passes  # N, or a fixed adaptive cap
    if detach_passes == 0 or n < 2:
      return out
    grad = n - 1 if self.grad_passes is None else min(self.grad_passes, n - 1)
    if out.adaptive and out.max_passes is not None:
      return dataclasses.replace(out, max_passes=n + detach_passes, grad_passes=grad)
    return dataclasses.replace(out, n_passes=n + detach_passes, grad_passes=grad)

  def with_n_passes(self, n_passes: int) -> "SleepConfig":
    """This config at a fixed ``N`` (no training distribution): one step's config.

    Under adaptive sleep with the cap drawn (``max_passes`` unset), a drawn
    ``N < 2`` leaves no sleep pass to halt, so that step's config is fixed
    ``N`` (``halt_tol`` off; the same numbers).
    """
    halt_tol = self.halt_tol if self.max_passes is not None or n_passes >= 2 else None
    return dataclasses.replace(self, n_passes=n_passes, n_passes_train=None, n_passes_train_weights=None,
                               n_passes_train_mean=None, n_passes_train_sigma=0.5, n_passes_train_max=None,
                               detach_passes_train=None, halt_tol=halt_tol)


def _uniform_bits(seed: int, step: int, tag: int) -> float:
  """A uniform float in ``[0, 1)`` from 53 bits of numpy's ``SeedSequence`` hash of ``(seed, step, tag)``."""
  bits = np.random.SeedSequence([int(seed), int(step), tag]).generate_state(2, np.uint32)
  return ((int(bits[0]) << 21) ^ (int(bits[1]) >> 11)) / float(1 << 53)


def _uniforms(seed: int, step: int, tag: int, n: int) -> tuple[float, ...]:
  """``n`` uniforms in the open interval ``(0, 1)`` (midpoints of 53-bit cells), hashed from ``(seed, step, tag)``."""
  bits = np.random.SeedSequence([int(seed), int(step), tag]).generate_state(2 * n, np.uint32)
  return tuple((((int(bits[2 * i]) << 21) ^ (int(bits[2 * i + 1]) >> 11)) + 0.5) / float(1 << 53)
               for i in range(n))


def _poisson_inverse(lam: float, u: float, cap: int) -> int:
  """``min(k, cap)`` for the Poisson(``lam``) count ``k`` at CDF level ``u`` (inversion; pmf in log space)."""
  cdf, log_lam = 0.0, math.log(lam) if lam > 0 else -math.inf
  for k in range(cap):
    log_p = -lam + (k * log_lam if k else 0.0) - math.lgamma(k + 1)
    cdf += math.exp(log_p)
    if u < cdf:
      return k
  return cap
