"""Rule 110 "sleep longer", all recipes combined (the first shipped recipe; measured: flat, and the lowest level).

``rule110_sleep_longer.py`` ships the recipe that measured best at ``N = 8``; this file keeps the combined
recipe that RESULTS.md's "Sleep longer" table reports as "all recipes combined".

The task, tokens and eval set are the Rule 110 sleep demo's (``rule110_sleep_demo.py``: one random 16-cell
state, the query ``?t`` for ``t`` in 1..6, 3,000 steps x 128 examples x 17 tokens, 6,144 eval examples drawn
with ``train.eval_seed = 0``); only the training recipe differs. On the demo, a model trained at fixed
``N = 4`` gets worse beyond ``N = 4`` and a uniformly drawn ``N`` stays flat (RESULTS.md). This config
combines the recipes of looped-depth models that do improve with more iterations, each a ``SleepConfig`` /
``ModelConfig`` option:

* ``sleep.n_passes_train_mean = 4``, ``n_passes_train_sigma = 0.5``, ``n_passes_train_max = 10``: each step
  draws ``N = min(1 + Poisson(lam), 10)``, ``lam ~ LogNormal(log 3 - 0.125, 0.5)`` (Huginn's draw; mean
  ``N`` about 4, a tail to 10), so the step function cannot count its passes;
* ``sleep.grad_passes = 3``: gradients through the last three passes only (Huginn's truncation);
* ``sleep.detach_passes_train = 2``: 0-2 extra detached sleep passes before them (Deep Thinking's
  progressive loss), so the passes with gradient start from states some unknown number of passes in;
* ``model.sleep_reinject = "embedding"``: the window's embedding re-enters every sleep pass through a
  zero-initialised adapter (input recall);
* ``sleep.halt_measure = "kl"``: when evaluated with adaptive sleep (``launch.eval --halt_tol=...``),
  halt on the change of the window's predictions, not of the fast weights.

Evaluation runs at ``sleep.n_passes = 4`` (about the mean training ``N``); the curve is
``python -m launch.eval --workdir=... --n_passes=2,4,8``. Each distinct ``(N, P)`` drawn compiles its own
train step (at most 28 here: ``N`` in 2..10 times ``P`` in 0..2, plus ``N = 1``). Training FLOPs per step
average about those of fixed ``N = 4`` plus one detached forward pass, with less backward
(``cost.sequence_flops`` gives the expectation). Measured (RESULTS.md, "Sleep longer", every seed): accuracy at
``t = 6``, mean of seeds 0-2, is 0.624 / 0.651 / 0.655 / 0.657 at ``N = 2 / 4 / 6 / 8`` (flat past the
trained mean), where fixed ``N = 4`` falls from 0.930 at ``N = 4`` to 0.755 at ``N = 8``; but it stays far
below fixed ``N = 4``, so it does not beat 0.930 at ``N = 8``. Training FLOPs per sequence: 0.947x fixed ``N = 4``'s.
"""
from launch.configs import rule110_sleep_demo


def get_config():
  c = rule110_sleep_demo.get_config()
  c.model.sleep_reinject = "embedding"
  c.sleep.update(n_passes=4, n_passes_train_mean=4.0, n_passes_train_sigma=0.5, n_passes_train_max=10,
                 grad_passes=3, detach_passes_train=2, halt_measure="kl")
  return c
