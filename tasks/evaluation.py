"""Depth-sliced evaluation of next-token predictions on answer tokens.

Units. A *position* is one scored target: ``loss_mask > 0`` and ``depth >= 0``. An *answer* is the
set of positions of one example sharing an ``answer_id`` (a multi-token answer
is right only if all its tokens are). An *example* is right only if all its
answers are. Each task picks which unit its headline ``accuracy`` counts:
"example" for Rule 110 (all labels right), "answer" for Depo (one query) and
the math task (one answer per example).

Depth. Every position carries the depth knob of its answer (``depth``); an
answer's depth is the maximum over its positions (they agree in all our tasks)
and an example's depth the maximum over its answers. ``accuracy/depth=<d>``
is the headline unit's accuracy in bucket ``d``; ``loss/depth=<d>`` is the mean
``token_loss`` over the positions of bucket ``d``; ``count/depth=<d>`` is the
number of headline units in bucket ``d`` (so a standard error
``sqrt(acc * (1 - acc) / count)`` can be printed beside the accuracy).

Auxiliary targets. A position with ``loss_mask > 0`` and ``depth < 0`` is an
auxiliary training target (``tasks.example``: e.g. the math task's hidden
line values): the trainer's loss includes it, the headline metrics above never
count it. Its next-token accuracy is reported apart as ``aux_accuracy`` (with
``aux_count``), present only when a batch had any.

Baselines. Beside every accuracy stand two floors for the same units:

- ``majority/depth=<d>``: the accuracy of always predicting the most frequent
  answer of bucket ``d``, measured on the evaluated units themselves. A unit's
  answer is its target tokens: the token tuple of one answer ("answer"
  headline), or the tuple of all of an example's answers ("example" headline,
  e.g. Rule 110's whole label tuple). ``majority`` is the same for one answer
  predicted across the whole split (not a mix of per-bucket answers). It is
  counted with one ``Counter`` per bucket, so memory grows with the number of
  distinct answers, not of examples.
- ``chance/depth=<d>``: the accuracy of a uniform guess, as defined by the task
  (a ``chance(depth) -> float`` passed to the ``Evaluator``); ``chance`` is its
  mean over the evaluated units. Without a ``chance`` function these keys are
  absent.
"""
from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np

HEADLINE_UNITS = ("example", "answer")


def _as_2d(name: str, x, shape=None) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a [B, T] array, got shape {arr.shape}")
  if shape is not None and arr.shape != shape:
    raise ValueError(f"{name} has shape {arr.shape}, expected {shape} (the shape of batch['targets'])")
  return arr


