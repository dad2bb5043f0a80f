"""Rule 110 sleep demo: the setting where sleeping measurably helps on 2 CPU cores.

One random 16-cell state per example (one consolidation window, hard
eviction), then the query ``?t`` whose target is the state's first cell after
``t`` Rule 110 steps, with ``t`` drawn from 1..6. The core is shallow: one
attention and one Gated DeltaNet block (``n_layers = 2``). The first cell after
``t`` steps depends on ``2t + 1`` cells; the prediction window sees only the
query token, so everything must be computed into the fast weights before the
state is evicted. One pass gives the core two mixing layers to do it in; ``N``
passes give ``2N`` (each pass can read, through ``S``, what the previous pass
wrote about the whole window). Deep ``t`` is where one pass falls short.

Eval: 6,144 examples (about 1,000 per depth, standard error <= 0.016), drawn
with ``train.eval_seed = 0`` whatever the run's seed, so every variant and
seed of a sweep is scored on the same examples (one majority per depth).
Budget: 3,000 steps x 128 examples x 17 tokens = 6.5 M training tokens for
every ``N``. See RESULTS.md for the measured tables and the command that
reproduces them (``launch.sweep`` with ``--variants=n1,n2,n4,...``).
"""
from launch.configs.common import base_config


def get_config():
  c = base_config("rule110", "small")
  c.task_config.update(n_states=1, t_min=1, t_max=6, num_eval_examples=6144)
  c.model.n_layers = 2
  c.train.update(num_steps=3000, batch_size=128, log_every=250, eval_every=1000, eval_batches=48,
                 checkpoint_every=1000, eval_seed=0)
  c.optimizer.update(kind="adamw", lr=1e-3, warmup_steps=100)
  c.sleep.update(remat_windows=False, remat_passes=False)
  return c
