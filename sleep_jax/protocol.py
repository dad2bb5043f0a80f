"""The sleepable-model protocol: what the windowed machinery needs from a model.

``windowed_forward`` / ``windowed_loss`` (training through eviction),
``SleepSession`` (serving) and the trainer take any model that provides the
methods below; ``HybridLM`` is one implementation, and
``sleep_jax.examples.own_model.OwnLM`` is another, written from the public
building blocks (``sleep_jax.nn.Attention``, ``sleep_jax.ops.gated_delta_rule``).

A window of ``W <= L`` tokens runs as::

    h = model.embed_tokens(tokens)                                  # [B, W] -> h
    h, fw, kv = model.core(h, fw, positions, prefix, window=L)      # the looped core: the wake pass
    logits = model.unembed(h)                                       # [B, W, V] float32
    for _ in range(N - 1):                                          # sleep: the core again,
      h, fw, kv = model.core(h, fw, positions, prefix, window=L)    # on its own output
    # evict: only fw crosses into the next window (hard), or fw and kv (sliding: kv is the next prefix)

The methods, with ``B`` the batch and ``L`` the window:

* ``vocab_size``: int, the token ids are ``[0, vocab_size)``.
* ``init_fast_weights(batch_size) -> fast_weights``: the memory at the start
  of a sequence; any pytree of arrays (every leaf batch-leading if adaptive
  sleep is used).
* ``init_kv(batch_size, size) -> kv``: empty attention memory of ``size``
  slots: the kept prefix at the start of a sequence under sliding eviction,
  and the ring a streamed token attends to. Any pytree (``()`` for a model
  without attention).
* ``embed_tokens(tokens [B, W] int32) -> h``: hidden states (any pytree).
* ``core(h, fast_weights, positions [W] int32, prefix, *, window) -> (h,
  fast_weights, kv)``: one pass of the looped core over a window. ``prefix``
  is None (hard eviction) or the previous window's ``kv`` (sliding, attending
  to its ``L - 1`` most recent entries); ``kv`` is this window's own keys and
  values, with the structure of ``init_kv(B, W)``. It must return ``h`` and
  ``fast_weights`` with the shapes and dtypes it was given (the sleep scan
  feeds them back in). Under adaptive sleep (``SleepConfig.halt_tol``) every
  leaf of ``h``, ``kv`` and ``fast_weights`` needs the batch as its leading
  axis (halted rows are masked); ``sleep_jax.nn.KVCache``'s ``pos`` has
  none, so a model built on it sleeps a fixed ``N``.
* ``unembed(h) -> logits [B, W, V]`` float32.
* ``init_decode_state(batch_size) -> state``: per-window streaming state
  other than the fast weights and the attention ring (``HybridLM``: the
  short-convolution histories, of the GDN convolutions and of the Canon
  layers), reset at every window start; ``()`` if none.
* ``decode(tokens [B], position, fast_weights, kv, decode_state, *, window)
  -> (logits [B, V], fast_weights, kv, decode_state)``: one streamed token at
  the scalar int32 ``position``, ``kv`` being the ring of ``L`` slots. It must
  agree with ``core`` run over the window token by token.

Optional: ``clear_kv(kv) -> kv`` (hard eviction of the ring; default
``init_kv`` again) and ``window_flops(sleep, width) -> cost.WindowFlops`` /
``decode_flops(sleep) -> float`` (compute accounting; without them the FLOP
counts are not reported).

The model is an ``nnx.Module``. Its parameters are ``nnx.Param``; any other
variable (the RNG streams of ``nnx.Dropout``, statistics) is threaded through
the window loop, the sleep scan and checkpointing and written back, so a
module with dropout trains as it would in an ordinary forward.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

#: The protocol's members, in the order of the module docstring.
TRAINING_METHODS = ("vocab_size", "init_fast_weights", "init_kv", "embed_tokens", "core", "unembed")
SERVING_METHODS = TRAINING_METHODS + ("init_decode_state", "decode")


@runtime_checkable
class SleepableModel(Protocol):
  """A model the windowed forward, the trainer and ``SleepSession`` accept (see the module docstring)."""

  vocab_size: int

  def init_fast_weights(self, batch_size: int) -> Any: ...

  def init_kv(self, batch_size: int, size: int) -> Any: ...

  def embed_tokens(self, tokens) -> Any: ...

  def core(self, h, fast_weights, positions, prefix, *, window: int | None = None) -> tuple[Any, Any, Any]: ...

  def unembed(self, h) -> Any: ...

  def init_decode_state(self, batch_size: int) -> Any: ...

  def decode(self, tokens, position, fast_weights, kv, decode_state, *,
             window: int | None = None) -> tuple[Any, Any, Any, Any]: ...


def check_sleepable(model, *, serving: bool = False, what: str = "model") -> None:
  """Raises if ``model`` lacks a method of the protocol, naming it.

  Args:
    model: the model.
    serving: also require the streaming methods (``init_decode_state``,
      ``decode``), as ``SleepSession`` does.
    what: the caller's name for the argument.

  Raises:
    ValueError: one line naming the missing members.
  """
  from flax import nnx

  if not isinstance(model, nnx.Module):
    raise ValueError(f"{what} must be an nnx.Module meeting the sleepable-model protocol "
                     f"(sleep_jax.protocol), got {type(model).__name__}")
  names = SERVING_METHODS if serving else TRAINING_METHODS
  missing = [n for n in names if not hasattr(model, n) or (n != "vocab_size" and not callable(getattr(model, n)))]
  if missing:
    use = "serving" if serving else "the windowed forward"
    raise ValueError(f"{what} ({type(model).__name__}) does not meet the sleepable-model protocol for {use}: "
                     f"missing {', '.join(missing)} (see sleep_jax.protocol)")
