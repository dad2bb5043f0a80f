"""``sleep_consolidate``: offline recurrent passes over a window.

The transform is model-agnostic: ``blocks_fn(h, fast_weights) -> (h,
fast_weights)`` may be a bound NNX method, a function that merges a
``(graphdef, state)`` pair, a Linen ``apply`` or a plain function; the fast
weights may be any pytree. It returns a :class:`SleepResult` (fast weights,
plus the last hidden states and the passes run when asked).

NNX modules with state. A bound method of an ``nnx.Module`` (or
``module=``) is run by explicit split and merge: the module's parameters are
closed over, and its other variables (RNG stream counts of ``nnx.Dropout``,
batch statistics, ...) travel in the scan's carry and through the
checkpointed pass, and are written back into the module afterwards. A plain
``lax.scan`` over the bound method would mutate the module's RNG count from
inside the scan's trace, which NNX refuses (``TraceContextError: Cannot
mutate RngCount from a different trace level``). Pass ``n + 1`` consumes pass ``n``'s hidden states
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

Adaptive sleep (``halt_tol``). Each example stops once a pass changes its fast
weights by less than ``halt_tol`` relatively (:func:`relative_change`), or
another measure of one pass's change (``halt_measure``; on the hidden states
with ``halt_measure_on="hidden"``, e.g. the change of the predictions they
carry: :func:`prediction_kl`, :func:`argmax_change`), or after
``n_sleep_passes``. It is a fixed-length scan whose carry holds a
per-example ``active`` mask: a halted example's hidden states and fast weights
are carried through unchanged (``jnp.where``), and a pass whose batch has
halted altogether is skipped with ``lax.cond``. Why this and not a
``while_loop``: the scan has a static trip count, so it is reverse-mode
differentiable (a ``while_loop`` is not) and one compiled program serves every
halting pattern; examples halt independently inside one batch (a
``while_loop`` would run until the slowest example for all of them anyway);
and it composes with ``jit``, ``vmap`` (where the ``cond`` becomes a select),
``grad``, ``remat`` and ``shard_map`` like the fixed-``N`` scan. The halting
decision itself carries no gradient (it is a comparison).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.array_typing import ArrayLike, PyTree, typed

BlocksFn = Callable[[Any, Any], tuple[Any, Any]]
HaltMeasure = Callable[[Any, Any], jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SleepResult:
  """What :func:`sleep_consolidate` returns (a pytree).

  Attributes:
    fast_weights: the fast weights after the last pass (the pytree given).
    hidden: the hidden states after the last pass when ``return_hidden``,
      else None.
    passes: ``[B]`` (``b``) int32 passes each example ran when
      ``return_passes``, else None.
  """
  fast_weights: Any
  hidden: Any = None
  passes: Any = None


def _split_bound(blocks_fn, module):
  """``(function of (module, h, fw), module)`` for a bound NNX method, a partial of one, or ``module=``."""
  if module is not None:
    if not isinstance(module, nnx.Module):
      raise ValueError(f"module must be an nnx.Module, got {type(module).__name__}")
    return blocks_fn, module
  if inspect.ismethod(blocks_fn) and isinstance(blocks_fn.__self__, nnx.Module):
    return blocks_fn.__func__, blocks_fn.__self__
  if isinstance(blocks_fn, functools.partial) and inspect.ismethod(blocks_fn.func) \
      and isinstance(blocks_fn.func.__self__, nnx.Module):
    bound = blocks_fn.func
    return functools.partial(bound.__func__, *blocks_fn.args, **blocks_fn.keywords), bound.__self__
  return None, None


def _lift(fn, module):
  """A pure ``(h, fw, rest) -> (h, fw, rest)`` over ``module``'s non-parameter state ``rest``.

  Parameters are closed over (their gradients flow as for any closed-over
  array); every other variable (RNG counts, statistics) is an explicit input
  and output, so it can cross ``lax.scan`` and ``jax.checkpoint``.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def pure(h, fw, rest):
    m = nnx.merge(graphdef, params, rest)
    h, fw = _check_pair(fn(m, h, fw))
    return h, fw, nnx.split(m, nnx.Param, ...)[2]

  return pure, rest


