"""Depo (k-hop on a directed cycle), small CPU default."""
from launch.configs.common import base_config


def get_config():
  c = base_config("depo", "small")
  c.train.update(num_steps=1000, batch_size=64, log_every=50, checkpoint_every=500)
  c.optimizer.update(kind="adamw", lr=1e-3, warmup_steps=100)
  # Activation checkpointing off, as in rule110_small, where on an idle core it cost 0.96-1.12x a step and
  # 0.99-1.09x compile (N = 2 and 4) and the memory it saves is not needed at this size; not measured on
  # this config. The paper-scale configs keep it.
  c.sleep.update(remat_windows=False, remat_passes=False)
  return c