class Evaluator:
  """Accumulates accuracy and loss over batches, overall and per depth bucket.

  ``result()`` returns ``accuracy`` (the headline unit's exact accuracy),
  ``accuracy/depth=<d>``, ``loss/depth=<d>``, ``count/depth=<d>``, the
  baselines ``majority``, ``majority/depth=<d>`` and (with ``chance``)
  ``chance``, ``chance/depth=<d>`` (see the module docstring),
  ``answer_accuracy``, ``example_accuracy``, ``token_accuracy``, ``loss``, the
  counts ``count`` (headline units), ``n_examples`` / ``n_answers`` /
  ``n_tokens``, and with ``per_answer_id`` the accuracy of each answer slot,
  ``accuracy/answer_id=<i>`` (Rule 110's per-label accuracy).
  """

  def __init__(self, headline: str = "answer", *, per_answer_id: bool = False,
               chance: Callable[[int], float] | None = None):
    """Creates an empty accumulator.

    Args:
      headline: "example" or "answer", the unit ``accuracy`` counts.
      per_answer_id: also report accuracy per answer slot.
      chance: ``depth -> accuracy of a uniform guess`` for one headline unit
        of that depth (the task defines the guess); ``None`` leaves the
        ``chance`` keys out.

    Raises:
      ValueError: for an unknown ``headline`` or a ``chance`` that is not
        callable.
    """
    if headline not in HEADLINE_UNITS:
      raise ValueError(f"headline must be one of {HEADLINE_UNITS}, got {headline!r}")
    if chance is not None and not callable(chance):
      raise ValueError(f"chance must be None or a callable depth -> float, got {type(chance).__name__}")
    self.headline = headline
    self.per_answer_id = per_answer_id
    self.chance = chance
    self.reset()

  def reset(self) -> None:
    """Forgets everything accumulated."""
    # depth -> [right, total] for the headline unit; depth -> [loss sum, count].
    self._unit = collections.defaultdict(lambda: [0, 0])
    self._loss = collections.defaultdict(lambda: [0.0, 0])
    self._slot = collections.defaultdict(lambda: [0, 0])
    # depth -> Counter of the headline units' answers; and one over all depths.
    self._answer_counts = collections.defaultdict(collections.Counter)
    self._all_answer_counts = collections.Counter()
    self._answers = [0, 0]
    self._examples = [0, 0]
    self._tokens = [0, 0]
    self._aux = [0, 0]

  def update(self, batch, predictions, token_loss) -> None:
    """Adds one batch.

    Args:
      batch: dict with ``targets``, ``loss_mask``, ``depth``, ``answer_id``, each
        [B, T] (numpy or jax arrays).
      predictions: [B, T] predicted ids, aligned with ``targets`` (argmax).
      token_loss: [B, T] per-position cross-entropy (only masked positions are
        read).

    Raises:
      ValueError: if a key is missing or shapes disagree.
    """
    for key in ("targets", "loss_mask", "depth", "answer_id"):
      if key not in batch:
        raise ValueError(f"batch is missing {key!r}; it has {sorted(batch)}")
    targets = _as_2d("batch['targets']", batch["targets"])
    shape = targets.shape
    trained = _as_2d("batch['loss_mask']", batch["loss_mask"], shape) > 0
    depth = _as_2d("batch['depth']", batch["depth"], shape).astype(np.int64)
    aid = _as_2d("batch['answer_id']", batch["answer_id"], shape).astype(np.int64)
    preds = _as_2d("predictions", predictions, shape)
    loss = _as_2d("token_loss", token_loss, shape).astype(np.float64)
    mask = trained & (depth >= 0)  # scored positions; the rest of the trained ones are auxiliary
    aux = trained & ~mask
    self._aux[0] += int((aux & (preds == targets)).sum())
    self._aux[1] += int(aux.sum())
    if np.any(mask & (aid < 0)):
      raise ValueError("batch['answer_id'] must be >= 0 wherever loss_mask > 0 and depth >= 0")

    wrong = mask & (preds != targets)
    self._tokens[0] += int(mask.sum() - wrong.sum())
    self._tokens[1] += int(mask.sum())
    for d in np.unique(depth[mask]):
      sel = mask & (depth == d)
      self._loss[int(d)][0] += float(loss[sel].sum())
      self._loss[int(d)][1] += int(sel.sum())

    # Answers: (example, answer_id) pairs with at least one masked position.
    b_idx, t_idx = np.nonzero(mask)
    if not b_idx.size:
      return
    n_slots = int(aid[mask].max()) + 1
    present = np.zeros((shape[0], n_slots), bool)
    ans_wrong = np.zeros((shape[0], n_slots), bool)
    ans_depth = np.full((shape[0], n_slots), np.iinfo(np.int64).min)
    a_idx = aid[b_idx, t_idx]
    present[b_idx, a_idx] = True
    np.logical_or.at(ans_wrong, (b_idx, a_idx), wrong[b_idx, t_idx])
    np.maximum.at(ans_depth, (b_idx, a_idx), depth[b_idx, t_idx])
    ans_right = present & ~ans_wrong
    self._answers[0] += int(ans_right.sum())
    self._answers[1] += int(present.sum())
    if self.per_answer_id:
      for i in range(n_slots):
        self._slot[i][0] += int(ans_right[:, i].sum())
        self._slot[i][1] += int(present[:, i].sum())

    has_answer = present.any(axis=1)
    ex_right = has_answer & ~ans_wrong.any(axis=1)
    self._examples[0] += int(ex_right.sum())
    self._examples[1] += int(has_answer.sum())

    # Each answer's target tokens in position order (np.nonzero is row-major).
    tokens_of = collections.defaultdict(list)
    for b, a, y in zip(b_idx.tolist(), a_idx.tolist(), targets[b_idx, t_idx].tolist()):
      tokens_of[b, a].append(y)

    if self.headline == "answer":
      for b, a in zip(*np.nonzero(present)):
        self._add_unit(int(ans_depth[b, a]), bool(ans_right[b, a]), tuple(tokens_of[int(b), int(a)]))
    else:
      ex_depth = np.where(present, ans_depth, np.iinfo(np.int64).min).max(axis=1)
      for b in np.nonzero(has_answer)[0].tolist():
        key = tuple((a, tuple(tokens_of[b, a])) for a in np.nonzero(present[b])[0].tolist())
        self._add_unit(int(ex_depth[b]), bool(ex_right[b]), key)

  def _add_unit(self, depth: int, right: bool, answer: tuple) -> None:
    self._unit[depth][0] += int(right)
    self._unit[depth][1] += 1
    self._answer_counts[depth][answer] += 1
    self._all_answer_counts[answer] += 1

  def result(self) -> dict[str, float]:
    """The metrics so far (NaN where nothing was counted)."""
    def ratio(pair):
      return float(pair[0]) / pair[1] if pair[1] else float("nan")

    unit_pair = self._examples if self.headline == "example" else self._answers
    loss_sum = sum(v[0] for v in self._loss.values())
    loss_n = sum(v[1] for v in self._loss.values())
    out = {
        "accuracy": ratio(unit_pair),
        "answer_accuracy": ratio(self._answers),
        "example_accuracy": ratio(self._examples),
        "token_accuracy": ratio(self._tokens),
        "loss": ratio((loss_sum, loss_n)),
        "count": float(unit_pair[1]),
        "majority": ratio((max(self._all_answer_counts.values(), default=0), unit_pair[1])),
        "n_examples": float(self._examples[1]),
        "n_answers": float(self._answers[1]),
        "n_tokens": float(self._tokens[1]),
    }
    for d in sorted(self._unit):
      out[f"accuracy/depth={d}"] = ratio(self._unit[d])
      out[f"count/depth={d}"] = float(self._unit[d][1])
      out[f"majority/depth={d}"] = ratio((max(self._answer_counts[d].values()), self._unit[d][1]))
    if self.chance is not None:
      per_depth = {d: float(self.chance(d)) for d in self._unit}
      for d in sorted(per_depth):
        out[f"chance/depth={d}"] = per_depth[d]
      weighted = sum(per_depth[d] * self._unit[d][1] for d in per_depth)
      out["chance"] = ratio((weighted, sum(v[1] for v in self._unit.values())))
    for d in sorted(self._loss):
      out[f"loss/depth={d}"] = ratio(self._loss[d])
    for i in sorted(self._slot):
      out[f"accuracy/answer_id={i}"] = ratio(self._slot[i])
    if self._aux[1]:
      out["aux_accuracy"] = ratio(self._aux)
      out["aux_count"] = float(self._aux[1])
    return out
