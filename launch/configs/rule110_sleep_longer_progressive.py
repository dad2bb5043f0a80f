"""Rule 110 "sleep longer", the progressive loss alone (shipped as ``rule110_sleep_longer.py`` until the floor
draw of N measured better at N = 8; the target is not met by either).

The task, tokens and eval set are the Rule 110 sleep demo's (``rule110_sleep_demo.py``: one random 16-cell
state, the query ``?t`` for ``t`` in 1..6, 3,000 steps x 128 examples x 17 tokens, 6,144 eval examples drawn
with ``train.eval_seed = 0``); only the training recipe differs. A model trained at fixed ``N = 4`` gets worse
beyond ``N = 4`` (t = 6: 0.930 at N = 4, 0.755 at N = 8). Of the five recipes measured on three seeds each
(RESULTS.md, "Sleep longer": the heavy-tailed draw of N, the progressive loss, re-injection, heavy-tailed +
progressive, all combined in ``rule110_sleep_longer_combined.py``), this one had the highest mean accuracy at
``t = 6`` served with ``N = 8`` until the floor draw (``rule110_sleep_longer.py``):

* ``sleep.n_passes = 4`` with ``sleep.detach_passes_train = 2``: each step draws ``P`` in ``0..2`` and runs
  ``P`` extra sleep passes under ``stop_gradient`` right after the wake pass, then the four passes with
  gradient (Deep Thinking's progressive loss), so the passes with gradient start from a state some unknown
  number of passes in.

Measured (seeds 0-2, every seed in RESULTS.md): t = 6 mean 0.621 / 0.805 / 0.805 / 0.778 at N = 2 / 4 / 6 / 8,
flat from N = 4 to 6 and 0.023-0.037 lower at N = 8 on each seed; training FLOPs 1.08x fixed N = 4's. It does not
rise with more passes and stays below fixed N = 4's 0.930: the target of more passes helping is not met by any
recipe measured. The curve for any seed::

    python -m launch.train --config=launch/configs/rule110_sleep_longer_progressive.py --workdir=<run> --config.train.seed=S
    python -m launch.eval --workdir=<run> --n_passes=2,4,8
"""
from launch.configs import rule110_sleep_demo


def get_config():
  c = rule110_sleep_demo.get_config()
  c.sleep.update(n_passes=4, detach_passes_train=2)
  return c
