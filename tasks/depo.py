"""Depo (Physics of Language Models 4.1): k-hop queries on a directed cycle.

An example is a directed cycle over ``n`` distinct nodes, whose names are
single tokens drawn from a pool of ``pool_size`` names (``n0`` ...). Its ``n``
edges are written ``x -> y ,`` (4 tokens each), listed in random order and
left-padded with ``<pad>`` to ``context_len`` tokens. Then come ``n_queries``
queries of 6 tokens each, ``? x k<k> = y ;``: "the node ``k`` hops after ``x``
is ``y``". The answer ``y`` is the target at the position of ``=``.

Layout. ``T = context_len + 6 * n_queries``. The context is a whole number of
windows (``context_len % window == 0``), so the edges lie in consolidation
windows, and the queries fit in the final, prediction window
(``6 * n_queries <= window``). Paper preset: 300 + 60 = 360 tokens, L = 75.
As in the paper's 4-token edge format with L = 75, an edge may straddle a
window boundary.

Sampling (ours, documented choices):
- ``n`` follows the PhysicsLM4 bias ``p(n) ∝ 1 / (n + sqrt(n_max))`` over
  ``[n_min, n_max]`` (``n_sampling="biased"``, the default) or is uniform
  (``"uniform"``), the same in both splits.
- ``k`` is uniform on ``[1, k_max]`` in the train split and uniform over
  ``eval_ks`` in the eval split, independently of ``n``.
- The query sources ``x`` of one example are distinct nodes
  (``query_sources="distinct"``, the default) or one node
  (``"shared"``, only with hidden answers: ``answers_visible=False``).

Every query asks what it says. A query with ``k >= n`` would wrap around the
cycle (``k`` hops would equal ``k mod n`` hops), and two queries with the same
source and hop count ``k mod n`` would let attention copy the earlier,
teacher-forced answer instead of walking the cycle. So the configuration
requires ``n_min > max(k_max, eval_ks)`` (every query has ``k < n``, in both
splits) and ``n_min >= n_queries`` (the sources of one example are distinct,
hence no ``(source, k)`` repeats). We keep ``k`` independent of ``n`` rather
than capping ``k`` per example, so a depth bucket holds the same mix of cycle
lengths whatever ``k`` it counts. Paper preset: ``n`` in ``[17, 75]``.

Depth knob: ``k``. Chance baseline: a uniform guess among the cycle's other
``n - 1`` nodes, averaged over ``p(n)`` (``chance_accuracy``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from tasks import example as ex_lib
from tasks.evaluation import Evaluator
from tasks.registry import Task, register
from tasks.tokenizer import PAD_ID, Tokenizer

EDGE_TOKENS = 4
QUERY_TOKENS = 6
N_SAMPLINGS = ("biased", "uniform")
QUERY_SOURCES = ("distinct", "shared")
_SPECIALS = ("<pad>", "->", ",", "?", "=", ";")
_ARROW, _COMMA, _QUERY, _EQ, _SEMI = 1, 2, 3, 4, 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class DepoConfig:
  """Depo task knobs (defaults: the paper's preset).

  Attributes:
    n_min: fewest nodes in a cycle; larger than every hop count (``k_max``
      and ``eval_ks``) and at least ``n_queries``.
    n_max: most nodes in a cycle.
    pool_size: node names available; more than ``n_max``.
    context_len: tokens of the (left-padded) edge list; a multiple of
      ``window`` and at least ``4 * n_max``.
    n_queries: queries per example.
    window: the consolidation window ``L``.
    k_max: largest hop count in training (``k ~ U[1, k_max]``).
    k_weights: optional relative probabilities of ``k = 1 .. k_max`` in the
      train split (``None``: uniform), e.g. weighted toward small ``k`` so the
      one-hop recall gets learned first. The vocabulary depends on ``k_max``
      only, so runs with different weights share one model shape.
    eval_ks: hop counts of the eval split.
    n_sampling: "biased" (PhysicsLM4) or "uniform".
    num_train_examples: epoch size of the train split.
    num_eval_examples: size of the eval split.
    query_sources: ``"distinct"`` (the default): the queries of one example
      ask about distinct source nodes. ``"shared"``: they all ask about one
      source (at independently drawn ``k``). With distinct sources each
      query's one-hop read of the fast weights names a different edge, and
      attention across the query window can chain them (the edge ``x -> y``
      read at one query and ``y -> z`` read at another answer ``k = 2`` from
      ``x``): a second hop that no pass computed. With one shared source
      every query reads the same edge, so nothing can be chained; use it with
      ``answers_visible = False``.
    answers_visible: whether a query's answer token is in the input stream.
      ``True`` (the default, PhysicsLM4's format): ``? x k<k> = y ;`` is
      teacher-forced, so a later query of the same example can read an
      earlier answer (the edge ``x -> y`` for ``k = 1``) in the attention
      window instead of from the fast weights. ``False``: the input holds
      ``<pad>`` where ``y`` was (``? x k<k> = <pad> ;``); the target of ``=``
      is still ``y``, so the loss and the eval are unchanged, and the edges
      reach a query only through what the context left behind.
    edge_targets: ``0`` (the default): the edge list carries no training
      target. ``h >= 1``: every edge ``x -> y ,`` is also an auxiliary
      training target (``tasks.example``): at its ``,`` the target is the node
      ``h`` hops after ``y`` (``h + 1`` after ``x``) instead of the next token.
      The input is unchanged, the targets are never scored (``aux_accuracy``
      reports them) and do not change which windows sleep. They supervise
      chaining edges while the list is read: in the wake pass attention can
      only reach an edge listed earlier, so at most the edges whose successor
      came first are answerable there; a sleep pass reads every edge back from
      the fast weights. Needs ``h + 1 < n_min`` (no wrap to ``x`` itself).
  """
  n_min: int = 17
  n_max: int = 75
  pool_size: int = 100
  context_len: int = 300
  n_queries: int = 10
  window: int = 75
  k_max: int = 16
  k_weights: tuple[float, ...] | None = None
  eval_ks: tuple[int, ...] = (1, 2, 4, 8, 16)
  n_sampling: str = "biased"
  num_train_examples: int = 1 << 30
  num_eval_examples: int = 4096
  query_sources: str = "distinct"
  answers_visible: bool = True
  edge_targets: int = 0

  def __post_init__(self):
    req, is_int = ex_lib.require, ex_lib.is_int
    if isinstance(self.eval_ks, (list, tuple)):
      object.__setattr__(self, "eval_ks", tuple(self.eval_ks))
    req(is_int(self.n_min) and self.n_min >= 2, f"DepoConfig.n_min must be an integer >= 2, got {self.n_min!r}")
    req(is_int(self.n_max) and self.n_max >= self.n_min,
        f"DepoConfig.n_max must be an integer >= n_min ({self.n_min}), got {self.n_max!r}")
    req(is_int(self.pool_size) and self.pool_size > self.n_max,
        f"DepoConfig.pool_size ({self.pool_size!r}) must be larger than n_max ({self.n_max}): "
        "a cycle cannot have more nodes than the name pool")
    req(is_int(self.n_queries) and self.n_queries >= 1,
        f"DepoConfig.n_queries must be an integer >= 1, got {self.n_queries!r}")
    req(is_int(self.window) and self.window >= 1, f"DepoConfig.window must be an integer >= 1, got {self.window!r}")
    req(is_int(self.context_len) and self.context_len >= EDGE_TOKENS * self.n_max,
        f"DepoConfig.context_len ({self.context_len!r}) must hold n_max = {self.n_max} edges of "
        f"{EDGE_TOKENS} tokens ({EDGE_TOKENS * self.n_max})")
    req(self.context_len % self.window == 0,
        f"DepoConfig.context_len ({self.context_len}) must be a multiple of window ({self.window}) so the "
        "edges fill whole consolidation windows")
    req(QUERY_TOKENS * self.n_queries <= self.window,
        f"DepoConfig: n_queries = {self.n_queries} queries take {QUERY_TOKENS * self.n_queries} tokens, more "
        f"than one prediction window of window = {self.window}")
    req(is_int(self.k_max) and self.k_max >= 1, f"DepoConfig.k_max must be an integer >= 1, got {self.k_max!r}")
    if self.k_weights is not None:
      req(isinstance(self.k_weights, (list, tuple)) and len(self.k_weights) == self.k_max
          and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                  for w in self.k_weights) and sum(self.k_weights) > 0,
          f"DepoConfig.k_weights must be None or k_max = {self.k_max} finite weights >= 0, not all zero, "
          f"got {self.k_weights!r}")
      object.__setattr__(self, "k_weights", tuple(float(w) for w in self.k_weights))
    req(isinstance(self.eval_ks, tuple) and len(self.eval_ks) >= 1
        and all(is_int(k) and k >= 1 for k in self.eval_ks),
        f"DepoConfig.eval_ks must be a non-empty tuple of integers >= 1, got {self.eval_ks!r}")
    # See the module docstring: k >= n would wrap around the cycle, and repeated
    # sources would let attention copy an earlier answer.
    req(self.n_min > self.hop_max,
        f"DepoConfig.n_min ({self.n_min}) must be larger than every hop count (k_max = {self.k_max}, "
        f"max(eval_ks) = {max(self.eval_ks)}) so that every query has k < n and does not wrap around the "
        f"cycle; raise n_min to at least {self.hop_max + 1} or lower k_max / eval_ks")
    req(self.query_sources in QUERY_SOURCES,
        f"DepoConfig.query_sources must be one of {QUERY_SOURCES}, got {self.query_sources!r}")
    req(self.query_sources == "shared" or self.n_min >= self.n_queries,
        f"DepoConfig.n_min ({self.n_min}) must be at least n_queries ({self.n_queries}) so that the queries "
        "of one example have distinct sources (or set query_sources='shared')")
    req(self.n_sampling in N_SAMPLINGS,
        f"DepoConfig.n_sampling must be one of {N_SAMPLINGS}, got {self.n_sampling!r}")
    req(is_int(self.num_train_examples) and self.num_train_examples >= 1,
        f"DepoConfig.num_train_examples must be an integer >= 1, got {self.num_train_examples!r}")
    req(is_int(self.num_eval_examples) and self.num_eval_examples >= 1,
        f"DepoConfig.num_eval_examples must be an integer >= 1, got {self.num_eval_examples!r}")
    req(isinstance(self.answers_visible, (bool, np.bool_)),
        f"DepoConfig.answers_visible must be True or False, got {self.answers_visible!r}")
    object.__setattr__(self, "answers_visible", bool(self.answers_visible))
    req(is_int(self.edge_targets) and 0 <= self.edge_targets < self.n_min - 1,
        f"DepoConfig.edge_targets must be an integer in [0, n_min - 1 = {self.n_min - 1}) (0: off; h: the "
        f"node h hops after each edge's head, which must not wrap to its tail), got {self.edge_targets!r}")
    object.__setattr__(self, "edge_targets", int(self.edge_targets))
    req(self.query_sources != "shared" or not self.answers_visible,
        "DepoConfig: query_sources='shared' needs answers_visible=False: with visible answers two queries "
        "with the same source and k would let attention copy the earlier answer")

  @property
  def seq_len(self) -> int:
    return self.context_len + QUERY_TOKENS * self.n_queries

  @property
  def hop_max(self) -> int:
    """Largest hop count either split can ask (sizes the hop tokens)."""
    return max(self.k_max, *self.eval_ks)

  def n_probs(self) -> np.ndarray:
    """``p(n)`` over ``n = n_min .. n_max``."""
    ns = np.arange(self.n_min, self.n_max + 1, dtype=np.float64)
    w = 1.0 / (ns + np.sqrt(self.n_max)) if self.n_sampling == "biased" else np.ones_like(ns)
    return w / w.sum()


def tokenizer(config: DepoConfig) -> Tokenizer:
  """Specials, hop tokens ``k1`` ... ``k<hop_max>``, node names ``n0`` ...."""
  return Tokenizer(list(_SPECIALS) + [f"k{k}" for k in range(1, config.hop_max + 1)]
                   + [f"n{i}" for i in range(config.pool_size)])


def _hop_id(k: int) -> int:
  return len(_SPECIALS) + k - 1


def _node_id(config: DepoConfig, name: int) -> int:
  return len(_SPECIALS) + config.hop_max + name


def _build(config: DepoConfig, split: str, rng: np.random.Generator) -> dict:
  n = int(rng.choice(np.arange(config.n_min, config.n_max + 1), p=config.n_probs()))
  # cycle[i] -> cycle[(i + 1) % n]; names are pool indices.
  cycle = rng.choice(config.pool_size, size=n, replace=False)
  order = rng.permutation(n)
  succ = np.roll(cycle, -1)
  node = lambda name: _node_id(config, int(name))
  edges = np.array([[node(cycle[i]), _ARROW, node(succ[i]), _COMMA] for i in order], np.int32).reshape(-1)
  context = np.concatenate([np.zeros(config.context_len - edges.size, np.int32), edges])

  q = config.n_queries
  if config.query_sources == "shared":
    src_pos = np.full(q, rng.integers(n))
  else:
    src_pos = rng.choice(n, size=q, replace=False)  # n >= n_min >= q (checked by the config)
  if split == "train" and config.k_weights is not None:
    w = np.asarray(config.k_weights, np.float64)
    ks = rng.choice(np.arange(1, config.k_max + 1), size=q, p=w / w.sum())
  elif split == "train":
    ks = rng.integers(1, config.k_max + 1, size=q)
  else:
    ks = rng.choice(np.asarray(config.eval_ks), size=q)
  dst_pos = (src_pos + ks) % n
  queries = np.array([[_QUERY, node(cycle[s]), _hop_id(int(k)), _EQ, node(cycle[d]), _SEMI]
                      for s, k, d in zip(src_pos, ks, dst_pos)], np.int32).reshape(-1)
  stream = np.concatenate([context, queries])
  # The answer y is the target of the "=" token, 3 tokens into its query.
  answers = [(config.context_len + QUERY_TOKENS * j + 3, int(ks[j]), j) for j in range(q)]
  meta = {"n": n, "cycle": cycle.astype(np.int32), "edge_order": order.astype(np.int32),
          "queries": [(int(cycle[s]), int(k), int(cycle[d])) for s, k, d in zip(src_pos, ks, dst_pos)]}
  aux = []
  if config.edge_targets:
    # Edge j (cycle[order[j]] -> succ) ends with its "," at this position of the stream.
    first = config.context_len - edges.size
    h = config.edge_targets
    meta["edge_targets"] = [(first + EDGE_TOKENS * j + EDGE_TOKENS - 1, int(cycle[i]), int(cycle[(i + 1 + h) % n]))
                            for j, i in enumerate(order)]
    aux = [(pos, node(target)) for pos, _, target in meta["edge_targets"]]
  example = ex_lib.pack_example(stream, config.seq_len, answers, meta, aux)
  if not config.answers_visible:
    # The answer stays the target of "="; the input after "=" is <pad>.
    example["tokens"][[pos + 1 for pos, _, _ in answers]] = PAD_ID
  return example


def chance_accuracy(config: DepoConfig, depth: int) -> float:
  """Accuracy of a uniform guess among the cycle's other nodes.

  The answer is one of the ``n - 1`` nodes other than the source (``1 <= k <
  n``); a guesser that knows the example's node names but not its edges is
  right with probability ``1 / (n - 1)``, averaged over ``p(n)``. This is
  above ``1 / pool_size`` (a guess over every node name), so it is the stricter
  floor. ``n`` is drawn independently of ``k``, so it is the same at every
  depth.
  """
  del depth
  ns = np.arange(config.n_min, config.n_max + 1, dtype=np.float64)
  return float(np.sum(config.n_probs() / (ns - 1)))


def make_example(config: DepoConfig, seed: int, index: int, split: str = "train") -> dict:
  """One Depo example; a pure function of its arguments.

  Args:
    config: task configuration.
    seed: data seed (>= 0).
    index: example index (>= 0).
    split: "train" (k ~ U[1, k_max]) or "eval" (k from ``eval_ks``); the splits
      are disjoint by construction (see ``tasks.example``).

  Returns:
    The example dict; ``meta`` holds ``n``, the ``cycle`` (pool indices in
    cycle order: ``cycle[i] -> cycle[i + 1 mod n]``), the listing order of the
    edges and the ``queries`` as ``(source, k, answer)`` pool indices.
  """
  if not isinstance(config, DepoConfig):
    raise ValueError(f"config must be a DepoConfig, got {type(config).__name__}")
  ex_lib.split_id(split)
  return ex_lib.draw_in_split(lambda rng: _build(config, split, rng), seed, split, index)


PRESETS = {
    "paper": DepoConfig(),
    # CPU scale: 9 to 16 nodes (just above k_max = 8), 64 context tokens in 2
    # windows of 32, 4 queries. launch/configs/depo_small.py lays a smaller,
    # learnable task over it (one edge window, hidden answers, k in 1..2).
    "small": DepoConfig(n_min=9, n_max=16, pool_size=24, context_len=64, n_queries=4, window=32, k_max=8,
                        eval_ks=(1, 2, 4, 8), num_eval_examples=1024),
}

TASK = register(Task(
    name="depo",
    config_cls=DepoConfig,
    presets=PRESETS,
    make_example=make_example,
    tokenizer=tokenizer,
    evaluator=lambda config: Evaluator("answer", chance=functools.partial(chance_accuracy, config)),
    depth_name="k",
))