def _check_pair(out):
  if not isinstance(out, (tuple, list)) or len(out) != 2:
    raise ValueError(f"blocks_fn must return a pair (h, fast_weights), got {type(out).__name__}"
                     f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}")
  return out


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _describe(tree) -> str:
  parts = [f"{jax.tree_util.keystr(path) or '(root)'}: {tuple(x.shape)} {x.dtype}"
           for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  shown = ", ".join(parts[:4]) + (f", ... ({len(parts)} leaves)" if len(parts) > 4 else "")
  return shown or "no leaves"


def _check_blocks_fn(fn, h, fast_weights, extra) -> None:
  """Traces ``fn`` abstractly once and checks it returns ``(h, fast_weights)`` as it was given them.

  ``lax.scan`` would refuse a changed carry too, but in terms of its own
  carry ("carry component c[0]"), not the caller's ``h`` / ``fast_weights``.
  """
  ins = (_abstract(h), _abstract(fast_weights))
  out = jax.eval_shape(lambda h, fw, extra: fn(h, fw, extra)[:2], *ins, extra)
  for name, a, b in (("h", ins[0], out[0]), ("fast_weights", ins[1], out[1])):
    same_tree = jax.tree.structure(a) == jax.tree.structure(b)
    if not same_tree or any(x.shape != y.shape or x.dtype != y.dtype
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))):
      what = "structure" if not same_tree else "shapes/dtypes"
      raise ValueError(f"blocks_fn changed the {what} of {name}: it got {_describe(a)} and returned "
                       f"{_describe(b)}; each pass must return {name} as it was given it")


def _run_passes(fn, carry, n: int, unroll: bool = False):
  """``n`` passes over ``carry = (h, fast_weights, extra)``."""
  if n == 0:
    return carry

  def body(c, _):
    return tuple(fn(*c)), None

  carry, _ = jax.lax.scan(body, carry, None, length=n, unroll=n if unroll else 1)
  return carry


def relative_change(old, new) -> jax.Array:
  """Per-example ``||new - old|| / ||old||`` over every leaf of two pytrees.

  Args:
    old: pytree whose leaves share a leading batch axis ``B``.
    new: pytree of the same structure and shapes.

  Returns:
    ``[B]`` float32. Where ``||old|| = 0`` it is ``||new||`` (absolute).
  """
  olds, news = jax.tree.leaves(old), jax.tree.leaves(new)
  b = olds[0].shape[0]
  sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(b, -1), axis=1)
  diff = sum(sq(n - o) for o, n in zip(olds, news))
  norm = sum(sq(o) for o in olds)
  return jnp.sqrt(diff) / jnp.where(norm > 0, jnp.sqrt(norm), 1.0)


def _leading_axis(tree, b: int, what: str) -> None:
  for x in jax.tree.leaves(tree):
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] != b:
      raise ValueError(f"adaptive sleep (halt_tol) needs the batch as the leading axis of every leaf of {what}; "
                       f"got a leaf of shape {jnp.shape(x)} with batch {b}")


def _select(active, new, old):
  def pick(n, o):
    return jnp.where(active.reshape(active.shape + (1,) * (jnp.ndim(n) - 1)), n, o)
  return jax.tree.map(pick, new, old)


def prediction_kl(old_logp, new_logp) -> jax.Array:
  """Per-example mean over tokens of ``KL(p_new || p_old)`` between two passes' next-token distributions.

  Args:
    old_logp: ``[B, T, V]`` log-probabilities after the earlier pass.
    new_logp: the same after the later pass.

  Returns:
    ``[B]`` float32, ``>= 0`` (rounding below zero is clamped, so a tolerance
    of 0 never halts).
  """
  old_logp, new_logp = old_logp.astype(jnp.float32), new_logp.astype(jnp.float32)
  kl = jnp.sum(jnp.exp(new_logp) * (new_logp - old_logp), axis=-1)
  return jnp.maximum(jnp.mean(kl.reshape(kl.shape[0], -1), axis=1), 0.0)


