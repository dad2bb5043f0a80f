"""Experiments: a launch ConfigDict resolved into the library's frozen dataclasses.

``launch/train.py``, ``launch/eval.py`` and ``launch/sweep.py`` share this; the
library never reads flags or ConfigDicts.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
from typing import Any

from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A run, resolved from a config file into the library's frozen dataclasses.

  Attributes:
    task_name: registry name of the task.
    task_config: the task's configuration.
    model: the model configuration.
    sleep: the sleep configuration.
    train: the trainer configuration.
    plain_transformer: the model is the all-attention baseline.
  """
  task_name: str
  task_config: Any
  model: Any
  sleep: Any
  train: Any
  plain_transformer: bool = False

  @property
  def task(self):
    import tasks
    return tasks.get_task(self.task_name)


def _section(cfg, name: str) -> dict:
  if name not in cfg:
    raise ValueError(f"config has no section {name!r}")
  value = cfg[name]
  return value.to_dict() if isinstance(value, config_dict.ConfigDict) else dict(value)


def _build(cls, section: str, fields: dict):
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.{section} has unknown field(s) {unknown}; {cls.__name__} takes {sorted(known)}")
  return cls(**fields)


def _tuples(x):
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def experiment_from_config(cfg) -> Experiment:
  """Converts a launch ConfigDict (or its ``to_dict()``) into an :class:`Experiment`.

  Raises:
    ValueError: naming the bad field (unknown task, n_passes < 0, ...).
  """
  import tasks
  from sleep_jax.config import ModelConfig, SleepConfig
  from sleep_jax.train.config import OptimizerConfig, TrainConfig

  if isinstance(cfg, dict):
    cfg = config_dict.ConfigDict(cfg)
  task = tasks.get_task(str(cfg.get("task", "")))
  preset = task.preset(str(cfg.get("task_preset", "small")))
  task_fields = {k: _tuples(v) for k, v in _section(cfg, "task_config").items()} if "task_config" in cfg else {}
  base = dataclasses.asdict(preset)
  task_config = _build(task.config_cls, "task_config", {**base, **task_fields})
  seq_len = task.seq_len(task_config)
  plain = bool(cfg.get("plain_transformer", False))

  m = _section(cfg, "model")
  layout = m.pop("layout", "") or ""
  if isinstance(layout, str):
    layout = tuple(s.strip() for s in layout.split(",") if s.strip()) or None
  if plain:
    layout = ("attn",) * (len(layout) if layout else int(m.get("n_layers", 4)))
  for key in ("gdn_n_heads", "mlp_hidden"):
    if m.get(key) in (0, None):
      m[key] = None
  model = _build(ModelConfig, "model", {**m, "layout": layout, "vocab_size": task.vocab_size(task_config)})

  s = _section(cfg, "sleep")
  if s.get("window") in (0, None):
    s["window"] = task.window(task_config)
  if not s.get("eviction"):
    s["eviction"] = task.eviction(task_config)
  if s.get("grad_passes") in (0, None):
    s["grad_passes"] = None
  if plain:
    if s.get("n_passes", 1) < 0:
      raise ValueError(f"config.sleep.n_passes must be >= 0, got {s['n_passes']}")
    s.update(window=seq_len, n_passes=1)
  sleep = _build(SleepConfig, "sleep", s)

  o = _section(cfg, "optimizer")
  if o.get("decay_steps") in (0, None):
    o["decay_steps"] = None
  if o.get("clip_norm") in (0, None):
    o["clip_norm"] = None
  optimizer = _build(OptimizerConfig, "optimizer", o)
  t = _section(cfg, "train")
  for key in ("num_devices", "eval_batches"):
    if t.get(key) in (0, None):
      t[key] = None
  if not t.get("init_from"):
    t["init_from"] = None
  if isinstance(t.get("profile_steps"), str):  # "start,stop" steps to trace; "" traces none
    t["profile_steps"] = tuple(int(x) for x in t["profile_steps"].split(",")) if t["profile_steps"] else None
  train = _build(TrainConfig, "train", {**t, "optimizer": optimizer})
  return Experiment(task_name=task.name, task_config=task_config, model=model, sleep=sleep, train=train,
                    plain_transformer=plain)


