"""Depo (k-hop on a directed cycle), small CPU default."""
from launch.configs.common import base_config


def get_config():
  c = base_config("depo", "small")
  c.train.update(num_steps=1000, batch_size=64, log_every=50, checkpoint_every=500)
  c.optimizer.update(kind="adamw", lr=1e-3, warmup_steps=100)
  return c
