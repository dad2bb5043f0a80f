"""GSM-Infinite-style math, small CPU default: learns op = 1 (and op = 2 above its majority) at N = 1.

The task keeps the paper's layout (the question first, evicted before the
answer; one answer token, no chain of thought) at CPU scale: programs of
56-64 tokens in two windows of 32 (the question and the first lines are
evicted), values mod 5, the ``+`` operator, ``op`` in 1..2, lines in
topological order. Two knobs make it learnable in about 10 minutes:

- ``line_values=True``: every operation line's value is a hidden training
  target at its ``;`` (auxiliary: trained on, never scored), one target per
  operation line where the task has one answer per sequence;
- ``distractor_reads="constants"``: each distractor operation reads two
  constants, so those targets are all the computation an ``op = 1`` answer
  needs (with distractors reading any line, most targets are chains and the
  run learned them slowly).

Measured (RESULTS.md, S8): without the two knobs op = 1 stalled at 0.45; with
line values alone 0.686 after 2,000 steps of batch 128; with both, this
config (seed 0) reached op = 1 0.964 and op = 2 0.744 at step 2,000 (majority
0.24 / 0.27), about 9 minutes on one core with the other core busy. The
cosine decays over 3,000 steps but the run stops at 2,000: with the decay
ending at 2,000 the same run reached op = 1 0.836 only. Not robust across
seeds: seeds 0 and 2 meet op = 1 >= 0.9 (0.964, 0.957), seeds 1 and 3 do not
(0.661, 0.783), though all four learn the line values (0.91-0.93).
"""
from launch.configs.common import base_config


def get_config():
  c = base_config("gsm_math", "small")
  c.task_config.update(op_max=2, operators=("+",), modulus=5, line_order="topological", seq_len=64, min_len=56,
                       window=32, n_vars=32, line_values=True, distractor_reads="constants")
  c.train.update(num_steps=2000, batch_size=64, log_every=50, eval_every=250, eval_batches=16,
                 checkpoint_every=500, eval_seed=0)
  c.optimizer.update(kind="adamw", lr=3e-3, warmup_steps=50, decay_steps=3000)
  # Activation checkpointing off, as in rule110_small, where on an idle core it cost 0.96-1.12x a step and
  # 0.99-1.09x compile (N = 2 and 4) and the memory it saves is not needed at this size; not measured on
  # this config. The paper-scale configs keep it.
  c.sleep.update(remat_windows=False, remat_passes=False)
  return c
