"""Rule 110 at paper scale: 4 layers, width 256, batch 512, Muon 2e-3 + AdamW 5e-5, t = 32, ~5B tokens."""
from launch.configs.common import base_config


def get_config():
  c = base_config("rule110", "paper")
  c.model.update(d_model=256, n_layers=4, n_heads=4, head_dim=64, gdn_head_dim=64)
  c.train.update(num_steps=100_000, batch_size=512, log_every=200, eval_every=5_000, eval_batches=8,
                 checkpoint_every=2_000)
  c.optimizer.update(kind="muon_adamw", lr=2e-3, adamw_lr=5e-5, warmup_steps=1_000)
  return c
