"""Algorithm 1: the forward pass with eviction every ``L`` tokens, and its loss.

Any model meeting the sleepable-model protocol (``sleep_jax.protocol``) runs
here; ``HybridLM`` takes its own path, which adds the prelude and coda below
and fuses the windows of an unslept forward.

A sequence of ``T`` tokens is cut into windows of ``L`` (the last may be
shorter). Each window:

1. runs one ordinary ("wake") pass: prelude, core, coda, output projection.
   Its logits are the window's logits: what the model predicts for these tokens
   online, before it sleeps on them;
2. if it is a consolidation window (its loss mask is zero across the whole
   batch), sleeps: the looped core runs ``N - 1`` more times, each pass
   consuming the previous pass's core output (or, with ``SleepConfig.replay``,
   the core's wake-pass input again) (so the core runs ``N`` times in
   all, pass 1 being the wake pass), then the coda runs once on the last core
   output, starting again from its window-start state (its wake-time update is
   discarded). The prelude runs once (its wake pass). With no prelude or coda
   this is exactly the paper's ``repeat N times: h, S <- Blocks(h, S)``;
3. evicts: only the fast weights ``S`` cross into the next window (hard), or
   ``S`` plus the window's keys/values from its last pass, of which attention
   keeps the ``L - 1`` most recent (sliding).

Design decisions (ours):

* Which windows sleep is decided per window: from ``sleep_schedule`` if given
  (a static tuple of bools, the cheapest under ``jit``), else from
  ``loss_mask`` when it is concrete, else with a ``lax.cond`` on
  ``all(loss_mask[:, window] == 0)`` so the loss works under ``jit`` with a
  traced mask (only the taken branch runs on CPU/GPU; under ``vmap`` both
  branches run). Without a loss mask every full window sleeps, as at serving
  time (:func:`serving_schedule`).
* ``N = 0`` means a consolidation window is not slept on at all: the fast
  weights revert to their window-start value (the window is forgotten).
* A sequence shorter than ``L`` has one partial window, which holds the loss
  tokens (training) or never fills (serving), so nothing sleeps: with
  ``N != 1`` and no ``sleep_schedule`` this is logged once per ``(L, T)`` as
  a warning (the launch paths refuse such a run outright).
* Adaptive sleep (``SleepConfig.halt_tol``): each example stops sleeping once
  a pass barely changes its core's fast weights, after at least one and at
  most ``max_n_passes - 1`` sleep passes (``sleep_consolidate``'s masked
  scan); :attr:`WindowedOutput.passes` reports what each example ran.
  With ``halt_measure`` ``"kl"`` or ``"argmax"`` the halting rule reads the
  window's predictions after each pass (coda and output projection on the
  pass's core output, the wake logits being pass 1's), carried in the scan.
* Input re-injection (``ModelConfig.sleep_reinject``): every sleep pass adds
  the learned, zero-initialised adapter's image of the window's embedding
  (the core's wake-pass input) or of the core's wake-pass output to its input
  (``HybridLM.inject_sleep_input``); the wake pass is unchanged. Another
  sleepable model opts in by defining ``inject_sleep_input(h, embedded,
  wake) -> h``.
* Short convolutions restart from zeros every pass and window; RoPE uses
  absolute positions ``0..T-1``.
* A call with ``fast_weights`` continues a sequence's memory but starts with an
  empty attention cache even in sliding mode (only ``S`` is carried).
* ``remat_windows`` checkpoints each window (memory O(1) in ``T / L`` for
  activations); ``remat_passes`` checkpoints each sleep pass.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax.array_typing import Array, Float, Int32, Logits, Mask, PyTree, Tokens, WindowPasses, typed
from sleep_jax.config import SleepConfig
from sleep_jax.consolidate import argmax_change, prediction_kl, sleep_consolidate
from sleep_jax.cost import model_sequence_cost, window_spans
from sleep_jax.fast_weights import FastWeights
from sleep_jax.model import HybridLM, check_token_ids
from sleep_jax.protocol import check_sleepable


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WindowedOutput:
  """Output of :func:`windowed_forward`.

  Attributes:
    logits: ``[B, T, V]`` (``b t vocab``) float32 wake-pass logits (None if
      not requested).
    fast_weights: fast weights after the last window (``FastWeights`` for
      ``HybridLM``; the model's own pytree for another sleepable model).
    passes: ``[B, n_windows]`` (``b w``) int32: the looped core's passes over
      each window that slept, wake pass included (the paper's ``N``, per
      example under adaptive sleep), 0 for windows that did not sleep.
  """
  logits: Logits | None
  fast_weights: FastWeights | PyTree
  passes: WindowPasses


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossAux:
  """Auxiliary outputs of :func:`windowed_loss`.

  Attributes:
    logits: ``[B, T, V]`` (``b t vocab``) float32.
    token_loss: ``[B, T]`` (``b t``) cross-entropy, 0 where the loss mask is 0.
    n_tokens: scalar, the sum of the loss mask.
    predictions: ``[B, T]`` (``b t``) int32 argmax of the logits.
    fast_weights: fast weights after the last window.
    passes: ``[B, n_windows]`` (``b w``) int32 passes per window (see
      :class:`WindowedOutput`).
    cost: per-example ``[B]`` compute of the forward
      (``cost.sequence_cost``: wake and sleep FLOPs, passes, windows slept,
      ``N``); the train step reports it as ``sleep/*`` metrics.
  """
  logits: Logits
  token_loss: Float[Array, "b t"]
  n_tokens: Float[Array, ""]
  predictions: Int32[Array, "b t"]
  fast_weights: FastWeights | PyTree
  passes: WindowPasses
  cost: dict


# -- schedule ---------------------------------------------------------------------------------------
def serving_schedule(length: int, window: int) -> tuple[bool, ...]:
  """Serving-time rule: every full window sleeps; a trailing partial one does not."""
  return tuple(stop - start == window for start, stop in window_spans(length, window))


def schedule_from_mask(loss_mask, window: int, depth=None) -> tuple[bool, ...]:
  """Static schedule from a concrete mask: a window sleeps iff its mask is all zero.

  With ``depth`` (``[B, T]``, a task batch's), only the scored positions count
  (``depth >= 0``): auxiliary targets (``tasks.example``) do not keep a window
  awake.
  """
  m = np.asarray(loss_mask)
  if depth is not None:
    m = np.where(np.asarray(depth) >= 0, m, 0)
  return tuple(bool(np.all(m[:, a:b] == 0)) for a, b in window_spans(m.shape[1], window))


class CheckedSchedule:
  """Wraps a batch iterator and checks every batch sleeps on the expected windows.

  A loss compiled with a static ``sleep_schedule`` (cheaper than deciding per
  window inside the step) would silently give a batch whose all-zero-mask
  windows differ the wrong passes, so such a batch is rejected here instead.
  With ``vocab_size`` it also checks each batch's token ids on the host (a
  numpy min / max): inside the jitted step they cannot be checked, and an
  out-of-range id gives NaN logits or reads another token's embedding.
  Checkpointable like the iterator it wraps (``get_state`` / ``set_state``).

  Args:
    it: an iterator of numpy batches with ``"loss_mask"`` ``[B, T]``.
    schedule: the static schedule (see :func:`schedule_from_mask`).
    window: ``L``.
    vocab_size: the model's vocabulary, or ``None`` not to check the tokens.

  Raises:
    ValueError: (from ``next``) a batch whose schedule differs, or whose
      ``tokens`` lie outside ``[0, vocab_size)``.
  """

  def __init__(self, it, schedule: tuple[bool, ...], window: int, vocab_size: int | None = None):
    self.it, self.schedule, self.window, self.vocab_size = it, schedule, window, vocab_size

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    if self.vocab_size is not None:
      check_token_ids(np.asarray(batch["tokens"]), self.vocab_size, name="a batch's tokens")
    got = schedule_from_mask(batch["loss_mask"], self.window, batch.get("depth"))
    if got != self.schedule:
      raise ValueError(f"a batch's consolidation windows {got} differ from the task's {self.schedule}; "
                       "this task needs a per-batch schedule")
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


_LOG = logging.getLogger(__name__)
_WARNED_SHORT: set[tuple[int, int]] = set()


def _warn_window_never_fills(window: int, length: int, n_passes: int, *, traced_mask: bool) -> None:
  """Logs once per ``(L, T)`` that no window of a sequence shorter than ``L`` sleeps.

  A warning, not an error: a short sequence is legitimate (a prompt, a
  stream's first tokens, an evaluation of a prefix) and runs as ``N = 1``.
  The launch paths, which know the task, refuse a run whose windows never
  sleep (``launch.experiment.build_run_spec``).
  """
  if (window, length) in _WARNED_SHORT:
    return
  _WARNED_SHORT.add((window, length))
  unless = " unless its loss mask is all zero" if traced_mask else ""
  _LOG.warning("windowed_forward: sleep.window L = %d is longer than the sequence (T = %d tokens), so no window "
               "fills and none sleeps%s: N = %d runs as N = 1", window, length, unless, n_passes)


# -- one window ---------------------------------------------------------------------------------------
def run_window(model, tokens, positions, fast_weights, prefixes, sleep: SleepConfig, consolidate, *,
               want_logits: bool = True):
  """Wake pass over one window, then (if ``consolidate``) sleep on it.

  Args:
    model: a sleepable model (``sleep_jax.protocol``), e.g. a ``HybridLM``.
    tokens: ``[B, W]`` int32, ``W <= L``.
    positions: ``[W]`` int32 absolute positions.
    fast_weights: states at the window start.
    prefixes: None (hard eviction), or the kept keys/values (sliding): for
      ``HybridLM`` one ``KVCache`` per attention block, for another model the
      previous window's ``kv``.
    sleep: the ``SleepConfig``.
    consolidate: Python bool, or a traced boolean scalar (``lax.cond``).
    want_logits: compute the wake-pass logits.

  Returns:
    ``(logits [B, W, V] or None, fast_weights, kvs, passes)`` with ``kvs``
    this window's keys/values from the last pass (``HybridLM``: a tuple of
    ``KVCache``, one per attention block), and ``passes`` ``[B]`` int32: the
    looped core's passes over the window counting the wake pass (the paper's
    ``N``; per example when adaptive) if it slept, else 0. ``N = 0`` and
    ``N = 1`` report 1 (the wake pass ran, nothing more).
  """
  if isinstance(model, HybridLM):
    return _run_hybrid_window(model, tokens, positions, fast_weights, prefixes, sleep, consolidate,
                              want_logits=want_logits)
  return _run_protocol_window(model, tokens, positions, fast_weights, prefixes, sleep, consolidate,
                              want_logits=want_logits)


def _grad_passes(sleep: SleepConfig):
  """``(grad_passes for sleep_consolidate, whether to cut the gradient before the first sleep pass)``.

  Truncation counts the wake pass as pass 1 of N: ``k = N - 1`` cuts it off.
  """
  grad_passes = sleep.grad_passes
  if grad_passes is not None and grad_passes >= sleep.max_n_passes:
    return None, False
  if grad_passes is not None and grad_passes == sleep.n_sleep_passes:
    return None, True
  return grad_passes, False


def _halts_on_predictions(sleep: SleepConfig) -> bool:
  """Adaptive sleep reads the window's predictions after every pass (``halt_measure`` ``"kl"`` / ``"argmax"``)."""
  return sleep.adaptive and sleep.halt_measure != "fast_weights"


def _halt_measure(sleep: SleepConfig):
  """``(halt_measure, halt_measure_on)`` for ``sleep_consolidate``; the carried predictions are ``h[2]``."""
  if not _halts_on_predictions(sleep):
    return None, "fast_weights"
  fn = prediction_kl if sleep.halt_measure == "kl" else argmax_change
  return (lambda old, new: fn(old[2], new[2])), "hidden"


def _run_protocol_window(model, tokens, positions, fast_weights, prefix, sleep: SleepConfig, consolidate, *,
                         want_logits: bool = True):
  """:func:`run_window` for any sleepable model: the looped core is the whole stack between embed and head."""
  L = sleep.window
  h = model.embed_tokens(tokens)
  h_core, fw_wake, kv_wake = model.core(h, fast_weights, positions, prefix, window=L)
  logits = model.unembed(h_core) if want_logits else None
  b = tokens.shape[0]
  n_max = sleep.max_n_passes

  def awake(m):
    return fw_wake, kv_wake, jnp.zeros((b,), jnp.int32)

  def asleep(m):
    if n_max == 0:  # forget the window (its wake pass has run)
      return fast_weights, kv_wake, jnp.ones((b,), jnp.int32)
    if n_max == 1:
      return fw_wake, kv_wake, jnp.ones((b,), jnp.int32)

    reads_outputs = _halts_on_predictions(sleep)
    inject = getattr(m, "inject_sleep_input", None)

    def core_pass(m, carry, fw):
      hh = carry[0]
      x = h if sleep.replay else hh
      if inject is not None:  # an opt-in of the protocol: input re-injection into every sleep pass
        x = m.inject_sleep_input(x, h, h_core)
      hh, fw, kv = m.core(x, fw, positions, prefix, window=L)
      return (hh, kv) + ((jax.nn.log_softmax(m.unembed(hh), axis=-1),) if reads_outputs else ()), fw

    carry, states = (h_core, kv_wake), fw_wake
    if reads_outputs:
      carry += (jax.nn.log_softmax(logits if logits is not None else m.unembed(h_core), axis=-1),)
    grad_passes, cut = _grad_passes(sleep)
    if cut:
      carry, states = jax.lax.stop_gradient((carry, states))
    # module=model: the model's RNG streams (dropout) and other state advance pass by pass.
    measure, on = _halt_measure(sleep)
    slept = sleep_consolidate(core_pass, carry, states, sleep.n_sleep_passes, remat=sleep.remat_passes,
                              grad_passes=grad_passes, return_hidden=True, halt_tol=sleep.halt_tol,
                              halt_measure=measure, halt_measure_on=on, return_passes=True, unroll=sleep.unroll,
                              module=m)
    return slept.fast_weights, slept.hidden[1], 1 + slept.passes

  if isinstance(consolidate, (bool, np.bool_)):
    fw_out, kv_out, passes = asleep(model) if consolidate else awake(model)
  elif n_max == 1:
    fw_out, kv_out, _ = awake(model)
    passes = jnp.full((b,), consolidate, jnp.int32)
  else:
    fw_out, kv_out, passes = _cond_with_module(model, consolidate, asleep, awake)
  return logits, fw_out, kv_out, passes


def _cond_with_module(model, pred, true_fn, false_fn):
  """``lax.cond`` whose branches may advance ``model``'s non-parameter state (RNG counts)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def branch(fn):
    def run(rest):
      m = nnx.merge(graphdef, params, rest)
      out = fn(m)
      return out, nnx.split(m, nnx.Param, ...)[2]
    return run

  out, rest = jax.lax.cond(pred, branch(true_fn), branch(false_fn), rest)
  if jax.tree.leaves(rest):
    nnx.update(model, rest)
  return out


def _run_hybrid_window(model, tokens, positions, fast_weights: FastWeights, prefixes, sleep: SleepConfig,
                       consolidate, *, want_logits: bool = True):
  """:func:`run_window` for ``HybridLM``: prelude, looped core, coda."""
  cfg = model.config
  n_blocks = len(cfg.block_types)
  c0, c1 = cfg.core_range
  L = sleep.window
  run = functools.partial(model.run_blocks, positions=positions, prefixes=prefixes, window=L)

  h = model.embed_tokens(tokens)
  h, fw, kv_pre = run(h, fast_weights, start=0, stop=c0)
  h_core, fw_core, kv_core = run(h, fw, start=c0, stop=c1)
  h_out, fw_wake, kv_coda = run(h_core, fw_core, start=c1, stop=n_blocks)
  logits = model.unembed(h_out) if want_logits else None
  core_slots = sorted({model.gdn_slots[i] for i in range(c0, c1)} - {-1})
  b = tokens.shape[0]
  n_max = sleep.max_n_passes  # N, or the adaptive cap

  def awake():
    return fw_wake, {**kv_core, **kv_coda}, jnp.zeros((b,), jnp.int32)

  def asleep():
    if n_max == 0:  # forget the window (its wake pass has run)
      return fast_weights, {**kv_core, **kv_coda}, jnp.ones((b,), jnp.int32)
    if n_max == 1:  # the wake pass was the only pass
      return fw_wake, {**kv_core, **kv_coda}, jnp.ones((b,), jnp.int32)
    n_sleep = sleep.n_sleep_passes  # N - 1: the wake pass is pass 1 of N

    reads_outputs = _halts_on_predictions(sleep)

    def predict(hh):
      # The window's next-token log-probabilities after a pass: the coda from its window-start states.
      h_o, _, _ = run(hh, fw_core, start=c1, stop=n_blocks)
      return jax.nn.log_softmax(model.unembed(h_o), axis=-1)

    # The carried hidden state holds the core's output and its keys/values
    # (batch-leading, as adaptive masking needs), and under an output-based
    # halting measure the window's predictions after the pass; the fast
    # weights are the core's GDN states.
    def core_pass(carry, states):
      hh = carry[0]
      # replay (a control): every pass re-reads the core's wake-pass input.
      x = model.inject_sleep_input(h if sleep.replay else hh, h, h_core)
      hh, fw_out, kv = run(x, fw_core.replace(states), start=c0, stop=c1)
      out = (hh, {i: (c.k, c.v) for i, c in kv.items()}) + ((predict(hh),) if reads_outputs else ())
      return out, {i: fw_out.states[i] for i in core_slots}

    states = {i: fw_core.states[i] for i in core_slots}
    carry = (h_core, {i: (c.k, c.v) for i, c in kv_core.items()})
    if reads_outputs:  # the wake pass's predictions are pass 1's
      carry += (jax.nn.log_softmax(logits, axis=-1) if logits is not None else predict(h_core),)
    # Truncation counts the wake pass as pass 1 of N: k = N - 1 cuts it off.
    grad_passes = sleep.grad_passes
    if grad_passes is not None and grad_passes >= n_max:
      grad_passes = None
    elif grad_passes is not None and grad_passes == n_sleep:
      carry, states = jax.lax.stop_gradient((carry, states))
      grad_passes = None
    # A core without GDN blocks has nothing to consolidate: halt at once (on the fast-weight measure).
    measure, on = _halt_measure(sleep)
    if measure is None and not core_slots:
      measure = lambda old, new: jnp.zeros((b,), jnp.float32)
    slept = sleep_consolidate(
        core_pass, carry, states, n_sleep, remat=sleep.remat_passes, grad_passes=grad_passes, return_hidden=True,
        halt_tol=sleep.halt_tol, halt_measure=measure, halt_measure_on=on, return_passes=True, unroll=sleep.unroll)
    states, (h_last, kv_last), n_run = slept.fast_weights, slept.hidden[:2], slept.passes
    kv_last = {i: dataclasses.replace(kv_core[i], k=k, v=v) for i, (k, v) in kv_last.items()}
    # The coda restarts from its window-start states (fw_core's coda slots).
    _, fw_out, kv_coda_n = run(h_last, fw_core.replace(states), start=c1, stop=n_blocks)
    return fw_out, {**kv_last, **kv_coda_n}, 1 + n_run

  if isinstance(consolidate, (bool, np.bool_)):
    fw_out, kvs, passes = asleep() if consolidate else awake()
  elif n_max == 1:  # sleeping changes nothing but the count: no lax.cond
    fw_out, kvs, _ = awake()
    passes = jnp.full((b,), consolidate, jnp.int32)
  else:
    fw_out, kvs, passes = jax.lax.cond(consolidate, asleep, awake)
  kvs = {**kv_pre, **kvs}
  return logits, fw_out, tuple(kvs[i] for i in range(len(kvs))), passes


# -- the whole sequence -------------------------------------------------------------------------------
def forward_unslept(model, tokens, fast_weights: FastWeights, sleep: SleepConfig, *, want_logits: bool = True):
  """Algorithm 1 with no sleep pass, as one pass over the whole sequence.

  Without sleep a window's only pass is its wake pass, so the window loop is
  one ordinary forward in which eviction is a mask: under hard eviction
  attention sees only the query's own window, under sliding eviction the
  ``L - 1`` keys before it (the kept prefix), the GDN blocks' short
  convolutions restart at every window start, and the fast weights simply run
  on through the sequence. One pass over ``T`` tokens instead of ``T / L``
  sequential window calls: the same FLOPs, far fewer (and larger) kernels.

  Args:
    model: a ``HybridLM``.
    tokens: ``[B, T]`` int32.
    fast_weights: states at the sequence start.
    sleep: the ``SleepConfig`` (its window and eviction).
    want_logits: compute the logits.

  Returns:
    ``(logits [B, T, V] or None, fast_weights after the last token)``.
  """
  positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
  h, fast_weights, _ = model.run_blocks(model.embed_tokens(tokens.astype(jnp.int32)), fast_weights, positions,
                                        window=sleep.window, windows=sleep.eviction)
  return (model.unembed(h) if want_logits else None), fast_weights


def _validate(model, tokens, loss_mask, sleep, sleep_schedule, return_logits):
  check_sleepable(model)
  if not isinstance(sleep, SleepConfig):
    raise ValueError(f"sleep must be a SleepConfig, got {type(sleep).__name__}")
  if return_logits not in ("all", "none"):
    raise ValueError(f"return_logits must be 'all' or 'none', got {return_logits!r}")
  if getattr(tokens, "ndim", None) != 2:
    raise ValueError(f"tokens must be a [B, T] integer array, got shape {getattr(tokens, 'shape', None)}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
  if tokens.shape[1] < 1:
    raise ValueError("tokens must hold at least one position (T >= 1)")
  if loss_mask is not None and tuple(loss_mask.shape) != tuple(tokens.shape):
    raise ValueError(f"loss_mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(loss_mask.shape)}")
  check_token_ids(tokens, model.vocab_size)
  spans = window_spans(tokens.shape[1], sleep.window)
  n_windows = len(spans)
  if sleep_schedule is not None:
    sleep_schedule = tuple(sleep_schedule)
    if len(sleep_schedule) != n_windows:
      raise ValueError(f"sleep_schedule must have one entry per window ({n_windows}), got {len(sleep_schedule)}")
  elif loss_mask is not None and _is_concrete(loss_mask):
    # The batch sleeps on one schedule: a window sleeps iff its mask is zero in
    # every row. If rows disagree, a row whose window is all zero would silently
    # not sleep on it (its memory would differ from the same example alone).
    m = np.asarray(loss_mask)
    per_row = np.stack([np.all(m[:, a:z] == 0, axis=1) for a, z in spans], axis=1)  # [B, n_windows]
    mixed = np.nonzero(per_row.any(axis=0) & ~per_row.all(axis=0))[0]
    if mixed.size:
      w = int(mixed[0])
      a, z = spans[w]
      raise ValueError(
          f"loss_mask puts rows on different sleep schedules: window {w} (tokens {a}:{z}) is all zero (would "
          f"sleep) in rows {np.nonzero(per_row[:, w])[0].tolist()[:8]} but holds loss tokens in rows "
          f"{np.nonzero(~per_row[:, w])[0].tolist()[:8]}, and one batch sleeps on one schedule "
          f"({len(mixed)} such window(s)). Pass sleep_schedule= explicitly (one bool per window) or batch "
          "examples whose loss tokens lie in the same windows")


@typed
def windowed_forward(model, tokens: Tokens, loss_mask: Mask | None, sleep: SleepConfig, *,
                     fast_weights: FastWeights | PyTree | None = None, return_logits: str = "all",
                     sleep_schedule: tuple[bool, ...] | None = None) -> WindowedOutput:
  """Runs Algorithm 1 over a batch (see the module docstring).

  Shapes use the axis legend of ``sleep_jax.array_typing``; the annotations
  (the output's too: ``logits`` ``b t vocab``, ``passes`` ``b w``, the fast
  weights' ``b``) are checked at run time when
  ``array_typing.enable_runtime_checks()`` is on.

  Args:
    model: a sleepable model (``sleep_jax.protocol``), e.g. a ``HybridLM``.
      Its RNG streams (dropout) and other non-parameter variables advance
      window by window and pass by pass, and are written back.
    tokens: ``[B, T]`` (``b t``) int token ids in ``[0, vocab_size)``,
      checked when concrete. Under ``jit`` (traced tokens) they cannot be
      checked: an id ``>= vocab_size`` gives NaN logits and a negative one
      silently reads another token's embedding (``model.check_token_ids``).
    loss_mask: ``[B, T]`` (``b t``) float mask (1 on answer targets) or None. A window
      whose mask is zero across the whole batch is a consolidation window.
      A concrete mask must agree between rows on which windows are all zero
      (else pass ``sleep_schedule``); a traced one is not checked. The mask
      alone cannot tell a task's auxiliary targets (``tasks.example``) from
      its answers: for such a batch pass ``sleep_schedule`` (e.g.
      ``schedule_from_mask(mask, L, depth)``), as the launch paths do.
    sleep: the ``SleepConfig`` (window ``L``, passes ``N``, eviction mode).
      With ``T < L`` no window fills and nothing sleeps; unless
      ``sleep_schedule`` says otherwise, that is logged once as a warning.
    fast_weights: states at the sequence start (None: zeros).
    return_logits: "all" (``[B, T, V]`` float32) or "none".
    sleep_schedule: optional static tuple, one bool per window (True: sleep);
      overrides the mask.

  Returns:
    ``WindowedOutput(logits, fast_weights)``.

  Raises:
    ValueError: on a bad argument (a model that does not meet the protocol,
      naming the missing method; tokens outside the vocabulary when concrete,
      a mask of the wrong shape, a schedule of the wrong length, a concrete
      mask whose rows would sleep on different windows without a
      ``sleep_schedule``, ...).
  """
  _validate(model, tokens, loss_mask, sleep, sleep_schedule, return_logits)
  b, t = tokens.shape
  L = sleep.window
  spans = window_spans(t, L)
  if sleep_schedule is not None:
    schedule = tuple(bool(s) for s in sleep_schedule)
  elif loss_mask is None:
    schedule = serving_schedule(t, L)
  elif _is_concrete(loss_mask):
    schedule = schedule_from_mask(loss_mask, L)
  else:
    schedule = None
  if t < L and sleep.max_n_passes != 1 and sleep_schedule is None and not any(schedule or ()):
    _warn_window_never_fills(L, t, sleep.max_n_passes, traced_mask=schedule is None)
  if schedule is None:
    preds = [jnp.all(loss_mask[:, a:z] == 0) for a, z in spans]
  else:
    preds = [None] * len(spans)
  if fast_weights is None:
    fast_weights = model.init_fast_weights(b)
  want_logits = return_logits == "all"
  n_max = sleep.max_n_passes
  hybrid = isinstance(model, HybridLM)
  if hybrid and sleep.fuse_unslept and (n_max == 1 or (schedule is not None and not any(schedule))):
    # A window that "sleeps" at N = 1 keeps its wake pass's fast weights: reported as 1 pass.
    if schedule is not None:
      slept = jnp.asarray([[n_max == 1 and s for s in schedule]], jnp.int32)
    else:
      slept = jnp.stack(preds).astype(jnp.int32)[None]
    logits, fast_weights = forward_unslept(model, tokens, fast_weights, sleep, want_logits=want_logits)
    return WindowedOutput(logits=logits, fast_weights=fast_weights, passes=jnp.broadcast_to(slept, (b, len(spans))))
  # Parameters are closed over; the other variables (a model's RNG counts) are carried from window to window.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  prefixes = None
  if sleep.eviction == "sliding":
    prefixes = model.init_kv(b, L)

  def window_fn(width, consolidate_static, params, carry, xs):
    fw, prefixes, rest = carry
    start, tokens_w, pred = xs
    m = nnx.merge(graphdef, params, rest)
    positions = start + jnp.arange(width, dtype=jnp.int32)
    consolidate = pred if consolidate_static is None else consolidate_static
    lg, fw, kvs, passes = run_window(m, tokens_w, positions, fw, prefixes, sleep, consolidate,
                                     want_logits=want_logits)
    if sleep.eviction == "sliding":
      prefixes = kvs
    return (fw, prefixes, nnx.split(m, nnx.Param, ...)[2]), (lg, passes)

  # Consecutive windows of the same width and static schedule share one scanned
  # (so once-compiled) window body.
  groups = []
  for w, (a, z) in enumerate(spans):
    key = (z - a, None if schedule is None else schedule[w])
    if groups and groups[-1][0] == key:
      groups[-1][1].append(w)
    else:
      groups.append((key, [w]))

  carry, logits, passes = (fast_weights, prefixes, rest), [], []
  for (width, static), ws in groups:
    fn = functools.partial(window_fn, width, static, params)
    if sleep.remat_windows:
      fn = jax.checkpoint(fn)
    starts = jnp.asarray([spans[w][0] for w in ws], jnp.int32)
    toks = jnp.stack([tokens[:, spans[w][0]:spans[w][1]].astype(jnp.int32) for w in ws])
    pred = None if static is not None else jnp.stack([preds[w] for w in ws])
    if len(ws) == 1:
      carry, (lg, n_run) = fn(carry, (starts[0], toks[0], None if pred is None else pred[0]))
      lg, n_run = None if lg is None else lg[None], n_run[None]
    else:
      carry, (lg, n_run) = jax.lax.scan(fn, carry, (starts, toks, pred), unroll=len(ws) if sleep.unroll else 1)
    passes.append(n_run)
    if want_logits:
      logits.append(jnp.moveaxis(lg, 0, 1).reshape(b, len(ws) * width, -1))
  out = jnp.concatenate(logits, axis=1) if want_logits else None
  if jax.tree.leaves(carry[2]):
    nnx.update(model, carry[2])
  return WindowedOutput(logits=out, fast_weights=carry[0], passes=jnp.concatenate(passes, axis=0).T)


@typed
def windowed_loss(model, batch: dict, sleep: SleepConfig, *,
                  sleep_schedule: tuple[bool, ...] | None = None) -> tuple[Float[Array, ""], LossAux]:
  """Mean masked cross-entropy of :func:`windowed_forward`.

  Args:
    model: a sleepable model (``sleep_jax.protocol``), e.g. a ``HybridLM``.
    batch: dict with ``tokens`` ``[B, T]`` (``b t``) int, ``targets``
      ``[B, T]`` int and ``loss_mask`` ``[B, T]`` float (other keys are
      ignored). With runtime checks on, the ``LossAux`` fields must agree on
      one ``b`` and ``t``.
    sleep: the ``SleepConfig``.
    sleep_schedule: optional static per-window schedule (see
      :func:`windowed_forward`).

  Returns:
    ``(loss, LossAux)``; ``loss`` is ``sum(token_loss) / max(sum(mask), 1)``.

  Raises:
    ValueError: if a key is missing or ``targets`` has the wrong shape.
  """
  for key in ("tokens", "targets", "loss_mask"):
    if key not in batch:
      raise ValueError(f"batch is missing {key!r}; it has {sorted(batch)}")
  tokens, targets, mask = batch["tokens"], batch["targets"], batch["loss_mask"]
  if tuple(targets.shape) != tuple(tokens.shape):
    raise ValueError(f"batch['targets'] must have the tokens' shape {tuple(tokens.shape)}, got {tuple(targets.shape)}")
  out = windowed_forward(model, tokens, mask, sleep, sleep_schedule=sleep_schedule)
  logits = out.logits
  mask = jnp.asarray(mask, jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, jnp.asarray(targets, jnp.int32)[..., None], axis=-1)[..., 0]
  token_loss = (logz - picked) * mask
  n_tokens = jnp.sum(mask)
  loss = jnp.sum(token_loss) / jnp.maximum(n_tokens, 1.0)
  aux = LossAux(logits=logits, token_loss=token_loss, n_tokens=n_tokens,
                predictions=jnp.argmax(logits, axis=-1).astype(jnp.int32), fast_weights=out.fast_weights,
                passes=out.passes, cost=model_sequence_cost(model, sleep, tokens.shape[1], out.passes))
  return loss, aux


@dataclasses.dataclass(frozen=True)
class WindowedLoss:
  """:func:`windowed_loss` with its configuration bound: the trainer's ``loss_fn``.

  Calling it evaluates at ``sleep.n_passes`` (evaluation never draws). With
  a drawn ``N`` (``sleep.n_passes_train`` or ``sleep.n_passes_train_mean``)
  or a detached prefix (``sleep.detach_passes_train``), :meth:`for_step` gives
  one training step's loss: the same loss at the ``N`` (and prefix) drawn for
  ``(seed, step)``. The value is
  hashable and compares by value, so the trainer keeps one compiled step per
  distinct ``N`` (``sleep_jax.train.loop``).

  Attributes:
    sleep: the ``SleepConfig``.
    sleep_schedule: optional static per-window schedule (see
      :func:`windowed_forward`).
  """
  sleep: SleepConfig
  sleep_schedule: tuple[bool, ...] | None = None

  def __post_init__(self):
    if not isinstance(self.sleep, SleepConfig):
      raise ValueError(f"sleep must be a SleepConfig, got {type(self.sleep).__name__}")
    if self.sleep_schedule is not None:
      object.__setattr__(self, "sleep_schedule", tuple(bool(s) for s in self.sleep_schedule))

  def __call__(self, model, batch: dict) -> tuple[jax.Array, LossAux]:
    return windowed_loss(model, batch, self.sleep, sleep_schedule=self.sleep_schedule)

  def for_step(self, step: int, seed: int) -> "WindowedLoss":
    """The loss of training step ``step`` (``self`` when neither ``N`` nor a detached prefix is drawn):
    ``SleepConfig.for_train_step``."""
    if not self.sleep.varies_per_step:
      return self
    return dataclasses.replace(self, sleep=self.sleep.for_train_step(seed, step))
