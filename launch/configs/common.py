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

The task's configuration: ``task_preset`` names one of the task's presets
(``tasks.get_task(task).presets``) and ``task_config`` holds only the fields
set on top of it. Every field of the task's config class is present in
``task_config`` (so ``--config.task_config.t_max=8`` is type-checked like any
other field) but starts as an unset placeholder (``None``, "take it from the
preset"). A config file sets the fields it means to change
(``c.task_config.update(t_max=6)``); the command line may set more. The launch
path (``launch/experiment.py``) builds the task config as the preset named by
the *final* ``task_preset`` with the set fields laid over it, so
``--config.task_preset=paper_depth`` selects that preset whole, keeping only
the fields the config file or the command line set. A run's ``config.json``
records the same: the preset name and the set fields (unset ones are
``null``).

``sleep.window`` and ``sleep.eviction`` describe the task, not the model: the
launch path fills them from the task (``task.window``, ``task.eviction``) and
rejects an explicit value that differs. Change the task's own fields instead
(``--config.task_config.window=...``, ``--config.task_preset=paper_sliding``).
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

import tasks


def task_config_fields(task: str) -> ml_collections.ConfigDict:
  """Every field of ``task``'s config class as an unset, typed placeholder.

  The type of each field is that of its value in the task's "paper" preset, so
  command-line values are parsed and checked (``--config.task_config.eval_ks=(1,2)``
  gives a tuple).

  Args:
    task: registry name of the task.

  Returns:
    A ConfigDict whose fields are all ``None`` ("take it from the preset").
  """
  paper = tasks.get_task(task).preset("paper")
  fields = {}
  for f in dataclasses.fields(paper):
    value = getattr(paper, f.name)
    fields[f.name] = config_dict.placeholder(type(value)) if value is not None else None
  return ml_collections.ConfigDict(fields)


def base_config(task: str, preset: str) -> ml_collections.ConfigDict:
  """The defaults every config file starts from."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.task_preset = preset
  # Only the fields set over the preset (see the module docstring):
  # --config.task_config.t_min=4 --config.task_config.t_max=4
  c.task_config = task_config_fields(task)
  c.plain_transformer = False

  c.model = ml_collections.ConfigDict(dict(
      d_model=64, n_layers=4, layout="", n_heads=2, head_dim=32, gdn_n_heads=0, gdn_head_dim=32, conv_size=4,
      mlp_hidden=0, embed_init_std=1.0, prelude=0, coda=0, tie_embeddings=False, dtype="float32",
      gdn_impl="auto", gdn_chunk_size=64))

  c.sleep = ml_collections.ConfigDict(dict(
      window=0, n_passes=1, eviction="", remat_passes=True, remat_windows=True, grad_passes=0, n_passes_train=(),
      n_passes_train_weights=(), halt_tol=0.0, max_passes=0, replay=False))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000, batch_size=128, seed=0, log_every=50, eval_every=0, eval_batches=8,
      checkpoint_every=500, max_to_keep=3, sync_every=16, num_devices=0, data_workers=0, init_from="",
      progress=True, profile_steps=""))  # profile_steps: "start,stop" steps to trace

  c.optimizer = ml_collections.ConfigDict(dict(
      kind="muon_adamw", lr=2e-3, adamw_lr=5e-5, schedule="cosine", warmup_steps=100, decay_steps=0,
      min_lr_ratio=0.0, clip_norm=1.0, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, muon_beta=0.95,
      muon_ns_steps=5))
  return c
