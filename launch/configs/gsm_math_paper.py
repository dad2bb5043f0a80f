"""GSM-Infinite-style math at paper length (T = 3300, L = 2000 hard eviction; batch 256).

The paper retrofits pretrained 1.4-2B models; this trains a from-scratch
12-layer width-768 hybrid (ours) with the paper's optimizer. For the sliding
variant (L = 512, sliding eviction): ``--config.task_preset=paper_sliding``.
"""
from launch.configs.common import base_config


def get_config():
  c = base_config("gsm_math", "paper")
  c.model.update(d_model=768, n_layers=12, n_heads=12, head_dim=64, gdn_head_dim=64)
  c.train.update(num_steps=50_000, batch_size=256, log_every=100, eval_every=5_000, eval_batches=8,
                 checkpoint_every=1_000)
  c.optimizer.update(kind="muon_adamw", lr=2e-3, adamw_lr=5e-5, warmup_steps=1_000)
  return c
