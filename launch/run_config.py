"""A run's recorded config: ``<workdir>/config.json``, written by the trainer, read back typed, overridden.

``launch.train`` records the launch ConfigDict of every run; ``launch.eval``
and ``launch.retrofit`` rebuild the run from it. Reading it back lays the
recorded values over the typed layout of ``launch/configs/common.py``, so
``--config.a.b=value`` parses and type-checks against a run's config as it
does against a config file's, unset (``null``) fields included.
"""
from __future__ import annotations

import ast
import json
import os

from ml_collections import config_dict

CONFIG_JSON = "config.json"


def as_tuples(x):
  """Lists (JSON's sequences) as tuples, nested ones too."""
  if isinstance(x, list):
    return tuple(as_tuples(v) for v in x)
  return x


def to_json_dict(cfg) -> dict:
  """A launch ConfigDict (or dict) as the JSON-able dict ``config.json`` holds (tuples become lists)."""
  d = cfg.to_dict() if isinstance(cfg, config_dict.ConfigDict) else dict(cfg)
  return json.loads(json.dumps(d, default=list))


def write_run_config(workdir: str, cfg) -> dict:
  """Writes ``cfg`` to ``<workdir>/config.json``; returns what was written (as a dict)."""
  d = to_json_dict(cfg)
  with open(os.path.join(workdir, CONFIG_JSON), "w") as f:
    json.dump(d, f, indent=1, sort_keys=True)
  return d


def _lay_over(node: config_dict.ConfigDict, raw: dict) -> None:
  """Sets ``raw``'s values on the typed ``node``, section by section.

  A value of another type than the field's (an older spelling, e.g.
  ``profile_steps = ""``) replaces the field untyped, and an unknown field is
  added: ``experiment_from_config`` reads the one and rejects the other by name.
  """
  for key, value in raw.items():
    if isinstance(value, dict) and isinstance(node.get(key), config_dict.ConfigDict):
      _lay_over(node[key], value)
      continue
    value = as_tuples(value)
    with node.unlocked():
      try:
        node[key] = value
      except TypeError:
        del node[key]
        node[key] = value


def load_run_config(workdir: str) -> config_dict.ConfigDict:
  """A run's ``config.json`` as a launch ConfigDict, overridable like a config file's.

  The recorded values are laid over the layout of ``launch/configs/common.py``
  with the library's defaults (a field the file lacks, e.g. one added since,
  takes the library's default, as it did when the run was resolved). Unset
  fields (``null``) stay typed placeholders and sequences become tuples, so
  ``--config.task_config.t_max=8`` or ``--config.sleep.grad_passes=2`` parses
  as it does for ``launch.train``. Files written before the placeholders
  (``0`` / ``""`` for unset) load too.

  Raises:
    ValueError: ``workdir`` has no ``config.json``, or it names an unknown task.
  """
  import tasks
  from launch.configs import common

  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.exists(path):
    raise ValueError(f"{workdir!r} has no config.json; is it a launch/train.py workdir?")
  with open(path) as f:
    raw = json.load(f)
  task = str(raw.get("task", ""))
  tasks.get_task(task)
  cfg = config_dict.ConfigDict({"task": task, "task_config": common.task_config_fields(task),
                                **common.library_sections()})
  _lay_over(cfg, raw)
  return cfg


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
  """Applies ``a.b.c=value`` strings to a nested dict (values parsed as Python literals when possible).

  Raises:
    ValueError: for a malformed override or a path that does not exist.
  """
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--override must look like key.path=value, got {item!r}")
    path, raw = item.split("=", 1)
    keys = path.strip().split(".")
    node = cfg
    for k in keys[:-1]:
      if not isinstance(node, dict) or k not in node:
        raise ValueError(f"--override {path!r}: no config section {k!r}")
      node = node[k]
    if not isinstance(node, dict) or keys[-1] not in node:
      raise ValueError(f"--override {path!r}: no config field {keys[-1]!r}")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node[keys[-1]] = value
  return cfg
