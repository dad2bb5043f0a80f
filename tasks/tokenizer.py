"""Word-level tokenizer over a fixed, task-defined vocabulary.

Every task speaks a tiny formal language whose words are single tokens
(``0``/``1`` for Rule 110, node names for Depo, variable names and numbers for
the math task), so a tokenizer is a list of words: ``encode`` splits on
whitespace and looks each word up, ``decode`` joins words with spaces. Id 0 is
always the padding token ``<pad>``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD = "<pad>"
PAD_ID = 0


class Tokenizer:
  """Maps between whitespace-separated words and integer ids.

  Attributes:
    vocab: the words, indexed by id; ``vocab[0]`` is ``"<pad>"``.
  """

  def __init__(self, vocab: Sequence[str]):
    """Builds the tokenizer.

    Args:
      vocab: the words, in id order. The first must be ``"<pad>"``; words must
        be unique, non-empty and free of whitespace.

    Raises:
      ValueError: if ``vocab`` breaks one of those rules.
    """
    vocab = tuple(vocab)
    if not vocab or vocab[0] != PAD:
      raise ValueError(f"vocab must start with {PAD!r}, got {vocab[:1]!r}")
    for w in vocab:
      if not isinstance(w, str) or not w or any(c.isspace() for c in w):
        raise ValueError(f"vocab words must be non-empty strings without whitespace, got {w!r}")
    if len(set(vocab)) != len(vocab):
      dupes = sorted({w for w in vocab if vocab.count(w) > 1})
      raise ValueError(f"vocab words must be unique; duplicated: {dupes}")
    self.vocab = vocab
    self._ids = {w: i for i, w in enumerate(vocab)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @property
  def pad_id(self) -> int:
    return PAD_ID

  def id(self, word: str) -> int:
    """Returns the id of one word.

    Raises:
      ValueError: if ``word`` is not in the vocabulary.
    """
    try:
      return self._ids[word]
    except KeyError:
      raise ValueError(f"word {word!r} is not in the vocabulary") from None

  def ids(self, words: Iterable[str]) -> list[int]:
    """Returns the ids of several words (see ``id``)."""
    return [self.id(w) for w in words]

  def encode(self, text: str) -> list[int]:
    """Splits ``text`` on whitespace and maps each word to its id.

    Raises:
      ValueError: if ``text`` is not a string or holds an unknown word.
    """
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    return self.ids(text.split())

  def decode(self, ids, *, skip_pad: bool = False) -> str:
    """Joins the words of ``ids`` with single spaces.

    Args:
      ids: a sequence or 1-D array of integer ids (or a single id).
      skip_pad: drop ``<pad>`` tokens.

    Raises:
      ValueError: if ``ids`` is not integer or has more than one axis, or an
        id is outside ``[0, vocab_size)``.
    """
    arr = np.asarray(ids)
    # Refused rather than cast: a float id would be truncated and a 2-D batch
    # flattened into one line without a word of warning.
    if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"ids must be a sequence or 1-D array of integers, got shape {arr.shape}, dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
      bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
      raise ValueError(f"id {int(bad)} is outside [0, {self.vocab_size})")
    words = (self.vocab[int(i)] for i in arr if not (skip_pad and int(i) == PAD_ID))
    return " ".join(words)

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size})"