class CheckedSchedule:
  """Wraps a batch iterator and checks every batch sleeps on the expected windows.

  The loss is compiled with a static per-window sleep schedule (cheaper than
  deciding per window inside the step); a batch whose all-zero-mask windows
  differ would silently get the wrong passes, so it is rejected here instead.
  """

  def __init__(self, it, schedule: tuple[bool, ...], window: int):
    self.it, self.schedule, self.window = it, schedule, window

  def __iter__(self):
    return self

  def __next__(self):
    from sleep_jax.windowed import schedule_from_mask
    batch = next(self.it)
    got = schedule_from_mask(batch["loss_mask"], self.window)
    if got != self.schedule:
      raise ValueError(f"a batch's consolidation windows {got} differ from the task's {self.schedule}; "
                       "this task needs a per-batch schedule")
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def task_schedule(exp: Experiment, n_examples: int = 16) -> tuple[bool, ...]:
  """Which windows sleep (loss mask all zero), from the task's first examples."""
  import numpy as np
  from sleep_jax.windowed import schedule_from_mask
  masks = np.stack([exp.task.make_example(exp.task_config, exp.train.seed, i)["loss_mask"]
                    for i in range(n_examples)])
  return schedule_from_mask(masks, exp.sleep.window)


def build_run_spec(exp: Experiment, *, meta: dict | None = None):
  """The model factory, loss, data and evaluator of an experiment (a ``RunSpec``)."""
  import jax
  import tasks
  from sleep_jax.model import HybridLM
  from sleep_jax.train import loop
  from sleep_jax.train import metrics as metrics_lib
  from sleep_jax.windowed import windowed_loss

  task = exp.task
  n_proc, pid = jax.process_count(), jax.process_index()
  local_batch = exp.train.batch_size // n_proc
  data_seed = exp.train.seed
  schedule = task_schedule(exp)

  def train_data():
    ds = tasks.make_dataset(task, exp.task_config, "train", seed=data_seed, batch_size=local_batch,
                            worker_count=exp.train.data_workers, shard_index=pid, shard_count=n_proc)
    return CheckedSchedule(iter(ds), schedule, exp.sleep.window)

  def eval_data():
    ds = tasks.make_dataset(task, exp.task_config, "eval", seed=data_seed, batch_size=local_batch, num_epochs=1,
                            shuffle=False, shard_index=pid, shard_count=n_proc)
    return CheckedSchedule(iter(ds), schedule, exp.sleep.window)

  return loop.RunSpec(
      model_factory=lambda rngs: HybridLM(exp.model, rngs=rngs),
      loss_fn=functools.partial(windowed_loss, sleep=exp.sleep, sleep_schedule=schedule),
      train_data=train_data, eval_data=eval_data,
      evaluator=lambda: task.evaluator(exp.task_config),
      sleep_cost=lambda mask: metrics_lib.sleep_cost(mask, exp.sleep.window, exp.sleep.n_passes),
      meta=dict(meta or {}, sleep_schedule=list(schedule)))


def depth_table(result: dict) -> str:
  """A small text table of ``accuracy/depth=<d>`` and ``loss/depth=<d>``."""
  depths = sorted({int(m.group(1)) for k in result for m in [re.match(r"(?:accuracy|loss)/depth=(-?\d+)$", k)]
                   if m})
  lines = [f"{'depth':>6} {'accuracy':>9} {'loss':>9}"]
  for d in depths:
    acc = result.get(f"accuracy/depth={d}", float("nan"))
    loss = result.get(f"loss/depth={d}", float("nan"))
    lines.append(f"{d:>6} {acc:>9.4f} {loss:>9.4f}")
  lines.append(f"{'all':>6} {result.get('accuracy', float('nan')):>9.4f}")
  return "\n".join(lines)


def run(cfg, workdir: str):
  """Trains the experiment of ``cfg`` in ``workdir`` (creating it); returns the ``TrainResult``."""
  import jax
  from sleep_jax.train import loop

  exp = experiment_from_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  cfg_dict = cfg.to_dict() if isinstance(cfg, config_dict.ConfigDict) else dict(cfg)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(cfg_dict, f, indent=1, sort_keys=True, default=list)
  meta = {"task": exp.task_name, "n_passes": exp.sleep.n_passes, "window": exp.sleep.window,
          "plain_transformer": exp.plain_transformer, "config": json.loads(json.dumps(cfg_dict, default=list))}
  return loop.train(build_run_spec(exp, meta=meta), exp.train, workdir)


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


def evaluate_run(workdir: str, *, overrides=(), step=None, eval_batches=None) -> tuple[int, dict]:
  """Evaluates ``workdir``'s checkpoint; returns ``(step, result)``."""
  from sleep_jax.train import loop

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir!r} has no config.json; is it a launch/train.py workdir?")
  with open(path) as f:
    cfg = apply_overrides(json.load(f), list(overrides))
  exp = experiment_from_config(cfg)
  spec = build_run_spec(exp)
  return loop.evaluate_checkpoint(spec, exp.train, workdir, step=step, max_batches=eval_batches)