def argmax_change(old_logp, new_logp) -> jax.Array:
  """Per-example fraction of tokens whose argmax prediction differs between two passes (``[B]`` float32)."""
  changed = jnp.argmax(old_logp, axis=-1) != jnp.argmax(new_logp, axis=-1)
  return jnp.mean(changed.reshape(changed.shape[0], -1).astype(jnp.float32), axis=1)


def _run_adaptive(fn, carry, n: int, halt_tol: float, measure: HaltMeasure, on_hidden: bool = False):
  """``n`` masked passes over ``carry = (h, fast_weights, extra, active [B], passes [B])``.

  ``extra`` (a module's RNG counts and statistics) advances with every pass
  that runs; it has no batch axis to mask.
  """
  if n == 0:
    return carry

  def one_pass(c):
    h, fw, extra, active, passes = c
    h_new, fw_new, extra = fn(h, fw, extra)
    before, after = ((h, h_new) if on_hidden else (fw, fw_new))
    change = measure(jax.lax.stop_gradient(before), jax.lax.stop_gradient(after))
    h, fw = _select(active, (h_new, fw_new), (h, fw))
    passes = passes + active.astype(jnp.int32)
    # `change < tol` is False for a NaN change: such an example keeps sleeping.
    return h, fw, extra, jnp.logical_and(active, jnp.logical_not(change < halt_tol)), passes

  def body(c, _):
    return jax.lax.cond(jnp.any(c[3]), one_pass, lambda c: c, c), None

  carry, _ = jax.lax.scan(body, carry, None, length=n)
  return carry


