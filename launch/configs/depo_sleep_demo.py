"""Depo sleep demo: k-hop recall on a cycle whose edges are evicted before the queries.

One example lists the ``n`` edges of a directed cycle (``n`` in 9..12 nodes, 4
tokens an edge ``x -> y ,``, left-padded to 48 tokens: exactly one
consolidation window), then ``n_queries = 2`` queries ``? x k<k> = y ;`` with
``k`` in 1..4, in the second window. Hard eviction: when the queries are read
the edge window is gone, and only the GDN fast weights hold the cycle.

Two choices keep the depth honest (both learned the hard way, RESULTS.md
"Depo", D1):

- ``n >= 2 k_max + 1``: on a cycle of ``n`` nodes, ``k`` hops forward is
  ``n - k`` hops backward, and an edge stored in both directions answers
  ``k = n - 1`` in one lookup. With ``n >= 9`` every ``k <= 4`` is at least
  ``k`` hops either way.
- Few queries: the queries' answers are teacher-forced, so a later query can
  read the cycle off earlier answers in the attention window instead of from
  the fast weights. With 4 queries on 5-8 nodes one pass reached ``k = 2`` at
  0.64-0.70 (train accuracy); 2 queries on 9-12 nodes leave far less to read.

Why depth needs passes. The core is shallow: one Gated DeltaNet block, then one
attention block (``layout = "gdn,attn"``).

- One pass (``N = 1``). The GDN comes first, so what it writes into ``S`` is
  computed from token embeddings through its 4-token causal convolution: one
  edge at a time. The attention block after it writes nothing (no GDN follows
  it). At query time the one route to the edges is one read of ``S`` (the
  convolution sees ``? x k<k> =``), then attention over the query window and
  the MLP: one lookup. So ``N = 1`` can answer ``k = 1`` and nothing deeper
  above chance.
- Each further pass runs the GDN on the previous pass's output, where
  attention has gathered, for every edge, what the other edges and ``S`` hold
  about its target; so pass ``n + 1`` can write links longer than pass ``n``'s
  (one hop longer, or twice as long by pointer doubling).

Chance: a guess among the cycle's other nodes, 0.108 (``tasks.depo.chance_accuracy``);
the majority baseline (the most frequent answer per depth) is lower, since
node names are drawn from a pool of 16.

Budget: 3,000 steps x 128 examples x 60 tokens = 23 M training tokens for every
``N``. Measured so far (RESULTS.md, "Depo", D2): at this budget neither N = 1 nor
N = 4 (seed 0) lifted any ``k >= 2`` off chance; the demo is not yet a claim.
"""
from launch.configs.common import base_config


def get_config():
  c = base_config("depo", "small")
  c.task_config.update(n_min=9, n_max=12, pool_size=16, context_len=48, window=48, n_queries=2, k_max=4,
                       eval_ks=(1, 2, 3, 4), num_eval_examples=2048)
  c.model.layout = "gdn,attn"
  # eval_seed: every variant and seed is scored on the same eval examples.
  c.train.update(num_steps=3000, batch_size=128, log_every=100, eval_every=500, eval_batches=16,
                 checkpoint_every=1000, eval_seed=0)
  c.optimizer.update(kind="adamw", lr=1e-3, warmup_steps=100)
  c.sleep.update(remat_windows=False, remat_passes=False, unroll=True)
  return c
