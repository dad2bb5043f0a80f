"""Depo sleep demo: k-hop recall on a cycle whose edges are evicted before the queries.

One example lists the ``n`` edges of a directed cycle (``n`` in 7..8 nodes, 4
tokens an edge ``x -> y ,``, left-padded to 32 tokens: exactly one
consolidation window), then ``n_queries = 5`` queries ``? x k<k> = <pad> ;``
with ``k`` in 1..3, in the second window; the target of ``=`` is the node ``k``
hops after ``x``. Hard eviction: when the queries are read the edge window is
gone, and only the GDN fast weights hold the cycle.

Three choices keep the depth honest (learned the hard way, RESULTS.md "Depo",
D1 and D2):

- ``n >= 2 k_max + 1``: on a cycle of ``n`` nodes, ``k`` hops forward is
  ``n - k`` hops backward, and an edge stored in both directions answers
  ``k = n - 1`` in one lookup. With ``n >= 7`` every ``k <= 3`` is at least
  ``k`` hops either way.
- Hidden answers (``answers_visible = False``): a query's answer is the target
  of ``=`` but the input holds ``<pad>`` in its place, so a later query cannot
  read an earlier answer (an edge, for ``k = 1``) in the attention window. D1's
  teacher-forced answers let one pass reach ``k = 2`` at 0.77 through them.
- One source per example (``query_sources = "shared"``): the five queries ask
  about one node at independently drawn ``k``. With distinct sources each
  query's one-hop read names another edge and attention can chain two of them
  (``x -> y`` read at one query, ``y -> z`` at another) into a second hop no
  pass computed: with distinct sources one pass reached ``k = 2`` at 0.31 (D3).

Why depth needs passes. The core is shallow: one Gated DeltaNet block, then one
attention block (``layout = "gdn,attn"``).

- One pass (``N = 1``). The GDN comes first, so its keys and values are
  computed from token embeddings through its 4-token causal convolution: one
  edge at a time. The attention block after it writes nothing (no GDN follows
  it). At query time the one route to the edges is one read of ``S`` keyed by
  the query's tokens, then attention over the query window and the MLP. That
  is one lookup, *except* that the delta rule's writes compose: each write
  multiplies the state by ``(I - beta k k^T)``, so when a later write's key
  mixes ``x`` and ``y`` (the convolution sees ``x -> y``), an earlier write
  stored under ``y`` (``y -> z``) becomes partly readable under ``x``. So one
  pass can answer some ``k = 2`` queries, those whose later hop is listed
  first (``launch.depo_probe`` measures it: RESULTS.md, "Depo", D4), and
  nothing else beyond ``k = 1`` above the one-lookup floor ``1 / (n - 3)``
  (about 0.22 here).
- Each further pass runs the GDN on the previous pass's output, where
  attention has gathered, for every edge, what the other edges and ``S`` hold
  about its target; so pass ``n + 1`` can write links longer than pass ``n``'s
  (one hop longer, or twice as long by pointer doubling).

Chance: a guess among the cycle's other nodes, 0.155 (``tasks.depo.chance_accuracy``);
the majority baseline (the most frequent answer per depth) is lower, since
node names are drawn from a pool of 16.

A curriculum over k (RESULTS.md, "Depo", D5 to D7): the first 2,000 steps
train on ``k`` in 1..2 only (``curriculum.task_config.k_weights = (1, 1,
0)``: the ``k3`` token stays in the vocabulary, no ``k = 3`` query is drawn),
the last 2,000 on ``k`` in 1..3, and the learning rate warms up and decays
again from the hand-over (``optimizer.restarts``).

Dense edge targets (D7): every edge's ``,`` is also trained on the node two
hops past its tail (``task_config.edge_targets = 1``, never scored). With
``layout = "gdn,attn"`` what attention computes from them at N = 1 never
reaches the fast weights; a sleep pass writes it. In the pilot (N = 4, D6's
failing seeds 1 and 3, 3,000 steps) two hops came earlier than in D6: seed 3
by step 1,000 (D6: not by 2,000) and three hops by 3,000 (0.998); seed 1 had
two hops only by step 3,000 (0.975, k = 3 0.125), hence 4,000 steps.

Budget: 4,000 steps x 64 examples x 62 tokens = 15.9 M training tokens for
every ``N`` (about 11 / 23 minutes for N = 1 / 4 on one core; the three-seed
N = 1 and N = 4 sweep took 57 minutes on 2 cores). Measured (D7, seeds 0, 1,
2): at k = 3 N = 4 scores [0.996 0.804 1.000], N = 1 [0.221 0.222 0.305]
(majority 0.076, chance 0.155); unseen seeds 4 and 5: N = 4 0.185 / 0.988,
N = 1 0.132 / 0.181 (seed 4 learned two hops only at the end). N = 1 composes
two hops in one pass (0.77-0.94 at k = 2; reverse-listed paths 0.98-1.00 and,
with the edge targets, path-ordered ones 0.80-0.88 on the two seeds probed);
at N = 4's FLOPs (2.5x the steps) it reaches 0.748 at k = 3 (seed 0), and with
four times the layers (1.6x N = 4's FLOPs, four times its wake cost) 0.933.
Without the edge targets N = 4 reaches 0.485 / 0.759 on seeds 0 / 1.
D6 (3,000 steps, no edge targets) learned three hops on one N = 4 seed of five.
"""

from launch.configs.common import base_config


def get_config():
  c = base_config("depo", "small")
  c.task_config.update(n_min=7, n_max=8, pool_size=16, context_len=32, window=32, n_queries=5, k_max=3,
                       eval_ks=(1, 2, 3), num_eval_examples=2048, answers_visible=False,
                       query_sources="shared", edge_targets=1)
  c.model.layout = "gdn,attn"
  # eval_seed: every variant and seed is scored on the same eval examples.
  c.train.update(num_steps=4000, batch_size=64, log_every=100, eval_every=500, eval_batches=16,
                 checkpoint_every=1000, eval_seed=0)
  # Train on k in 1..2 for the first 2,000 steps, then on k in 1..3; the learning rate warms up and decays
  # again from the hand-over (restarts), as in the two-stage run that first learned k = 3 (RESULTS.md, D6).
  c.optimizer.update(kind="adamw", lr=2e-3, warmup_steps=100, restarts=(2000,))
  c.curriculum.update(steps=2000)
  c.curriculum.task_config.update(k_weights=(1.0, 1.0, 0.0))
  c.sleep.update(remat_windows=False, remat_passes=False, unroll=True)
  return c
