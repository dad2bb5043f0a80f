"""Shared layout of the launch config files (ml_collections).

Every field is overridable from the command line, e.g.
``--config.sleep.n_passes=4 --config.train.num_steps=200``. ``launch/train.py``
turns the ConfigDict into the frozen dataclasses of the library
(``ModelConfig``, ``SleepConfig``, ``TrainConfig``, ``OptimizerConfig``) and
the task's config.

One set of defaults: the sections ``model``, ``sleep``, ``train`` and
``optimizer`` are built from the library's dataclasses
(:func:`dataclass_fields`): every field, with the dataclass's default. A field
whose default is ``None`` (or that has none) is a typed placeholder
(``config_dict.placeholder``): ``None`` until set, and type-checked when set
(``--config.sleep.grad_passes=2``). The CPU-size choices that differ from the
library's defaults (a width-64 model, the step count and batch size
``TrainConfig`` requires) are set in :func:`base_config` as overrides, and
each config file sets its own on top.

Fields the task defines, filled by the launch path (``launch/experiment.py``):
``model.vocab_size`` (the task's tokenizer), ``sleep.window`` (the task's
``L``) and ``sleep.eviction``. They are unset placeholders; an explicit value
must equal the task's (change the task's own fields instead:
``--config.task_config.window=...``, ``--config.task_preset=paper_sliding``).

Launch-only spellings: ``model.layout`` is a comma-separated string such as
``"attn,attn,attn,attn"`` (unset: the paper's alternating attention / GDN
layout); ``plain_transformer = True`` replaces the model by an all-attention
stack of the same size that sees the whole sequence (``window = T``,
``N = 1``). absl cannot set a field back to ``None`` (it parses ``None`` as
text), so the old spellings of "unset" still work where that is what they
meant: ``0`` or ``""`` for an optional field, as in run ``config.json`` files
written before the placeholders (``launch/experiment.py`` reads them), e.g.
``--config.train.eval_batches=0`` evaluates the whole split.

The task's configuration: ``task_preset`` names one of the task's presets
(``tasks.get_task(task).presets``) and ``task_config`` holds only the fields
set on top of it. Every field of the task's config class is present in
``task_config`` (so ``--config.task_config.t_max=8`` is type-checked like any
other field) but starts as an unset placeholder (``None``, "take it from the
preset"). A config file sets the fields it means to change
(``c.task_config.update(t_max=6)``); the command line may set more. The launch
path builds the task config as the preset named by the *final*
``task_preset`` with the set fields laid over it, so
``--config.task_preset=paper_depth`` selects that preset whole, keeping only
the fields the config file or the command line set. A run's ``config.json``
records the same: the preset name and the set fields (unset ones are
``null``).

A curriculum (``curriculum``, off by default): the first ``curriculum.steps``
training steps draw their batches from the task with ``curriculum.task_config``
(the same kind of placeholders) set over the run's task config, from a data
seed of their own; the run's own stream then starts as it would without one.
Evaluation always uses the run's task config; ``--config.curriculum.steps=0``
turns a config file's curriculum off (its fields are then ignored). The curriculum must keep the
sequence layout, windows and vocabulary (``launch/experiment.py`` checks it),
e.g. Depo with ``k_weights=(1, 1, 0)`` first: the ``k = 3`` token stays in the
vocabulary, no ``k = 3`` query is drawn.
"""
from __future__ import annotations

import dataclasses
import types
import typing

import ml_collections
from ml_collections import config_dict

import tasks
from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.train.config import OptimizerConfig, TrainConfig

# Fields the launch path fills from the task (see the module docstring).
DERIVED_FIELDS = {"model": ("vocab_size",), "sleep": ("window", "eviction")}
# The launch config's spelling of a field, where it differs from the dataclass's type.
LAUNCH_TYPES = {"model": {"layout": str}}  # "attn,gdn,attn,gdn"


