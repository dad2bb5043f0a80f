"""The example layout shared by every task, and how examples are seeded.

An example is a dict of numpy arrays, all of length ``T`` (the task's fixed
sequence length), plus a ``meta`` dict of structured ground truth:

- ``tokens`` int32: the model's input.
- ``targets`` int32: the next token, ``targets[t] = tokens[t + 1]``. Each task
  writes a stream of ``T + 1`` tokens, so the last target is the stream's final
  token (typically the last answer token) rather than padding; where a stream
  has only ``T`` tokens the last target is 0 (``<pad>``).
- ``loss_mask`` float32: 1.0 where ``targets[t]`` is trained on: an answer
  token, or an auxiliary target.
- ``depth`` int32: the depth knob of the answer targeted at ``t``, -1 elsewhere.
- ``answer_id`` int32: which answer (query) of the example the targeted token
  belongs to, -1 elsewhere; the tokens of one multi-token answer share an id.

Auxiliary targets (ours). A position with ``loss_mask = 1`` and ``depth = -1``
(``answer_id = -1``) is trained on but never scored (``tasks.evaluation``) and
does not keep its window awake (:func:`scored_mask`): its ``targets`` entry may
be any token, not the next input, so a task can supervise a value it never
shows (the math task's ``line_values``). Every window still sleeps or not by
where the scored answers are, so such targets may sit in windows that are
consolidated: their logits are the wake pass's, which reads only what came
before them.

Seeding. ``make_example(config, seed, index, split)`` draws everything from
``np.random.default_rng([seed, split_id, index, attempt])``, so an example is a
pure function of its arguments: identical across processes, workers and hosts.

Disjoint splits. Independent streams make a train/eval collision unlikely, not
impossible. To make it impossible, every token sequence is assigned to exactly
one split by one bit of a hash of its tokens; a generator keeps drawing
(``attempt = 0, 1, ...``) until the example it drew belongs to the requested
split. This costs about two draws per example and leaves the distribution
unchanged up to a hash bit.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tasks.tokenizer import PAD_ID

SPLITS = ("train", "eval")
# 64 draws all landing in the wrong split has probability 2**-64 unless the
# configuration has only a handful of distinct sequences.
MAX_SPLIT_ATTEMPTS = 64
ARRAY_KEYS = ("tokens", "targets", "loss_mask", "depth", "answer_id")


def require(cond: bool, msg: str) -> None:
  """Raises ``ValueError(msg)`` unless ``cond``."""
  if not cond:
    raise ValueError(msg)


def is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def split_id(split: str) -> int:
  """Returns 0 for "train", 1 for "eval".

  Raises:
    ValueError: for any other ``split``.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return SPLITS.index(split)


def split_of_tokens(tokens: np.ndarray) -> str:
  """The one split a token sequence may appear in (a hash bit of its tokens)."""
  digest = hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int32).tobytes(), digest_size=8).digest()
  return SPLITS[digest[0] & 1]


def example_rng(seed: int, split: str, index: int, attempt: int = 0) -> np.random.Generator:
  """The independent generator for one (seed, split, index, attempt)."""
  return np.random.default_rng([int(seed), split_id(split), int(index), int(attempt)])


def check_seed_index(seed, index) -> None:
  """Raises ``ValueError`` unless ``seed`` and ``index`` are integers >= 0."""
  require(is_int(seed) and seed >= 0, f"seed must be an integer >= 0, got {seed!r}")
  require(is_int(index) and index >= 0, f"index must be an integer >= 0, got {index!r}")


def draw_in_split(build: Callable[[np.random.Generator], dict[str, Any]], seed: int, split: str,
                  index: int) -> dict[str, Any]:
  """Draws examples with ``build`` until one belongs to ``split``.

  Args:
    build: ``rng -> example``, a pure function of the generator.
    seed: data seed.
    split: "train" or "eval".
    index: example index.

  Returns:
    The first drawn example whose tokens hash to ``split``.

  Raises:
    ValueError: if ``MAX_SPLIT_ATTEMPTS`` draws all hash to the other split,
      i.e. the configuration has too few distinct sequences to split.
  """
  check_seed_index(seed, index)
  split_id(split)
  for attempt in range(MAX_SPLIT_ATTEMPTS):
    ex = build(example_rng(seed, split, index, attempt))
    if split_of_tokens(ex["tokens"]) == split:
      return ex
  raise ValueError(f"no {split!r} example after {MAX_SPLIT_ATTEMPTS} draws (seed={seed}, index={index}): "
                   "the configuration has too few distinct sequences to split into train and eval")


def pack_example(stream: Sequence[int] | np.ndarray, seq_len: int, answers: Sequence[tuple[int, int, int]],
                 meta: dict[str, Any], aux: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
  """Turns a token stream and its answer positions into the example arrays.

  Args:
    stream: ``T`` or ``T + 1`` token ids.
    seq_len: ``T``.
    answers: ``(target_position, depth, answer_id)`` per answer token, where
      ``target_position`` indexes ``targets`` (the answer token is
      ``stream[target_position + 1]``).
    meta: structured ground truth, stored under ``"meta"``.
    aux: ``(target_position, token)`` per auxiliary target: ``targets`` gets
      ``token`` there (the input is unchanged), trained on with depth -1.

  Returns:
    The example dict (see the module docstring).

  Raises:
    ValueError: a position outside ``[0, T)`` or an auxiliary target on an
      answer's position.
  """
  stream = np.asarray(stream, dtype=np.int32)
  if stream.shape not in ((seq_len,), (seq_len + 1,)):
    raise ValueError(f"stream must hold {seq_len} or {seq_len + 1} tokens, got shape {stream.shape}")
  tokens = stream[:seq_len].copy()
  targets = np.full((seq_len,), PAD_ID, np.int32)
  targets[:len(stream) - 1] = stream[1:]
  loss_mask = np.zeros((seq_len,), np.float32)
  depth = np.full((seq_len,), -1, np.int32)
  answer_id = np.full((seq_len,), -1, np.int32)
  for pos, d, aid in answers:
    if not 0 <= pos < seq_len:
      raise ValueError(f"answer position {pos} is outside [0, {seq_len})")
    loss_mask[pos] = 1.0
    depth[pos] = d
    answer_id[pos] = aid
  for pos, token in aux:
    if not 0 <= pos < seq_len:
      raise ValueError(f"auxiliary target position {pos} is outside [0, {seq_len})")
    if loss_mask[pos]:
      raise ValueError(f"auxiliary target position {pos} is already trained on (an answer or another target)")
    loss_mask[pos] = 1.0
    targets[pos] = token
  return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "depth": depth,
          "answer_id": answer_id, "meta": meta}


def scored_mask(loss_mask, depth) -> np.ndarray:
  """The positions scored as answers: ``loss_mask`` where ``depth >= 0`` (auxiliary targets dropped)."""
  loss_mask, depth = np.asarray(loss_mask), np.asarray(depth)
  return np.where(depth >= 0, loss_mask, np.zeros_like(loss_mask))


def window_starts(seq_len: int, window: int) -> list[int]:
  """Start positions of the consecutive windows of at most ``window`` tokens."""
  return list(range(0, seq_len, window))
