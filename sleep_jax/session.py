"""Wake-time streaming inference with sleep: ``SleepSession``.

Tokens are fed one at a time or in blocks. Every token runs one ordinary
forward (the wake pass) against a fixed-size attention cache (a ring of ``L``
slots per attention block) and the GDN fast weights, so per-token latency does
not grow with the context. When a window of ``L`` tokens fills, the session
sleeps on it before eviction, exactly as training does (``windowed.run_window``
with ``consolidate=True``): design decision (ours), every full window sleeps at
serving time; the partial window holding the query/answer runs once. Then it
evicts: hard mode clears the cache; sliding mode keeps the window's keys and
values from its last sleep pass (the mask then uses the ``L - 1`` most recent).

Sleeping re-runs the window from its start state (the fast weights and kept
cache snapshotted when the window began, plus the window's tokens), so it is
bit-for-bit the training computation: ``N`` passes of the core plus the wake
pass that produced the logits (``N + 1`` core passes of compute per window in
all; the wake pass's hidden states are not kept). With ``N = 1`` nothing is
re-run: the streamed fast weights and keys/values are already pass 1's; with
``N = 0`` neither (the fast weights revert to the window start). Adaptive
sleep (``SleepConfig.halt_tol``) runs here as in training, each batch row
halting on its own. A block of ``L`` tokens that starts at a window boundary is run as one window
call (wake plus sleep), which is how long contexts are ingested quickly.

All jitted functions are pure functions of ``(params, SessionState, ...)`` with
static shapes; the host keeps only the Python position counter that decides
when a window starts or ends. The whole state (fast weights, caches, window
snapshot, pending window tokens, position, last logits) saves and restores
with orbax.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sleep_jax.array_typing import Array, ArrayLike, Float, Int32, NextLogits, typed
from sleep_jax.config import SleepConfig
from sleep_jax.array_typing import PyTree
from sleep_jax.cost import WindowFlops, model_flops
from sleep_jax.fast_weights import FastWeights
from sleep_jax.protocol import check_sleepable
from sleep_jax.windowed import run_window


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SessionState:
  """Everything a streaming session carries (a pytree of arrays).

  The attention memory and per-window decode state are the model's own
  pytrees (``sleep_jax.protocol``: ``init_kv``, ``init_decode_state``); the
  descriptions below are ``HybridLM``'s.

  Attributes:
    fast_weights: current GDN states.
    kv_caches: one ring ``KVCache`` of ``L`` slots per attention block.
    conv_histories: the model's per-window decode state: one short-conv
      history per GDN block, then two per block (its Canon layers) when
      ``ModelConfig.canon_size > 0`` (zero at window start).
    window_fast_weights: fast weights when the current window began.
    window_prefix: the kept caches when the current window began (sliding).
    window_tokens: ``[B, L]`` int32 tokens of the current window so far.
    position: scalar int32, tokens consumed so far.
    last_logits: ``[B, V]`` float32 logits after the last consumed token.
  """
  fast_weights: FastWeights | PyTree
  kv_caches: PyTree
  conv_histories: PyTree
  window_fast_weights: FastWeights | PyTree
  window_prefix: PyTree
  window_tokens: jax.Array
  position: jax.Array
  last_logits: jax.Array


@dataclasses.dataclass(frozen=True)
class SessionStats:
  """Compute a session has spent since it was made (analytic FLOPs, see
  ``sleep_jax.cost``), summed over its batch rows. Not saved with the state: a
  restored session counts from zero.

  Attributes:
    tokens: tokens consumed (fed or generated), all rows together.
    sleeps: windows slept on (each sleep covers every row; per_row: counted
      row by row, as each row's own windows fill).
    passes: passes per slept window and row, wake pass included (the paper's
      ``N``; under adaptive sleep, the mean of what ran).
    wake_flops: FLOPs of the wake passes (one ordinary forward per token).
    sleep_flops: FLOPs of sleeping: the sleep passes, plus re-running the wake
      pass of a window that was streamed token by token (its hidden states are
      not kept), without the output projection.
  """
  tokens: int
  sleeps: int
  passes: float
  wake_flops: float
  sleep_flops: float

  @property
  def wake_flops_per_token(self) -> float:
    return self.wake_flops / max(self.tokens, 1)

  @property
  def sleep_flops_per_token(self) -> float:
    return self.sleep_flops / max(self.tokens, 1)

  @property
  def flops_per_token(self) -> float:
    return (self.wake_flops + self.sleep_flops) / max(self.tokens, 1)


def init_session_state(model, sleep: SleepConfig, batch_size: int) -> SessionState:
  """The state of a fresh session (position 0, empty caches, zero fast weights)."""
  fw = model.init_fast_weights(batch_size)
  kv = model.init_kv(batch_size, sleep.window)
  return SessionState(fast_weights=fw, kv_caches=kv, conv_histories=model.init_decode_state(batch_size),
                      window_fast_weights=fw, window_prefix=kv,
                      window_tokens=jnp.zeros((batch_size, sleep.window), jnp.int32),
                      position=jnp.zeros((), jnp.int32),
                      last_logits=jnp.zeros((batch_size, model.vocab_size), jnp.float32))


# -- pure functions (jitted by the session) -------------------------------------------------------
def decode_token(model, sleep: SleepConfig, state: SessionState, tokens: jax.Array):
  """One wake-time token (no window bookkeeping): ``(logits [B, V], state)``."""
  logits, fw, kvs, convs = model.decode(tokens, state.position, state.fast_weights, state.kv_caches,
                                        state.conv_histories, window=sleep.window)
  slot = state.position % sleep.window
  window_tokens = jax.lax.dynamic_update_index_in_dim(state.window_tokens, tokens.astype(jnp.int32), slot, axis=1)
  return logits, dataclasses.replace(state, fast_weights=fw, kv_caches=kvs, conv_histories=convs,
                                     window_tokens=window_tokens, position=state.position + 1,
                                     last_logits=logits)


def _positions(state: SessionState, start_offset: int, width: int):
  return state.position - start_offset + jnp.arange(width, dtype=jnp.int32)


def _prefix(sleep: SleepConfig, state: SessionState):
  return state.window_prefix if sleep.eviction == "sliding" else None


def sleep_window(model, sleep: SleepConfig, state: SessionState) -> tuple[SessionState, jax.Array]:
  """Sleeps on the just-filled window (the position is at its end).

  Returns:
    ``(state, passes)``: ``passes`` ``[B]`` int32 are the core's passes over
    the window, wake pass included (see ``windowed.run_window``).
  """
  one = jnp.ones((state.window_tokens.shape[0],), jnp.int32)
  if sleep.max_n_passes == 1:
    return state, one  # streaming already computed pass 1's fast weights and keys/values
  if sleep.max_n_passes == 0:
    # Forget the window: its fast weights revert; the streamed keys/values are
    # the wake pass's, as run_window's are for N = 0. Nothing is re-run.
    return dataclasses.replace(state, fast_weights=state.window_fast_weights), one
  positions = _positions(state, sleep.window, sleep.window)
  _, fw, kvs, passes = run_window(model, state.window_tokens, positions, state.window_fast_weights,
                                  _prefix(sleep, state), sleep, True, want_logits=False)
  return dataclasses.replace(state, fast_weights=fw, kv_caches=kvs), passes


def run_full_window(model, sleep: SleepConfig, state: SessionState, tokens: jax.Array):
  """Wake pass plus sleep over ``L`` tokens starting at a window boundary: ``(logits, state, passes)``."""
  positions = _positions(state, 0, sleep.window)
  logits, fw, kvs, passes = run_window(model, tokens, positions, state.fast_weights, _prefix(sleep, state), sleep,
                                       True)
  state = dataclasses.replace(state, fast_weights=fw, kv_caches=kvs, window_tokens=tokens.astype(jnp.int32),
                              position=state.position + sleep.window, last_logits=logits[:, -1])
  return logits, state, passes


def begin_window(model, sleep: SleepConfig, state: SessionState) -> SessionState:
  """Evicts and snapshots at a window boundary."""
  kvs = state.kv_caches
  batch = state.window_tokens.shape[0]
  if sleep.eviction == "hard":
    clear = getattr(model, "clear_kv", None)
    kvs = clear(kvs) if callable(clear) else model.init_kv(batch, sleep.window)
  return dataclasses.replace(state, kv_caches=kvs, conv_histories=model.init_decode_state(batch),
                             window_fast_weights=state.fast_weights, window_prefix=kvs)


def _template(model, sleep: SleepConfig, batch_size: int, per_row: bool) -> SessionState:
  """A fresh state: ``[B, ...]`` arrays, or per_row ``B`` stacked batch-of-one states ``[B, 1, ...]``."""
  if not per_row:
    return init_session_state(model, sleep, batch_size)
  one = init_session_state(model, sleep, 1)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch_size,) + x.shape), one)


# Jitted on (graphdef, sleep) as static arguments, so sessions over the same
# model shape share compiled code (a restored session does not recompile). No
# donation: a state holds aliased buffers (the window snapshot is the live state
# right after a boundary).
def _jit_pure(fn):
  def wrapped(graphdef, sleep, params, *args):
    return fn(nnx.merge(graphdef, params), sleep, *args)
  return jax.jit(wrapped, static_argnums=(0, 1))


_decode_jit = _jit_pure(decode_token)
_sleep_jit = _jit_pure(sleep_window)
_window_jit = _jit_pure(run_full_window)
_begin_jit = _jit_pure(begin_window)


# -- independent rows (per_row=True): each row a batch-of-one state, vmapped ------------------------
def _where_rows(mask, new, old):
  return jax.tree.map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)


# The model is merged (copied) inside the vmapped function, so that a module with state (RNG counts) is
# updated at the trace level its variables were made at.
def decode_rows(graphdef, params, sleep: SleepConfig, states: SessionState, tokens: jax.Array, active: jax.Array):
  """One wake token for the ``active`` rows of a row-stacked state: ``(logits [R, V], states)``."""
  def one(state, token):
    logits, state = decode_token(nnx.merge(graphdef, params, copy=True), sleep, state, token[None])
    return logits[0], state
  logits, new = jax.vmap(one)(states, tokens)
  return logits, _where_rows(active, new, states)


def sleep_rows(graphdef, params, sleep: SleepConfig, states: SessionState, due: jax.Array):
  """Sleeps and starts a new window in the ``due`` rows (their window just filled): ``(states, passes [R])``."""
  def one(state):
    model = nnx.merge(graphdef, params, copy=True)
    state, passes = sleep_window(model, sleep, state)
    return begin_window(model, sleep, state), passes[0]
  new, passes = jax.vmap(one)(states)
  return _where_rows(due, new, states), jnp.where(due, passes, 0)


def _jit_rows(fn):
  def wrapped(graphdef, sleep, params, *args):
    return fn(graphdef, params, sleep, *args)
  return jax.jit(wrapped, static_argnums=(0, 1))


_decode_rows_jit = _jit_rows(decode_rows)
_sleep_rows_jit = _jit_rows(sleep_rows)


def sample_tokens(logits: jax.Array, key: jax.Array | None, *, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None) -> jax.Array:
  """Draws one token per row from ``[B, V]`` logits.

  Args:
    logits: ``[B, V]`` float logits.
    key: PRNG key (unused when ``temperature == 0``).
    temperature: ``0`` is greedy (the argmax, exactly); else the logits are
      divided by it.
    top_k: keep only the ``k`` largest logits per row (None: all).
    top_p: nucleus sampling: keep the smallest set of tokens, most likely
      first, whose probability reaches ``top_p`` (None or 1: all).

  Returns:
    ``[B]`` int32 tokens.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    # Keep a token while the mass before it is below top_p (the most likely token always stays).
    keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


_sample_jit = jax.jit(sample_tokens, static_argnames=("temperature", "top_k", "top_p"))


# -- the session ------------------------------------------------------------------------------------
class SleepSession:
  """A streaming session over a sleepable model that sleeps before each eviction.

  The model is a ``HybridLM`` or any model meeting the sleepable-model
  protocol with its streaming methods (``sleep_jax.protocol``). Serve a model
  with dropout in evaluation mode (``model.eval()``).

  Example::

      session = SleepSession(model, SleepConfig(window=24, n_passes=4), batch_size=1)
      session.feed(context_tokens)          # sleeps on every full window
      answer = session.generate(4)          # greedy, one ordinary forward per token
      sampled = session.fork().generate(4, temperature=0.8, top_p=0.9, key=jax.random.key(0))

  A batch of prompts of different lengths: ``per_row=True`` keeps one
  position per row, so each row sleeps when its own window fills::

      session = SleepSession(model, sleep, batch_size=3, per_row=True)
      session.feed(padded_prompts, lengths=[5, 17, 9])   # [3, 17], right-padded
      answers = session.generate(8)                      # each row continues its own prompt

  A per_row session runs every row as a batch of one under ``vmap``, token by
  token (no whole-window ingestion), and sleeps on a window for the rows
  whose window just filled (computing the others' and discarding it).

  Attributes:
    sleep: the ``SleepConfig``.
    state: the current ``SessionState`` (per_row: ``B`` stacked batch-of-one
      states).
    stats: the compute spent so far (:class:`SessionStats`).
    per_row: whether rows keep positions of their own.
  """

  def __init__(self, model, sleep: SleepConfig, batch_size: int = 1, *, state: SessionState | None = None,
               per_row: bool = False):
    if not isinstance(sleep, SleepConfig):
      raise ValueError(f"sleep must be a SleepConfig, got {type(sleep).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_sleepable(model, serving=True)
    self.sleep = sleep
    self.batch_size = batch_size
    self.vocab_size = model.vocab_size
    self.per_row = bool(per_row)
    self._graphdef, self._params = nnx.split(model)
    self._template = _template(model, sleep, batch_size, self.per_row)
    self.state = self._template if state is None else state
    # Host copies of the positions (one per row when per_row): they decide when a window fills.
    self._rows_pos = np.broadcast_to(np.asarray(self.state.position, np.int64), (batch_size,)).copy()
    self._pos = int(self._rows_pos[0])

    self._decode = functools.partial(_decode_jit, self._graphdef, sleep)
    self._sleep = functools.partial(_sleep_jit, self._graphdef, sleep)
    self._window = functools.partial(_window_jit, self._graphdef, sleep)
    self._begin = functools.partial(_begin_jit, self._graphdef, sleep)
    self._decode_rows = functools.partial(_decode_rows_jit, self._graphdef, sleep)
    self._sleep_rows = functools.partial(_sleep_rows_jit, self._graphdef, sleep)

    # Compute accounting (see `stats`): host counters, plus the per-row pass
    # counts of each sleep kept on the device (no sync per sleep).
    # A model that cannot count its FLOPs (cost.model_flops) reports NaN.
    flops_of_window, token_flops = model_flops(model, sleep)
    self._token_flops = float("nan") if token_flops is None else token_flops
    self._window_flops = (WindowFlops(sleep.window, *(float("nan"),) * 4) if flops_of_window is None
                          else flops_of_window(sleep.window))
    self._counts = {"tokens": 0, "sleeps": 0, "rows_slept": 0, "wake_flops": 0.0, "rerun_flops": 0.0}
    self._pass_counts: list = []

  def _count_sleep(self, passes, rerun: bool, rows: int | None = None) -> None:
    rows = self.batch_size if rows is None else rows
    self._counts["sleeps"] += 1
    self._counts["rows_slept"] += rows
    if rerun and self.sleep.max_n_passes >= 2:
      self._counts["rerun_flops"] += rows * self._window_flops.stack
    self._pass_counts.append(passes)
    if len(self._pass_counts) > 256:  # bounded host memory on long streams
      self._pass_counts = [sum(jnp.sum(p) for p in self._pass_counts)]

  @property
  def stats(self) -> SessionStats:
    """:class:`SessionStats` so far (reads the pass counts back from the device)."""
    c = self._counts
    total_passes = float(sum(np.sum(np.asarray(p)) for p in jax.device_get(self._pass_counts)))
    rows = c["rows_slept"]
    wf = self._window_flops
    # Every slept row ran p >= 2 passes when N >= 2 (adaptive: at least one
    # sleep pass), so its sleep FLOPs (p - 1) core + coda sum linearly.
    sleep_flops = c["rerun_flops"]
    if self.sleep.max_n_passes >= 2:
      sleep_flops += (total_passes - rows) * wf.sleep_pass + rows * wf.coda
    return SessionStats(tokens=c["tokens"], sleeps=c["rows_slept"] if self.per_row else c["sleeps"], passes=total_passes / max(rows, 1),
                        wake_flops=c["wake_flops"], sleep_flops=sleep_flops)

  @property
  def position(self) -> int:
    """Tokens consumed so far (per_row: by the row that has consumed most)."""
    return int(self._rows_pos.max())

  @property
  def positions(self) -> np.ndarray:
    """``[B]`` tokens consumed so far by each row."""
    return self._rows_pos.copy()

  @property
  @typed
  def fast_weights(self) -> FastWeights | PyTree:
    """The current fast weights (``b h k v`` states, ``b`` the session's rows)."""
    return self._rows(self.state.fast_weights)

  def _rows(self, tree):
    # A per-row state stacks batch-of-one states: [R, 1, ...] -> [R, ...].
    return jax.tree.map(lambda x: x[:, 0], tree) if self.per_row else tree

  @property
  @typed
  def last_logits(self) -> NextLogits:
    """``[B, V]`` (``b vocab``) logits after the last consumed token (predicting the next)."""
    return self._rows(self.state.last_logits)

  def _as_tokens(self, tokens) -> np.ndarray:
    b = self.batch_size
    expected = f"[B, n] = [{b}, n]" + (" (or, as B == 1, [n] or a single token)" if b == 1 else "")
    try:
      t = np.asarray(tokens)
    except ValueError as err:  # e.g. ragged nested lists
      raise ValueError(f"tokens must be an integer array of shape {expected}; got {type(tokens).__name__} "
                       f"that is not one ({err})") from None
    # One meaning per shape whatever B is: the rows are always axis 0 of a 2-D
    # array. 1-D and 0-d inputs are conveniences of a single-row session only
    # (a prompt, a token); with B > 1 they would be ambiguous and are refused.
    if b == 1 and t.ndim in (0, 1):
      t = t.reshape(1, -1)
    if t.ndim != 2 or t.shape[0] != b:
      hint = (f"; a {t.ndim}-d input is accepted only by a session with batch_size == 1 (for one token per row "
              "pass tokens[:, None])" if t.ndim < 2 else "")
      raise ValueError(f"tokens must be an integer array of shape {expected}, got shape {t.shape}{hint}")
    if not np.issubdtype(t.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= self.vocab_size):
      raise ValueError(f"tokens must lie in [0, {self.vocab_size}) (vocab_size); got min {t.min()}, max {t.max()}")
    return t.astype(np.int32)

  @typed
  def feed(self, tokens: ArrayLike | Sequence, lengths: ArrayLike | Sequence | None = None
           ) -> Float[Array, "b n vocab"]:
    """Consumes tokens, sleeping whenever a window fills.

    Args:
      tokens: ``[B, n]`` (``b n``) int array, values in ``[0, vocab_size)``: row ``b``
        continues row ``b``'s stream by ``n`` tokens. Only a session with
        ``B == 1`` also takes ``[n]`` (a prompt) or a 0-d array / Python int
        (one token); with ``B > 1`` a 1-D array is refused, never read as one
        token per row (pass ``tokens[:, None]`` for that). Checked by the
        session itself (``ValueError``), so the annotation is any array-like.
      lengths: ``[B]`` ints, a ``per_row`` session only: row ``b`` consumes
        ``tokens[b, :lengths[b]]`` (prompts of different lengths, padded on
        the right with any valid id). Each row sleeps when its own window
        fills.

    Returns:
      ``[B, n, V]`` (``b n vocab``) float32 wake logits, one per fed token
      (predicting the token after it); zeros past a row's length.

    Raises:
      ValueError: for a bad shape (the message states the expected shapes),
        a non-integer dtype, an out-of-vocabulary token, or ``lengths`` that
        is not ``[B]`` ints in ``[0, n]`` or is given to a session without
        ``per_row``.
    """
    t = self._as_tokens(tokens)
    if lengths is not None or self.per_row:
      return self._feed_rows(t, self._as_lengths(lengths, t.shape[1]))
    L = self.sleep.window
    out, i = [], 0
    while i < t.shape[1]:
      if self._pos % L == 0 and t.shape[1] - i >= L:
        logits, self.state, passes = self._window(self._params, self.state, jnp.asarray(t[:, i:i + L]))
        self._advance(L)
        i += L
        self._counts["tokens"] += self.batch_size * L
        self._counts["wake_flops"] += self.batch_size * self._window_flops.wake
        self._count_sleep(passes, rerun=False)
        out.append(logits)
        self.state = self._begin(self._params, self.state)
        continue
      out.append(self._step(jnp.asarray(t[:, i]))[:, None])
      i += 1
    if not out:
      return jnp.zeros((self.batch_size, 0, self.vocab_size), jnp.float32)
    return jnp.concatenate(out, axis=1)

  def _as_lengths(self, lengths, n: int) -> np.ndarray:
    if not self.per_row:
      raise ValueError("lengths needs a session made with per_row=True (rows at their own positions)")
    if lengths is None:
      return np.full((self.batch_size,), n, np.int64)
    try:
      ln = np.asarray(lengths)
    except ValueError as err:
      raise ValueError(f"lengths must be [B] = [{self.batch_size}] integers ({err})") from None
    if ln.shape != (self.batch_size,) or not np.issubdtype(ln.dtype, np.integer) or ln.min() < 0 or ln.max() > n:
      raise ValueError(f"lengths must be [B] = [{self.batch_size}] integers in [0, {n}] (the tokens' width), "
                       f"got {ln.dtype} shape {ln.shape}" + (f", values {ln.tolist()[:8]}" if ln.size else ""))
    return ln.astype(np.int64)

  def _advance(self, n: int, rows: np.ndarray | None = None) -> None:
    # A new array, never in place: a fork shares the parent's attributes.
    self._rows_pos = self._rows_pos + (n if rows is None else rows.astype(np.int64))
    self._pos = int(self._rows_pos[0])

  def _feed_rows(self, t: np.ndarray, lengths: np.ndarray):
    """``feed`` of a per_row session: token by token, each row sleeping on its own windows."""
    out = []
    for i in range(t.shape[1]):
      active = i < lengths
      logits = self._step_rows(jnp.asarray(t[:, i]), active)
      out.append(jnp.where(jnp.asarray(active)[:, None], logits, 0.0)[:, None])
    if not out:
      return jnp.zeros((self.batch_size, 0, self.vocab_size), jnp.float32)
    return jnp.concatenate(out, axis=1)

  def _step_rows(self, token: jax.Array, active: np.ndarray) -> jax.Array:
    logits, self.state = self._decode_rows(self._params, self.state, token, jnp.asarray(active))
    self._advance(1, active)
    n = int(active.sum())
    self._counts["tokens"] += n
    self._counts["wake_flops"] += n * self._token_flops
    due = active & (self._rows_pos % self.sleep.window == 0)
    if due.any():
      self.state, passes = self._sleep_rows(self._params, self.state, jnp.asarray(due))
      self._count_sleep(passes, rerun=True, rows=int(due.sum()))
    return logits

  def _step(self, token: jax.Array) -> jax.Array:
    """One wake forward of ``[B]`` device tokens (already validated), sleeping
    and starting a new window when this token fills one. Returns ``[B, V]``."""
    if self.per_row:
      return self._step_rows(token, np.ones((self.batch_size,), bool))
    logits, self.state = self._decode(self._params, self.state, token)
    self._advance(1)
    self._counts["tokens"] += self.batch_size
    self._counts["wake_flops"] += self.batch_size * self._token_flops
    if self._pos % self.sleep.window == 0:
      self.state, passes = self._sleep(self._params, self.state)
      self.state = self._begin(self._params, self.state)
      self._count_sleep(passes, rerun=True)
    return logits

  @typed
  def generate(self, n_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, key: jax.Array | None = None) -> Int32[np.ndarray, "b n"]:
    """Decodes ``n_tokens`` tokens per row, each fed back into its row's stream.

    Greedy by default; with ``temperature > 0`` each token is drawn from the
    logits (optionally cut to the ``top_k`` most likely and / or to the
    ``top_p`` nucleus, see :func:`sample_tokens`), token ``i`` with
    ``fold_in(key, i)``: the same key gives the same tokens.

    Args:
      n_tokens: number of tokens to produce (``>= 0``). The first comes from
        the logits after the last consumed token, so feed a prompt first.
      temperature: ``0`` (greedy: the argmax) or a positive sampling
        temperature.
      top_k: keep the ``k >= 1`` most likely tokens (None: all).
      top_p: nucleus mass in ``(0, 1]`` (None: all).
      key: a PRNG key (``jax.random.key``); required when ``temperature > 0``.

    Returns:
      ``[B, n_tokens]`` (``b n``) int32 tokens.

    Raises:
      ValueError: if ``n_tokens < 0``, nothing has been fed yet (a row of a
        per_row session included), ``temperature < 0``, ``top_k < 1``,
        ``top_p`` outside ``(0, 1]``, or sampling without a ``key``.
    """
    if not isinstance(n_tokens, int) or n_tokens < 0:
      raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    if self._rows_pos.min() == 0 and n_tokens:
      raise ValueError("generate needs context: feed at least one token first" +
                       (" to every row" if self.per_row else ""))
    if not temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
      raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
      raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if temperature > 0 and key is None:
      raise ValueError("sampling (temperature > 0) needs a PRNG key: generate(..., key=jax.random.key(0))")
    # Tokens stay on the device (a drawn token is in the vocabulary by
    # construction, so feed's host-side validation is not needed): no host sync
    # per token, one transfer at the end.
    produced = []
    for i in range(n_tokens):
      token = _sample_jit(self.last_logits, None if temperature == 0 else jax.random.fold_in(key, i),
                          temperature=float(temperature), top_k=top_k, top_p=top_p)
      produced.append(token)
      self._step(token)
    if not produced:
      return np.zeros((self.batch_size, 0), np.int32)
    return np.asarray(jnp.stack(produced, axis=1))

  def fork(self) -> "SleepSession":
    """A new session continuing from this one's state (states are immutable
    pytrees, so nothing is copied); e.g. ask several queries of one slept
    context."""
    other = object.__new__(SleepSession)
    other.__dict__.update(self.__dict__)
    other._counts, other._pass_counts = dict(self._counts), list(self._pass_counts)  # counts carry on apart
    return other

  # -- persistence ---------------------------------------------------------------------------------
  def save(self, directory: str | os.PathLike) -> None:
    """Writes the session state to a fresh ``directory`` (orbax; absolute path)."""
    ckptr = ocp.StandardCheckpointer()
    leaves = jax.tree.leaves(self.state)
    ckptr.save(os.path.abspath(directory), {f"{i:04d}": x for i, x in enumerate(leaves)})
    ckptr.wait_until_finished()

  @classmethod
  def restore(cls, directory: str | os.PathLike, model, sleep: SleepConfig, batch_size: int = 1, *,
              per_row: bool = False) -> "SleepSession":
    """Rebuilds a session saved by :meth:`save` for the same model shape, ``sleep`` and ``per_row``.

    Raises:
      ValueError: if the checkpoint does not match this model / config.
    """
    template = _template(model, sleep, batch_size, per_row)
    leaves, treedef = jax.tree.flatten(template)
    target = {f"{i:04d}": jax.ShapeDtypeStruct(x.shape, x.dtype) for i, x in enumerate(leaves)}
    ckptr = ocp.StandardCheckpointer()
    path = os.path.abspath(directory)
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    saved = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in meta.items()}
    wanted = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in target.items()}
    if saved != wanted:
      diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
      raise ValueError(f"checkpoint at {directory} does not match this model / SleepConfig / batch_size "
                       f"(leaves {diff[:4]}: saved {[saved.get(k) for k in diff[:4]]}, "
                       f"expected {[wanted.get(k) for k in diff[:4]]})")
    restored = ckptr.restore(path, target)
    state = jax.tree.unflatten(treedef, [restored[f"{i:04d}"] for i in range(len(leaves))])
    return cls(model, sleep, batch_size, state=state, per_row=per_row)
