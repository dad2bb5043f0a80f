"""``sleep_consolidate``: offline recurrent passes over a window.

The transform is model-agnostic: ``blocks_fn(h, fast_weights) -> (h,
fast_weights)`` may be a bound NNX method, a function that merges a
``(graphdef, state)`` pair, a Linen ``apply`` or a plain function; the fast
weights may be any pytree. Pass ``n + 1`` consumes pass ``n``'s hidden states
(no re-injection of the embedding) and continues from its fast weights. The
passes are a ``jax.lax.scan`` (one trace of ``blocks_fn`` whatever their
number), so the transform composes with ``jit``, ``vmap``, ``grad`` and
``shard_map``.

Counting passes. ``SleepConfig.n_passes`` is the paper's ``N``: the looped
core's passes over a sleeping window *including* the wake pass (``N = 1`` is
the plain model). This function counts the passes it runs, from the hidden
states it is given: ``n_sleep_passes``. Started from the embedded window, as in
the paper's ``repeat N times: h, S <- Blocks(h, S)``, that is ``N``; started
from a wake pass's output, as ``windowed.run_window`` does, it is ``N - 1``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

BlocksFn = Callable[[Any, Any], tuple[Any, Any]]


def _run_passes(fn, carry, n: int):
  if n == 0:
    return carry

  def body(c, _):
    return fn(*c), None

  carry, _ = jax.lax.scan(body, carry, None, length=n)
  return carry


def sleep_consolidate(blocks_fn: BlocksFn, h, fast_weights, n_sleep_passes: int, *, remat: bool = True,
                      grad_passes: int | None = None, return_hidden: bool = False):
  """Runs ``blocks_fn`` ``n_sleep_passes`` times, threading hidden states and fast weights.

  Args:
    blocks_fn: ``(h, fast_weights) -> (h, fast_weights)``; outputs must have the
      inputs' shapes and dtypes.
    h: hidden states entering the first pass (any pytree, usually ``[B, T, D]``).
    fast_weights: fast-weight pytree at the start of the first pass.
    n_sleep_passes: passes to run from ``h``, ``>= 0`` (a Python int: it is
      the scan length); ``0`` returns the inputs unchanged. From embedded
      tokens this is the paper's ``N``; after a wake pass, ``N - 1`` (see the
      module docstring).
    remat: checkpoint each pass, so activation memory does not grow with ``N``
      (each pass's internals are recomputed in the backward pass).
    grad_passes: ``k``: backpropagate only through the last ``k`` passes
      (truncated backprop; ``stop_gradient`` on ``(h, fast_weights)`` before
      them, which also cuts the gradient reaching earlier windows through the
      fast weights). ``None`` or ``k >= n_sleep_passes``: through every pass.
    return_hidden: also return the last pass's hidden states.

  Returns:
    ``fast_weights`` after the last pass, or ``(fast_weights, h)`` when
    ``return_hidden``.

  Raises:
    ValueError: if ``n_sleep_passes`` is not an integer >= 0, ``grad_passes`` is not
      None or an integer >= 1, or ``blocks_fn`` is not callable.
  """
  if not callable(blocks_fn):
    raise ValueError(f"blocks_fn must be callable, got {type(blocks_fn).__name__}")
  if isinstance(n_sleep_passes, bool) or not isinstance(n_sleep_passes, int) or n_sleep_passes < 0:
    raise ValueError(f"n_sleep_passes must be a Python integer >= 0, got {n_sleep_passes!r}")
  if grad_passes is not None and (isinstance(grad_passes, bool) or not isinstance(grad_passes, int)
                                  or grad_passes < 1):
    raise ValueError(f"grad_passes must be None or an integer >= 1, got {grad_passes!r}")
  fn = jax.checkpoint(blocks_fn) if remat else blocks_fn
  carry = (h, fast_weights)
  if grad_passes is None or grad_passes >= n_sleep_passes:
    carry = _run_passes(fn, carry, n_sleep_passes)
  else:
    carry = _run_passes(fn, carry, n_sleep_passes - grad_passes)
    carry = jax.lax.stop_gradient(carry)
    carry = _run_passes(fn, carry, grad_passes)
  h, fast_weights = carry
  return (fast_weights, h) if return_hidden else fast_weights
