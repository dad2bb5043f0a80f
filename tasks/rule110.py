"""Rule 110: predict one cell of each of several cellular automata after t steps.

An example holds ``n_states`` independent random binary states of width ``W``
(tokens ``0`` / ``1``), one state per consolidation window (``L = W``, so the
states fill the first ``n_states`` windows exactly). Label ``i`` is the first
(leftmost) cell of state ``i`` after ``t`` Rule 110 steps with a periodic
boundary: cell ``j`` becomes ``RULE[s[j-1], s[j], s[j+1]]`` with indices mod ``W``
and the table ``111,110,101,100,011,010,001,000 -> 0,1,1,0,1,1,1,0``.

Prediction window (ours). After the states comes one query token ``?<t>``
that names the number of steps (one token per ``t`` in ``[0, t_max]``, so an
example with ``t`` drawn from a range says which ``t`` it asks about), then the
labels in state order. Under the shifted convention the query token's target
is label 0 and label ``i``'s token is the input whose target is label
``i + 1``: ``T = n_states * W + n_states`` input tokens, the labels are the
targets at positions ``n_states * W + i``. Paper preset: ``W = 24``,
``n_states = 4``, ``t = 32`` gives 96 state tokens + ``?32`` + 3 labels =
``T = 100`` with the 4 labels as targets at positions 96..99, all in the fifth
(prediction) window.

Depth announced before sleep (ours, ``announce_t``). In the layout above the
window that sleeps holds only the state: ``t`` is named after the state is
evicted, so sleep must compute what any ``t`` would need, and nothing measured
while sleeping (the fast weights' change, the window's predictions) can follow
the depth asked. With ``announce_t`` every state window starts with the query
token ``?<t>`` (the window is ``L = W + 1`` tokens: ``?t``, then the ``W``
cells), so sleep knows how far to compute; the prediction window is unchanged.
``T = n_states * (W + 1) + n_states``. Off by default (the paper's layout).

Depth knob: ``t``. With ``t_min < t_max`` each example draws ``t`` uniformly, so
the per-depth buckets of one evaluation run cover the range (the paper's depth
study used separate runs at t = 4..16). Chance baseline (the headline is exact
match of all labels): ``2 ** -n_states`` (``chance_accuracy``).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tasks import example as ex_lib
from tasks.evaluation import Evaluator
from tasks.registry import Task, register
from tasks.tokenizer import Tokenizer

# Next value of a cell, indexed by 4 * left + 2 * centre + right (documentation
# and tests; ``rule110_steps`` uses the equivalent boolean form).
RULE110_TABLE = np.array([0, 1, 1, 1, 0, 1, 1, 0], np.uint8)
_BIT_IDS = np.array([1, 2], np.int32)  # token ids of "0" and "1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule110Config:
  """Rule 110 task knobs (defaults: the paper's preset).

  Attributes:
    width: ``W``, cells per state; also the window ``L``. At least 3.
    n_states: independent states (and labels) per example.
    t_min: fewest Rule 110 steps (>= 0).
    t_max: most Rule 110 steps; ``t`` is drawn uniformly from
      ``[t_min, t_max]`` per example.
    num_train_examples: epoch size of the train split (a grain source length).
    num_eval_examples: size of the eval split.
    announce_t: start every state window with the query token ``?<t>``
      (``L = W + 1``), so sleeping knows the depth that will be asked (see
      the module docstring). ``False``: the paper's layout.
  """
  width: int = 24
  n_states: int = 4
  t_min: int = 32
  t_max: int = 32
  num_train_examples: int = 1 << 30
  num_eval_examples: int = 4096
  announce_t: bool = False

  def __post_init__(self):
    req, is_int = ex_lib.require, ex_lib.is_int
    req(is_int(self.width) and self.width >= 3,
        f"Rule110Config.width (W) must be an integer >= 3 (a cell needs two neighbours), got {self.width!r}")
    req(is_int(self.n_states) and self.n_states >= 1,
        f"Rule110Config.n_states must be an integer >= 1, got {self.n_states!r}")
    req(is_int(self.t_min) and self.t_min >= 0, f"Rule110Config.t_min (t) must be an integer >= 0, got {self.t_min!r}")
    req(is_int(self.t_max) and self.t_max >= self.t_min,
        f"Rule110Config.t_max must be an integer >= t_min ({self.t_min}), got {self.t_max!r}")
    # The query token and the labels form the prediction window; it must fit
    # in one window of L = W tokens or a label would land in a sleeping window.
    req(self.n_states <= self.width,
        f"Rule110Config: the prediction window holds n_states = {self.n_states} tokens (query + labels), "
        f"which must fit in one window of L = width = {self.width}")
    req(is_int(self.num_train_examples) and self.num_train_examples >= 1,
        f"Rule110Config.num_train_examples must be an integer >= 1, got {self.num_train_examples!r}")
    req(is_int(self.num_eval_examples) and self.num_eval_examples >= 1,
        f"Rule110Config.num_eval_examples must be an integer >= 1, got {self.num_eval_examples!r}")
    req(isinstance(self.announce_t, (bool, np.bool_)),
        f"Rule110Config.announce_t must be a bool, got {self.announce_t!r}")

  @property
  def window(self) -> int:
    return self.width + int(self.announce_t)

  @property
  def seq_len(self) -> int:
    return self.n_states * self.window + self.n_states


def rule110_steps(states, t: int) -> np.ndarray:
  """Applies ``t`` Rule 110 steps with a periodic boundary.

  Each state is packed into a Python integer (bit ``j`` = cell ``j``) and
  stepped with the table's boolean form ``new = (c XOR r) OR (c AND NOT l)``,
  which is several times faster than a per-cell table lookup on small states.

  Args:
    states: [..., W] array of 0/1 cells.
    t: number of steps (>= 0).

  Returns:
    The states after ``t`` steps, uint8, same shape.
  """
  s = np.asarray(states, np.uint8)
  w = s.shape[-1]
  mask = (1 << w) - 1
  out = []
  for row in s.reshape(-1, w).tolist():
    x = sum(bit << j for j, bit in enumerate(row))
    for _ in range(t):
      left = ((x << 1) | (x >> (w - 1))) & mask  # bit j holds cell j - 1
      right = ((x >> 1) | (x << (w - 1))) & mask  # bit j holds cell j + 1
      x = ((x ^ right) | (x & ~left)) & mask
    out.append([(x >> j) & 1 for j in range(w)])
  return np.array(out, np.uint8).reshape(s.shape)


def tokenizer(config: Rule110Config) -> Tokenizer:
  """``<pad>``, ``0``, ``1``, then the query tokens ``?0`` ... ``?<t_max>``."""
  return Tokenizer(["<pad>", "0", "1"] + [f"?{t}" for t in range(config.t_max + 1)])


def _build(config: Rule110Config, rng: np.random.Generator) -> dict:
  n, w = config.n_states, config.width
  t = int(rng.integers(config.t_min, config.t_max + 1))
  states = rng.integers(0, 2, size=(n, w), dtype=np.uint8)
  labels = rule110_steps(states, t)[:, 0]
  query_id = 3 + t
  cells = _BIT_IDS[states]  # [n, W]
  if config.announce_t:
    cells = np.concatenate([np.full((n, 1), query_id, np.int32), cells], axis=1)
  stream = np.concatenate([cells.reshape(-1), [query_id], _BIT_IDS[labels]])
  answers = [(n * config.window + i, t, i) for i in range(n)]
  meta = {"t": t, "states": states, "labels": labels}
  return ex_lib.pack_example(stream, config.seq_len, answers, meta)


def chance_accuracy(config: Rule110Config, depth: int) -> float:
  """Exact-match accuracy of a uniform guess: each of the ``n_states`` binary
  labels guessed by a fair coin, so ``2 ** -n_states`` at every depth ``t``."""
  del depth  # the labels' marginal is taken as uniform whatever t is
  return 0.5 ** config.n_states


def make_example(config: Rule110Config, seed: int, index: int, split: str = "train") -> dict:
  """One Rule 110 example; a pure function of its arguments.

  Args:
    config: task configuration.
    seed: data seed (>= 0).
    index: example index (>= 0).
    split: "train" or "eval" (disjoint by construction, see ``tasks.example``).

  Returns:
    The example dict; ``meta`` holds ``t``, the initial ``states`` [n, W] and
    the ``labels`` [n].
  """
  if not isinstance(config, Rule110Config):
    raise ValueError(f"config must be a Rule110Config, got {type(config).__name__}")
  return ex_lib.draw_in_split(lambda rng: _build(config, rng), seed, split, index)


PRESETS = {
    "paper": Rule110Config(),
    # The paper's N = 1 depth study range, as one run with t drawn per example.
    "paper_depth": Rule110Config(t_min=4, t_max=16),
    # CPU scale: two 16-cell states, t in 2..8.
    "small": Rule110Config(width=16, n_states=2, t_min=2, t_max=8, num_eval_examples=1024),
}

TASK = register(Task(
    name="rule110",
    config_cls=Rule110Config,
    presets=PRESETS,
    make_example=make_example,
    tokenizer=tokenizer,
    evaluator=lambda config: Evaluator("example", per_answer_id=True,
                                       chance=functools.partial(chance_accuracy, config)),
    depth_name="t",
))
