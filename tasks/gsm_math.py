"""GSM-style symbolic math: resolve a variable through a shuffled assignment program.

After GSM-Infinite's symbolic subset. An example is a program of assignment
lines over variables ``V0 ... V<n_vars-1>`` (single tokens), each variable
assigned exactly once, with values in ``Z_p`` (``p = modulus``, a prime; the
numbers ``0 .. p-1`` are single tokens):

- a constant line ``V3 = 5 ;`` (4 tokens) or an operation line
  ``V7 = V3 * V12 ;`` (6 tokens, operators ``+ - *`` mod ``p``).
- The *core*: ``op`` operation lines (and the constants they need), built so
  that every one of them is an ancestor of the queried variable: the queried
  variable's value takes exactly ``op`` operations to compute.
- *Distractors*: further constant and operation lines that may read any
  earlier variable (core ones included) but that no core line reads, added
  until the example reaches a length drawn uniformly from
  ``[min_len, seq_len]`` (up to 3 tokens less: lines are 4 or 6 tokens).

Order (ours). Lines are listed in a uniformly random order
(``line_order="random"``, the default): as in GSM-Infinite's symbolic task a
line may use a variable defined further down, so the model must resolve the
dependencies itself. ``line_order="topological"`` lists them in a random order
that defines every variable before its use.

Layout. ``<pad>* Q <var> ; <lines> A <answer>``: the question comes first,
then the context, then the answer prompt ``A`` whose target is the answer (one
token, predicted in one shot without chain of thought) at position ``T - 1``.
Sequences are left-padded to ``T = seq_len``. The configuration checks that the
question is always evicted before the answer is predicted: under hard
eviction it lies before the last window, under sliding eviction also outside
the ``L - 1`` tokens kept from before that window. Paper presets: 2,000-3,300
tokens with L = 2000 (hard) or L = 512 (sliding).

More answers per example (ours): with ``n_queries = m > 1`` an example asks
``m`` questions, ``<pad>* Q <v1> ; Q2 <v2> ; ... Qm <vm> ; <lines> A <a1> A2
<a2> ... Am <am>``. Each query has its own core (its own ``op``, drawn
independently and uniformly), on variables no other core uses, so the cores
are disjoint and a teacher-forced earlier answer tells nothing about a later
one; distractors may read any core. The prompt ``A<i>`` (``A`` for the first)
has target ``a<i>``: ``m`` supervised tokens per sequence instead of one, all
in the last window (positions ``T - 2m + 1, T - 2m + 3, ..., T - 1``), and the
whole question block is evicted as above. Query 1 keeps the tokens ``Q`` and
``A``; ``Q2 .. Qm``, ``A2 .. Am`` are appended at the end of the vocabulary,
so ``n_queries = 1`` gives the same vocabulary and examples as without the
knob.

Hidden line values (ours, ``line_values=True``). Every operation line whose
operands are both listed above it (in topological order: every one) is also
an auxiliary training target (``tasks.example``): at its ``;`` the target is
the line's value instead of the next token, and the input is unchanged, so the
value is never shown. This supervises computing each value while the program
is read, one target per operation line, where the plain task has one answer
per sequence; the targets are never scored (``aux_accuracy`` reports them) and
do not change which windows sleep. The examples' tokens are those of
``line_values=False``.

Depth knob: ``op`` (1 .. 8, GSM-Infinite's range used in the paper). Chance
baseline: a uniform guess over ``Z_p``, ``1 / p`` (``chance_accuracy``).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tasks import example as ex_lib
from tasks.evaluation import Evaluator
from tasks.registry import Task, register
from tasks.tokenizer import Tokenizer

MAX_OPS = 8
OPERATORS = ("+", "-", "*")
LINE_ORDERS = ("random", "topological")
DISTRACTOR_READS = ("any", "constants")
EVICTIONS = ("hard", "sliding")
CONST_TOKENS = 4
OP_TOKENS = 6
MAX_QUERIES = 8
QUESTION_TOKENS = 3  # Q <var> ; (per query)
ANSWER_TOKENS = 2  # A <answer> (per query; the last answer is the final target, not an input)
_SPECIALS = ("<pad>", "Q", "A", "=", ";") + OPERATORS
_Q, _A, _EQ, _SEMI = 1, 2, 3, 4
_OP_ID = {o: 5 + i for i, o in enumerate(OPERATORS)}


def _is_prime(p: int) -> bool:
  return p >= 2 and all(p % d for d in range(2, int(p ** 0.5) + 1))


def apply_op(op: str, a: int, b: int, modulus: int) -> int:
  """``a op b`` in ``Z_modulus``."""
  if op == "+":
    return (a + b) % modulus
  if op == "-":
    return (a - b) % modulus
  if op == "*":
    return (a * b) % modulus
  raise ValueError(f"unknown operator {op!r}; known: {OPERATORS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GsmMathConfig:
  """Symbolic math task knobs (defaults: the paper's hard-eviction preset).

  Attributes:
    op_min: fewest operations on the queried variable's path (>= 1).
    op_max: most operations (<= 8); ``op`` is uniform on ``[op_min, op_max]``.
    n_queries: questions (and answers) per example, 1 .. 8; each has its own
      core program and ``op``, disjoint from the others' (see "More answers
      per example"). 1 (the default) is the original one-question task; more
      give more supervised tokens per sequence at the same length.
    min_len: shortest example in input tokens (questions + context + prompts).
    seq_len: ``T``, the padded length (the longest example).
    window: the consolidation window ``L``.
    eviction: "hard" or "sliding" (decides which question positions count as
      evicted; the trainer's ``SleepConfig.eviction`` should match).
    modulus: prime ``p``; values live in ``Z_p`` and each is one token.
    n_vars: variable names in the pool; at least the most lines that fit.
    operators: operators used, a subset of ``("+", "-", "*")``.
    line_order: "random" or "topological".
    line_values: also train on each operation line's value at its ``;``
      (hidden; see "Hidden line values").
    p_new_leaf: probability that a core operand is a fresh constant rather
      than an earlier core variable.
    p_distractor_const: probability that a distractor line is a constant.
    distractor_reads: what a distractor operation line reads: "any" earlier
      line (the default), or only earlier "constants" (a curriculum knob:
      every distractor's value then takes one operation on two looked-up
      constants, the computation an ``op = 1`` answer needs; with
      ``line_values`` those are most of the targets).
    num_train_examples: epoch size of the train split.
    num_eval_examples: size of the eval split.
  """
  op_min: int = 1
  op_max: int = 8
  n_queries: int = 1
  min_len: int = 2000
  seq_len: int = 3300
  window: int = 2000
  eviction: str = "hard"
  modulus: int = 23
  n_vars: int = 1000
  operators: tuple[str, ...] = OPERATORS
  line_order: str = "random"
  line_values: bool = False
  p_new_leaf: float = 0.5
  p_distractor_const: float = 0.3
  distractor_reads: str = "any"
  num_train_examples: int = 1 << 30
  num_eval_examples: int = 2048

  def __post_init__(self):
    req, is_int = ex_lib.require, ex_lib.is_int
    if isinstance(self.operators, (list, tuple)):
      object.__setattr__(self, "operators", tuple(self.operators))
    req(is_int(self.op_min) and self.op_min >= 1, f"GsmMathConfig.op_min must be an integer >= 1, got {self.op_min!r}")
    req(is_int(self.op_max) and self.op_min <= self.op_max <= MAX_OPS,
        f"GsmMathConfig.op_max must be an integer in [op_min, {MAX_OPS}] (op beyond {MAX_OPS} is not "
        f"supported), got {self.op_max!r}")
    req(is_int(self.n_queries) and 1 <= self.n_queries <= MAX_QUERIES,
        f"GsmMathConfig.n_queries must be an integer in [1, {MAX_QUERIES}] (more queries per example are not "
        f"supported), got {self.n_queries!r}")
    req(self.eviction in EVICTIONS, f"GsmMathConfig.eviction must be one of {EVICTIONS}, got {self.eviction!r}")
    req(is_int(self.modulus) and _is_prime(self.modulus),
        f"GsmMathConfig.modulus must be a prime, got {self.modulus!r}")
    req(isinstance(self.operators, tuple) and len(self.operators) >= 1 and set(self.operators) <= set(OPERATORS)
        and len(set(self.operators)) == len(self.operators),
        f"GsmMathConfig.operators must be distinct elements of {OPERATORS}, got {self.operators!r}")
    req(self.line_order in LINE_ORDERS,
        f"GsmMathConfig.line_order must be one of {LINE_ORDERS}, got {self.line_order!r}")
    req(self.distractor_reads in DISTRACTOR_READS,
        f"GsmMathConfig.distractor_reads must be one of {DISTRACTOR_READS}, got {self.distractor_reads!r}")
    req(isinstance(self.line_values, (bool, np.bool_)),
        f"GsmMathConfig.line_values must be a bool, got {self.line_values!r}")
    object.__setattr__(self, "line_values", bool(self.line_values))
    for name in ("p_new_leaf", "p_distractor_const"):
      p = getattr(self, name)
      req(isinstance(p, (int, float)) and 0.0 <= p <= 1.0, f"GsmMathConfig.{name} must be in [0, 1], got {p!r}")
    req(is_int(self.window) and self.window >= 1, f"GsmMathConfig.window must be an integer >= 1, got {self.window!r}")
    if self.n_queries == 1:
      what = "the question, the answer prompt and the largest core program"
    else:
      what = (f"the n_queries = {self.n_queries} questions, their answer prompts and {self.n_queries} largest "
              "core programs")
    req(is_int(self.min_len) and self.min_len >= self.max_core_len,
        f"GsmMathConfig.min_len ({self.min_len!r}) must hold {what} (op_max = {self.op_max}): at least "
        f"{self.max_core_len} tokens")
    req(is_int(self.seq_len) and self.seq_len >= self.min_len,
        f"GsmMathConfig.seq_len must be an integer >= min_len ({self.min_len}), got {self.seq_len!r}")
    # The whole question block (Q <var> ; ... Qm <var> ;) must be evicted, not
    # only its first token: the queried variables' names are its informative tokens.
    question_end = self.latest_question_position + self.question_block_len - 1
    many = self.n_queries > 1
    req(question_end < self.last_visible_position,
        f"GsmMathConfig: the question{'s' if many else ''} can occupy positions "
        f"{self.latest_question_position}..{question_end}, which reach the attention cache (positions >= "
        f"{self.last_visible_position}) when the answer{'s are' if many else ' is'} predicted ({self.eviction} "
        f"eviction, window {self.window}, seq_len {self.seq_len}, min_len {self.min_len}"
        f"{f', n_queries {self.n_queries}' if many else ''}); raise min_len or lower window"
        f"{' or n_queries' if many else ''}")
    # Every answer prompt (the first at T - 2 * n_queries + 1) is predicted in the
    # last window, which no sleep pass has consolidated; always true for one query.
    req(self.seq_len - ANSWER_TOKENS * self.n_queries + 1 >= self.last_window_start,
        f"GsmMathConfig: the n_queries = {self.n_queries} answers take positions "
        f"{self.seq_len - ANSWER_TOKENS * self.n_queries + 1}..{self.seq_len - 1}, which start before the last "
        f"window (positions >= {self.last_window_start} for seq_len {self.seq_len}, window {self.window}); "
        "lower n_queries or change seq_len or window")
    req(is_int(self.n_vars) and self.n_vars >= self.max_lines,
        f"GsmMathConfig.n_vars ({self.n_vars!r}) must be at least the most lines that fit in seq_len = "
        f"{self.seq_len} tokens ({self.max_lines}): every line defines a new variable from the pool")
    req(is_int(self.num_train_examples) and self.num_train_examples >= 1,
        f"GsmMathConfig.num_train_examples must be an integer >= 1, got {self.num_train_examples!r}")
    req(is_int(self.num_eval_examples) and self.num_eval_examples >= 1,
        f"GsmMathConfig.num_eval_examples must be an integer >= 1, got {self.num_eval_examples!r}")

  @property
  def question_block_len(self) -> int:
    """Tokens of the questions ``Q <v1> ; ... Qm <vm> ;``."""
    return QUESTION_TOKENS * self.n_queries

  @property
  def fixed_len(self) -> int:
    """Input tokens besides the lines: the questions and the answer block but its last answer (a target)."""
    return self.question_block_len + ANSWER_TOKENS * self.n_queries - 1

  @property
  def max_core_len(self) -> int:
    """Questions + answer prompts + ``n_queries`` longest cores (op lines, op + 1 constants each)."""
    return self.fixed_len + self.n_queries * (OP_TOKENS * self.op_max + CONST_TOKENS * (self.op_max + 1))

  @property
  def max_lines(self) -> int:
    return (self.seq_len - self.fixed_len) // CONST_TOKENS

  @property
  def latest_question_position(self) -> int:
    """Latest position of the first question's first token ``Q``."""
    # Inputs are left-padded; the shortest example has min_len - 3 tokens.
    return self.seq_len - (self.min_len - 3)

  @property
  def last_window_start(self) -> int:
    """First position of the last window, where the answers are predicted."""
    return (self.seq_len - 1) // self.window * self.window

  @property
  def last_visible_position(self) -> int:
    """Earliest position the answers can still attend to (smaller ones are evicted)."""
    last_start = self.last_window_start
    return last_start if self.eviction == "hard" else max(last_start - (self.window - 1), 0)


def tokenizer(config: GsmMathConfig) -> Tokenizer:
  """Specials and operators, numbers ``0 .. p-1``, variables ``V0 ...``, then ``Q2 .. Qm``, ``A2 .. Am``.

  The query tokens past the first exist only for ``n_queries = m > 1``, so one
  query has the original vocabulary.
  """
  extra = range(2, config.n_queries + 1)
  return Tokenizer(list(_SPECIALS) + [str(i) for i in range(config.modulus)]
                   + [f"V{i}" for i in range(config.n_vars)] + [f"Q{j}" for j in extra] + [f"A{j}" for j in extra])


def _num_id(value):
  return len(_SPECIALS) + value


def _var_id(config: GsmMathConfig, var):
  return len(_SPECIALS) + config.modulus + var


def _question_id(config: GsmMathConfig, j: int) -> int:
  """The question token of query ``j`` (0-based): ``Q`` for the first, ``Q<j+1>`` after the variables."""
  return _Q if j == 0 else len(_SPECIALS) + config.modulus + config.n_vars + j - 1


def _answer_id(config: GsmMathConfig, j: int) -> int:
  """The answer prompt of query ``j`` (0-based): ``A`` for the first, ``A<j+1>`` after the ``Q<i>``."""
  return _A if j == 0 else len(_SPECIALS) + config.modulus + config.n_vars + config.n_queries - 1 + j - 1


def _topological_order(a_idx: np.ndarray, b_idx: np.ndarray, is_const: np.ndarray,
                       rng: np.random.Generator) -> list[int]:
  """Kahn's algorithm, taking a uniformly chosen ready line at each step."""
  n = len(is_const)
  children = [[] for _ in range(n)]
  indegree = [0] * n
  for i in np.nonzero(~is_const)[0].tolist():
    for parent in {int(a_idx[i]), int(b_idx[i])}:
      children[parent].append(i)
      indegree[i] += 1
  ready = [i for i in range(n) if indegree[i] == 0]
  order = []
  while ready:
    j = int(rng.integers(len(ready)))
    ready[j], ready[-1] = ready[-1], ready[j]
    i = ready.pop()
    order.append(i)
    for c in children[i]:
      indegree[c] -= 1
      if indegree[c] == 0:
        ready.append(c)
  return order


def _core(config: GsmMathConfig, op: int, rng: np.random.Generator):
  """The ``op`` operation lines (and their constants) the answer depends on.

  Returns:
    ``(kind, a, b, const, answer)``: per line in creation order, the operator
    index (-1 for a constant), operand line indices, constant value; and the
    value of the last line, the queried one.
  """
  p = config.modulus
  kind, a_idx, b_idx, const, value = [], [], [], [], []

  def add(k, a, b, c, v):
    kind.append(k), a_idx.append(a), b_idx.append(b), const.append(c), value.append(v)
    return len(kind) - 1

  def operand(exclude=-1):
    # Never both operands the same variable: ``x - x`` would make trivial zeros.
    n_choices = len(kind) - (exclude >= 0)
    if n_choices == 0 or rng.random() < config.p_new_leaf:
      c = int(rng.integers(p))
      return add(-1, -1, -1, c, c)
    j = int(rng.integers(n_choices))
    return j + (0 <= exclude <= j)

  # Each operation reads the previous one, so every op line is an ancestor of the last.
  last = None
  for _ in range(op):
    a = last if last is not None else operand()
    b = operand(exclude=a)
    if rng.random() < 0.5:
      a, b = b, a
    k = OPERATORS.index(config.operators[int(rng.integers(len(config.operators)))])
    last = add(k, a, b, -1, apply_op(OPERATORS[k], value[a], value[b], p))
  return np.array(kind), np.array(a_idx), np.array(b_idx), np.array(const), value[last]


def _build(config: GsmMathConfig, rng: np.random.Generator) -> dict:
  p, m = config.modulus, config.n_queries
  ops = [int(rng.integers(config.op_min, config.op_max + 1)) for _ in range(m)]
  names = rng.permutation(config.n_vars)  # line i (creation order) defines names[i]
  # The cores one after the other in creation order, each reading only its own
  # lines (operand indices shifted by the lines before it): disjoint variables,
  # each core ending in its queried line.
  cores, answers, query_lines, n_core = [], [], [], 0
  for op in ops:
    c_kind, c_a, c_b, c_const, c_answer = _core(config, op, rng)
    cores.append((c_kind, c_a + n_core, c_b + n_core, c_const))  # constants' -1 operands are reset below
    n_core += len(c_kind)
    answers.append(int(c_answer))
    query_lines.append(n_core - 1)
  kind, a_idx, b_idx, const = (np.concatenate(parts) for parts in zip(*cores))
  queries = [int(names[i]) for i in query_lines]

  # Distractors: kinds follow the token budget; operands are uniform over all
  # earlier lines, or over the earlier constants (creation order keeps the
  # program acyclic). Their values are computed only for ``line_values``.
  target_len = int(rng.integers(config.min_len, config.seq_len + 1))
  budget = target_len - config.fixed_len - int(np.where(kind < 0, CONST_TOKENS, OP_TOKENS).sum())
  coins = (rng.random(budget // CONST_TOKENS + 1) < config.p_distractor_const).tolist()
  d_const = []
  while budget >= CONST_TOKENS:
    c = budget < OP_TOKENS or coins[len(d_const)]
    d_const.append(c)
    budget -= CONST_TOKENS if c else OP_TOKENS
  n_d = len(d_const)
  n_before = n_core + np.arange(n_d)
  u_a, u_b = rng.random(n_d), rng.random(n_d)
  if config.distractor_reads == "any":
    d_a, d_b = (u_a * n_before).astype(np.int64), (u_b * n_before).astype(np.int64)
  else:  # the same uniform draws over the earlier constant lines only (the core always has two or more)
    is_c = np.concatenate([kind < 0, np.asarray(d_const, bool)])
    const_lines = np.nonzero(is_c)[0]
    n_const_before = np.cumsum(is_c)[n_before - 1]  # constant lines among 0 .. n_core + j - 1
    d_a, d_b = (const_lines[(u * n_const_before).astype(np.int64)] for u in (u_a, u_b))
  op_choices = np.array([OPERATORS.index(o) for o in config.operators])
  d_kind = np.where(d_const, -1, op_choices[rng.integers(len(op_choices), size=n_d)])
  d_val = rng.integers(p, size=n_d)
  kind = np.concatenate([kind, d_kind]).astype(np.int64)
  is_const = kind < 0
  a_idx = np.where(is_const, -1, np.concatenate([a_idx, d_a])).astype(np.int64)
  b_idx = np.where(is_const, -1, np.concatenate([b_idx, d_b])).astype(np.int64)
  const = np.where(is_const, np.concatenate([const, d_val]), -1).astype(np.int64)

  n = len(kind)
  if config.line_order == "random":
    order = rng.permutation(n)
  else:
    order = np.array(_topological_order(a_idx, b_idx, is_const, rng), np.int64)

  # Token rows: V = c ; (4) or V = A op B ; (6), flattened in listed order.
  var_tok = _var_id(config, names[:n])
  rows = np.zeros((n, OP_TOKENS), np.int32)
  rows[:, 0] = var_tok
  rows[:, 1] = _EQ
  rows[:, 2] = np.where(is_const, _num_id(const), var_tok[a_idx])
  rows[:, 3] = np.where(is_const, _SEMI, _OP_ID[OPERATORS[0]] + kind)
  rows[:, 4] = var_tok[b_idx]
  rows[:, 5] = _SEMI
  width = np.where(is_const, CONST_TOKENS, OP_TOKENS)
  keep = np.arange(OP_TOKENS)[None, :] < width[order][:, None]
  body = rows[order][keep]
  question = [[_question_id(config, j), _var_id(config, v), _SEMI] for j, v in enumerate(queries)]
  answer = [[_answer_id(config, j), _num_id(a)] for j, a in enumerate(answers)]
  content = np.concatenate([np.ravel(question), body, np.ravel(answer)])
  stream = np.zeros(config.seq_len + 1, np.int32)
  stream[-len(content):] = content

  names_l, kind_l, const_l = names.tolist(), kind.tolist(), const.tolist()
  a_l, b_l = a_idx.tolist(), b_idx.tolist()
  program = [(names_l[i], ("const", const_l[i]) if kind_l[i] < 0
              else (OPERATORS[kind_l[i]], names_l[a_l[i]], names_l[b_l[i]])) for i in order.tolist()]
  meta = {"queries": list(zip(queries, ops, answers)), "modulus": p, "program": program,
          "core_vars": sorted(int(v) for v in names[:n_core])}
  if m == 1:
    meta.update(op=ops[0], query=queries[0], answer=answers[0])
  # The prompt A<j> sits at T - 1 - 2 (m - 1 - j); its target is the answer.
  targets = [(config.seq_len - 1 - ANSWER_TOKENS * (m - 1 - j), ops[j], j) for j in range(m)]
  aux = []
  if config.line_values:
    values = _line_values(kind_l, a_l, b_l, const_l, p)
    listed_at = np.empty(n, np.int64)
    listed_at[order] = np.arange(n)
    # Stream index of each listed line's last token ";": after the padding and the questions.
    semis = len(stream) - len(content) + len(question) * QUESTION_TOKENS + np.cumsum(width[order]) - 1
    shown = [(int(semis[j]), i) for j, i in enumerate(order.tolist())
             if kind_l[i] >= 0 and listed_at[a_l[i]] < j and listed_at[b_l[i]] < j]
    aux = [(pos, _num_id(values[i])) for pos, i in shown]
    meta["line_targets"] = [(pos, names_l[i], values[i]) for pos, i in shown]
  return ex_lib.pack_example(stream, config.seq_len, targets, meta, aux)


def _line_values(kind, a_idx, b_idx, const, modulus: int) -> list[int]:
  """Every line's value, in creation order (operands are always earlier lines)."""
  values = []
  for k, a, b, c in zip(kind, a_idx, b_idx, const):
    values.append(c % modulus if k < 0 else apply_op(OPERATORS[k], values[a], values[b], modulus))
  return values


def chance_accuracy(config: GsmMathConfig, depth: int) -> float:
  """Accuracy of a uniform guess over the ``modulus`` values: ``1 / p`` at every ``op``."""
  del depth
  return 1.0 / config.modulus


def make_example(config: GsmMathConfig, seed: int, index: int, split: str = "train") -> dict:
  """One symbolic math example; a pure function of its arguments.

  Args:
    config: task configuration.
    seed: data seed (>= 0).
    index: example index (>= 0).
    split: "train" or "eval" (same distribution; disjoint by construction,
      see ``tasks.example``).

  Returns:
    The example dict; ``meta`` holds the ``queries`` as ``(var, op, answer)``
    per query in question order (``var`` a pool index), the ``modulus``, the
    ``program`` as listed (``(var, ("const", value))`` or
    ``(var, (operator, var_a, var_b))``) and the ``core_vars`` of all queries;
    with one query also its ``op``, queried variable ``query`` and ``answer``;
    with ``line_values`` the ``line_targets`` as ``(target_position, var,
    value)`` per supervised operation line, in listed order.
  """
  if not isinstance(config, GsmMathConfig):
    raise ValueError(f"config must be a GsmMathConfig, got {type(config).__name__}")
  return ex_lib.draw_in_split(lambda rng: _build(config, rng), seed, split, index)


PRESETS = {
    "paper": GsmMathConfig(),
    "paper_sliding": GsmMathConfig(window=512, eviction="sliding"),
    # CPU scale: 160-256 tokens, 4 windows of 64.
    "small": GsmMathConfig(min_len=160, seq_len=256, window=64, n_vars=80, num_eval_examples=1024),
}

TASK = register(Task(
    name="gsm_math",
    config_cls=GsmMathConfig,
    presets=PRESETS,
    make_example=make_example,
    tokenizer=tokenizer,
    evaluator=lambda config: Evaluator("answer", chance=functools.partial(chance_accuracy, config)),
    depth_name="op",
))
