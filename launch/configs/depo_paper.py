"""Depo at paper scale: 10 layers, width 512, batch 128, Muon 2e-3 + AdamW 5e-5 (T = 360, L = 75)."""
from launch.configs.common import base_config


def get_config():
  c = base_config("depo", "paper")
  c.model.update(d_model=512, n_layers=10, n_heads=8, head_dim=64, gdn_head_dim=64)
  c.train.update(num_steps=200_000, batch_size=128, log_every=200, eval_every=5_000, eval_batches=16,
                 checkpoint_every=2_000)
  c.optimizer.update(kind="muon_adamw", lr=2e-3, adamw_lr=5e-5, warmup_steps=1_000)
  return c