@typed
def sleep_consolidate(blocks_fn: BlocksFn, h: PyTree[ArrayLike], fast_weights: PyTree[ArrayLike],
                      n_sleep_passes: int, *, remat: bool = True, grad_passes: int | None = None,
                      return_hidden: bool = False, halt_tol: float | None = None,
                      halt_measure: HaltMeasure | None = None, halt_measure_on: str = "fast_weights",
                      return_passes: bool = False, unroll: bool = False,
                      module: nnx.Module | None = None) -> SleepResult:
  """Runs ``blocks_fn`` ``n_sleep_passes`` times, threading hidden states and fast weights.

  Model-agnostic, so ``h`` and ``fast_weights`` are annotated as any pytrees
  of arrays; in the model they are ``[B, T, D]`` hidden states (``b t d``,
  with the attention keys and values of the pass) and ``FastWeights``.

  Example::

      out = sleep_consolidate(layer.sleep_pass, h, fw, 3, return_hidden=True)
      out.fast_weights, out.hidden

  Args:
    blocks_fn: ``(h, fast_weights) -> (h, fast_weights)``; outputs must have the
      inputs' shapes and dtypes. A bound method of an ``nnx.Module`` (or a
      ``functools.partial`` of one) may hold RNG streams (``nnx.Dropout``) or
      other non-parameter state: it is threaded through the passes and
      written back into the module (see the module docstring).
    h: hidden states entering the first pass (any pytree, usually ``[B, T, D]``,
      ``b t d``).
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
    return_hidden: fill :attr:`SleepResult.hidden` with the last pass's hidden
      states.
    halt_tol: adaptive sleep (``None``: every pass runs). An example halts
      after the first pass whose ``halt_measure`` is below ``halt_tol``, so
      each runs between 1 and ``n_sleep_passes`` passes; ``0`` never halts
      (the fixed-length numbers exactly); ``inf`` halts after one pass. Every
      leaf of ``h`` and ``fast_weights`` needs the batch as its leading axis.
      With ``grad_passes`` the truncation point is the scan's (before its last
      ``k`` positions), whether or not an example has halted by then.
    halt_measure: ``(fast_weights_before, fast_weights_after) -> [B]`` change
      of one pass (default :func:`relative_change` over every leaf); with
      ``halt_measure_on="hidden"``, ``(h_before, h_after) -> [B]`` instead.
    halt_measure_on: ``"fast_weights"`` or ``"hidden"``: what
      ``halt_measure`` compares across a pass. ``"hidden"`` lets a halting
      rule read the pass's outputs, e.g. the predictions carried in ``h``
      (:func:`prediction_kl`, :func:`argmax_change`).
    return_passes: fill :attr:`SleepResult.passes` with the ``[B]`` (``b``)
      int32 passes each example ran.
    unroll: unroll the fixed-length scan over passes (one copy of
      ``blocks_fn`` per pass in the program: compile time grows with ``N``;
      the loop's per-iteration carry copies and fusion barriers go away).
      Adaptive sleep's masked scan is not unrolled.
    module: an ``nnx.Module`` to call ``blocks_fn(module, h, fast_weights)``
      on, with its non-parameter state threaded as for a bound method.

  Returns:
    :class:`SleepResult` ``(fast_weights, hidden, passes)``; ``hidden`` and
    ``passes`` are None unless asked for.

  Raises:
    ValueError: if ``n_sleep_passes`` is not an integer >= 0, ``grad_passes``
      is not None or an integer >= 1, ``halt_tol`` is negative, ``blocks_fn``
      is not callable, ``blocks_fn`` returns ``h`` or ``fast_weights`` of
      another structure, shape or dtype than it was given (checked with
      ``jax.eval_shape`` before the scan, naming the argument and shapes),
      or (adaptive) a leaf lacks the leading batch axis.
  """
  if not callable(blocks_fn):
    raise ValueError(f"blocks_fn must be callable, got {type(blocks_fn).__name__}")
  if isinstance(n_sleep_passes, bool) or not isinstance(n_sleep_passes, int) or n_sleep_passes < 0:
    raise ValueError(f"n_sleep_passes must be a Python integer >= 0, got {n_sleep_passes!r}")
  if grad_passes is not None and (isinstance(grad_passes, bool) or not isinstance(grad_passes, int)
                                  or grad_passes < 1):
    raise ValueError(f"grad_passes must be None or an integer >= 1, got {grad_passes!r}")
  if halt_tol is not None and not halt_tol >= 0:
    raise ValueError(f"halt_tol must be None or >= 0, got {halt_tol!r}")
  if halt_measure_on not in ("fast_weights", "hidden"):
    raise ValueError(f"halt_measure_on must be 'fast_weights' or 'hidden', got {halt_measure_on!r}")
  fn_of_module, owner = _split_bound(blocks_fn, module)
  if owner is not None:
    pure, extra = _lift(fn_of_module, owner)
  else:
    pure = lambda h, fw, extra: (*_check_pair(blocks_fn(h, fw)), extra)
    extra = ()
  fn = jax.checkpoint(pure) if remat else pure
  b = None
  if halt_tol is not None or return_passes:
    leaves = jax.tree.leaves(h) or jax.tree.leaves(fast_weights)
    if not leaves or jnp.ndim(leaves[0]) < 1:
      raise ValueError("halt_tol / return_passes need a leading batch axis on h (or fast_weights)")
    b = jnp.shape(leaves[0])[0]
  if halt_tol is None:
    run = lambda c, n: _run_passes(fn, c, n, unroll)
    carry = (h, fast_weights, extra)
  else:
    _leading_axis(h, b, "h")
    _leading_axis(fast_weights, b, "fast_weights")
    measure = relative_change if halt_measure is None else halt_measure
    on_hidden = halt_measure_on == "hidden"
    run = lambda c, n: _run_adaptive(fn, c, n, float(halt_tol), measure, on_hidden)
    carry = (h, fast_weights, extra, jnp.ones((b,), bool), jnp.zeros((b,), jnp.int32))
  if n_sleep_passes > 0:
    _check_blocks_fn(pure, h, fast_weights, extra)
  if grad_passes is None or grad_passes >= n_sleep_passes:
    carry = run(carry, n_sleep_passes)
  else:
    carry = run(carry, n_sleep_passes - grad_passes)
    carry = jax.lax.stop_gradient(carry)
    carry = run(carry, grad_passes)
  h, fast_weights, extra = carry[:3]
  if owner is not None and n_sleep_passes > 0:
    nnx.update(owner, extra)
  passes = None
  if return_passes:
    passes = carry[4] if halt_tol is not None else jnp.full((b,), n_sleep_passes, jnp.int32)
  return SleepResult(fast_weights=fast_weights, hidden=h if return_hidden else None, passes=passes)
