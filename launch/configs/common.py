"""Shared layout of the launch config files (ml_collections).

Every field is overridable from the command line, e.g.
``--config.sleep.n_passes=4 --config.train.num_steps=200``. ``launch/train.py``
turns the ConfigDict into the frozen dataclasses of the library
(``ModelConfig``, ``SleepConfig``, ``TrainConfig``) and the task's config.

Conventions for "take it from the task" values: ``sleep.window = 0`` uses the
task's ``L``; ``sleep.eviction = ""`` the task's eviction mode;
``model.layout = ""`` the paper's alternating attention / GDN layout (or a
comma-separated list such as ``"attn,attn,attn,attn"``); ``plain_transformer
= True`` replaces the model by an all-attention stack of the same size that
sees the whole sequence (``window = T``, ``N = 1``).
"""
from __future__ import annotations

import dataclasses

import ml_collections

import tasks


def base_config(task: str, preset: str) -> ml_collections.ConfigDict:
  """The defaults every config file starts from."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.task_preset = preset
  # The task's preset, field by field, so each is overridable and type-checked:
  # --config.task_config.t_min=4 --config.task_config.t_max=4
  c.task_config = ml_collections.ConfigDict(dataclasses.asdict(tasks.get_task(task).preset(preset)))
  c.plain_transformer = False

  c.model = ml_collections.ConfigDict(dict(
      d_model=64, n_layers=4, layout="", n_heads=2, head_dim=32, gdn_n_heads=0, gdn_head_dim=32, conv_size=4,
      mlp_hidden=0, embed_init_std=1.0, prelude=0, coda=0, tie_embeddings=False, dtype="float32",
      gdn_impl="auto", gdn_chunk_size=64))

  c.sleep = ml_collections.ConfigDict(dict(
      window=0, n_passes=1, eviction="", remat_passes=True, remat_windows=True, grad_passes=0))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000, batch_size=128, seed=0, log_every=50, eval_every=0, eval_batches=8,
      checkpoint_every=500, max_to_keep=3, sync_every=16, num_devices=0, data_workers=0, init_from="",
      progress=True, profile_steps=""))  # profile_steps: "start,stop" steps to trace

  c.optimizer = ml_collections.ConfigDict(dict(
      kind="muon_adamw", lr=2e-3, adamw_lr=5e-5, schedule="cosine", warmup_steps=100, decay_steps=0,
      min_lr_ratio=0.0, clip_norm=1.0, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, muon_beta=0.95,
      muon_ns_steps=5))
  return c