def _value_type(hint) -> type:
  """The one type a config field holds, from a dataclass annotation (``int | None`` -> ``int``)."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:
      return _value_type(args[0])
  elif origin is typing.Literal:
    return type(typing.get_args(hint)[0])
  elif origin in (tuple, list):
    return tuple
  elif isinstance(hint, type):
    return hint
  raise TypeError(f"no config field type for the annotation {hint!r}")


def dataclass_fields(cls, *, skip=(), derived=(), field_types=None) -> ml_collections.ConfigDict:
  """Every field of the dataclass ``cls``, with its default, as a ConfigDict section.

  Args:
    cls: a library config dataclass (``ModelConfig``, ``SleepConfig``, ...).
    skip: fields left out (``TrainConfig.optimizer``, its own section).
    derived: fields the launch path fills: unset placeholders whatever their
      default.
    field_types: ``{name: type}`` for fields the launch config spells
      differently from the dataclass (``model.layout`` is a string).

  Returns:
    A ConfigDict whose fields hold the dataclass's defaults; fields without a
    default, defaulting to ``None`` or in ``derived`` are typed placeholders
    (``None`` until set).
  """
  hints = typing.get_type_hints(cls)
  field_types = field_types or {}
  fields = {}
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    if f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      default = None
    if default is None or f.name in derived or f.name in field_types:
      fields[f.name] = config_dict.placeholder(field_types.get(f.name) or _value_type(hints[f.name]))
    else:
      fields[f.name] = default
  return ml_collections.ConfigDict(fields)


def library_sections() -> dict[str, ml_collections.ConfigDict]:
  """The ``model``, ``sleep``, ``train`` and ``optimizer`` sections with the library's defaults only."""
  return {
      "model": dataclass_fields(ModelConfig, derived=DERIVED_FIELDS["model"], field_types=LAUNCH_TYPES["model"]),
      "sleep": dataclass_fields(SleepConfig, derived=DERIVED_FIELDS["sleep"]),
      "train": dataclass_fields(TrainConfig, skip=("optimizer",)),
      "optimizer": dataclass_fields(OptimizerConfig),
  }


def task_config_fields(task: str) -> ml_collections.ConfigDict:
  """Every field of ``task``'s config class as an unset, typed placeholder.

  The type of each field is that of its value in the task's "paper" preset
  (its annotation's where that value is ``None``), so
  command-line values are parsed and checked (``--config.task_config.eval_ks=(1,2)``
  gives a tuple).

  Args:
    task: registry name of the task.

  Returns:
    A ConfigDict whose fields are all ``None`` ("take it from the preset").
  """
  paper = tasks.get_task(task).preset("paper")
  hints = typing.get_type_hints(type(paper))
  fields = {}
  for f in dataclasses.fields(paper):
    value = getattr(paper, f.name)
    # An optional field the paper leaves None takes its type from the annotation.
    fields[f.name] = config_dict.placeholder(type(value) if value is not None else _value_type(hints[f.name]))
  return ml_collections.ConfigDict(fields)


def base_config(task: str, preset: str) -> ml_collections.ConfigDict:
  """The defaults every config file starts from."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.task_preset = preset
  # Only the fields set over the preset (see the module docstring):
  # --config.task_config.t_min=4 --config.task_config.t_max=4
  c.task_config = task_config_fields(task)
  # A curriculum: the first `steps` training steps draw from the task with these fields set over task_config
  # (e.g. --config.curriculum.steps=1500 --config.curriculum.task_config.k_weights='(1,1,0)'); 0: off.
  c.curriculum = ml_collections.ConfigDict({"steps": 0, "task_config": task_config_fields(task)})
  c.plain_transformer = False

  for name, section in library_sections().items():
    c[name] = section
  # CPU-size choices over the library's (paper-scale) defaults; the paper configs set their own.
  c.model.update(d_model=64, n_heads=2, head_dim=32, gdn_head_dim=32)
  c.train.update(num_steps=1000, batch_size=128)  # TrainConfig has no defaults for these
  return c
