"""Analytic training FLOPs of a run: what the sweep's compute axis and compute matching count.

Why analytic, not XLA's ``cost_analysis`` of the compiled step: the sleep
passes (and runs of equal windows) are ``lax.scan`` loops, and XLA's cost
analysis counts a loop body once whatever its trip count, so ``N = 4`` would
look as cheap as ``N = 1``. The count below follows Algorithm 1 as
``sleep_jax/windowed.py`` runs it.

Conventions (a multiply-add is 2 FLOPs; norms, activations, softmax, RoPE and
the embedding lookup are not counted):

* per token and block, forward: the mixer's projections (attention: q, k, v,
  o; GDN: q, k, v, a, b, g, o), the MLP's three matrices, and
  - attention: ``4 * H * Dh * S`` for the score and value products over the
    ``S`` keys each query is computed against (dense, masked keys included:
    ``S`` = the window's width, plus the kept prefix under sliding eviction);
  - GDN: ``2 * conv_size`` per conv channel and ``8 * Dk * Dv`` per head for
    the delta-rule recurrence (decay, read ``k^T S``, rank-one update, read
    ``q^T S``);
* per token, the output projection ``2 * d * V`` (wake pass only);
* a window's wake pass runs every block once; a consolidation window
  (``SleepConfig`` passes ``N >= 2``) adds ``N - 1`` passes of the looped core
  and one more of the coda (``replay`` costs the same: it only changes the
  core's input);
* training = forward + backward, backward = 2 x forward, for every pass that
  gradients flow through (``grad_passes`` truncates the sleep passes'
  backward). Rematerialisation is not counted: it is an implementation choice
  that does not change the model's compute.

So ``train_flops`` is comparable across N, replay, depth and the plain
transformer, and ``relative_cost`` is the FLOP counterpart of
``sleep_jax.train.metrics.sleep_cost`` (which counts block passes only).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class SequenceFlops:
  """FLOPs of one training sequence.

  Attributes:
    forward: forward FLOPs.
    train: forward + backward FLOPs.
    seq_len: tokens per sequence ``T``.
  """
  forward: float
  train: float
  seq_len: int

  @property
  def train_per_token(self) -> float:
    return self.train / self.seq_len


def block_flops_per_token(kind: str, model, keys: int) -> float:
  """Forward FLOPs of one block for one token.

  Args:
    kind: "attn" or "gdn".
    model: a ``ModelConfig``.
    keys: keys each attention query is computed against (ignored for GDN).

  Returns:
    FLOPs (mixer + MLP).

  Raises:
    ValueError: for an unknown block kind.
  """
  d = model.d_model
  mlp = 6 * d * model.mlp_width
  if kind == "attn":
    hd = model.n_heads * model.head_dim
    return 8 * d * hd + 4 * hd * keys + mlp
  if kind == "gdn":
    h, dk, dv = model.num_gdn_heads, model.gdn_head_dim, model.gdn_v_dim
    proj = 2 * d * h * (2 * dk + 3 * dv + 2)
    conv = 2 * model.conv_size * h * (2 * dk + dv)
    return proj + conv + 8 * h * dk * dv + mlp
  raise ValueError(f"unknown block kind {kind!r}")


def window_spans(seq_len: int, window: int) -> list[tuple[int, int]]:
  """``[(start, stop)]`` of the windows of a sequence (the last may be shorter)."""
  return [(a, min(a + window, seq_len)) for a in range(0, seq_len, window)]


def sequence_flops(model, sleep, schedule: Sequence[bool], seq_len: int) -> SequenceFlops:
  """Forward and training FLOPs of one sequence under Algorithm 1.

  Args:
    model: the ``ModelConfig``.
    sleep: the ``SleepConfig`` (window ``L``, passes ``N``, eviction,
      ``grad_passes``).
    schedule: one bool per window, True where the window sleeps.
    seq_len: ``T``.

  Returns:
    A :class:`SequenceFlops`.

  Raises:
    ValueError: if ``schedule`` does not have one entry per window.
  """
  spans = window_spans(seq_len, sleep.window)
  if len(schedule) != len(spans):
    raise ValueError(f"schedule has {len(schedule)} entries for {len(spans)} windows of {sleep.window} "
                     f"in {seq_len} tokens")
  kinds = model.block_types
  c0, c1 = model.core_range
  n = sleep.n_passes
  grad_extra = n - 1 if sleep.grad_passes is None else min(n - 1, sleep.grad_passes)
  head = 2 * model.d_model * model.vocab_size
  forward = train = 0.0
  prev_width = None
  for (a, z), sleeps in zip(spans, schedule):
    width = z - a
    # Sliding eviction concatenates a kept prefix: an empty cache of L keys
    # before the first window, then the previous window's keys.
    prefix = 0 if sleep.eviction != "sliding" else (sleep.window if prev_width is None else prev_width)
    per_block = [block_flops_per_token(k, model, width + prefix) * width for k in kinds]
    wake = sum(per_block) + head * width
    forward += wake
    train += 3 * wake
    if sleeps and n >= 2:
      core, coda = sum(per_block[c0:c1]), sum(per_block[c1:])
      forward += (n - 1) * core + coda
      train += 3 * ((n - 1) * core + coda) - 2 * (n - 1 - grad_extra) * core
    prev_width = width
  return SequenceFlops(forward=forward, train=train, seq_len=seq_len)


def experiment_flops(exp, schedule: Sequence[bool] | None = None) -> SequenceFlops:
  """:func:`sequence_flops` of a ``launch.experiment.Experiment``.

  When training draws ``N`` per step (``SleepConfig.n_passes_train``), the
  training FLOPs are their expectation under the draw's weights (the forward
  FLOPs stay those of ``n_passes``, what evaluation runs).

  Args:
    exp: the experiment.
    schedule: its sleep schedule (default: ``experiment.task_schedule(exp)``,
      read from the task's first examples as the trainer does).
  """
  if schedule is None:
    from launch import experiment
    schedule = experiment.task_schedule(exp)
  seq_len = exp.task.seq_len(exp.task_config)
  out = sequence_flops(exp.model, exp.sleep, schedule, seq_len)
  drawn = getattr(exp.sleep, "n_passes_train", None)
  if drawn:
    weights = getattr(exp.sleep, "n_passes_train_weights", None) or (1.0,) * len(drawn)
    fixed = {f: None for f in ("n_passes_train", "n_passes_train_weights")}
    train = sum(w * sequence_flops(exp.model, dataclasses.replace(exp.sleep, n_passes=n, **fixed), schedule,
                                   seq_len).train for n, w in zip(drawn, weights)) / sum(weights)
    out = dataclasses.replace(out, train=train)
  return out


def train_flops(exp, steps: int, schedule: Sequence[bool] | None = None) -> float:
  """Training FLOPs of ``steps`` steps of ``exp`` (``steps * batch_size`` sequences)."""
  return float(steps) * exp.train.batch_size * experiment_flops(exp, schedule).train


def compute_multiplier(cheap: SequenceFlops, dear: SequenceFlops) -> float:
  """How many times more steps ``cheap`` needs to spend the training FLOPs of ``dear``."""
  return dear.train / cheap.train


def matched_steps(steps: int, multiplier: float) -> int:
  """``ceil(steps * multiplier)``, tolerant of float noise in ``multiplier``."""
  return int(math.ceil(steps * multiplier - 1e-9))
