"""Experiments: a launch ConfigDict resolved into the library's frozen dataclasses, and run.

``launch/train.py``, ``launch/eval.py`` and ``launch/sweep.py`` share this; the
library never reads flags or ConfigDicts. A run's ``config.json`` is
``launch/run_config.py``; the check that every batch sleeps on the windows the
step was compiled for is ``sleep_jax.windowed.CheckedSchedule``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from ml_collections import config_dict

from launch import cli, run_config
from launch.run_config import as_tuples as _tuples
# Their old home: the names below are re-exported from where they live now.
from launch.run_config import apply_overrides, load_run_config  # noqa: F401
from launch.tables import depth_table  # noqa: F401


def __getattr__(name: str):
  # Imported on use: importing sleep_jax (jax, flax) here would slow every `import launch.experiment`.
  if name == "CheckedSchedule":
    from sleep_jax.windowed import CheckedSchedule
    return CheckedSchedule
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    curriculum_steps: the first this many training steps draw their batches
      from ``curriculum_task_config`` instead (0: no curriculum).
    curriculum_task_config: the task config of those steps (``None`` without
      a curriculum); the same sequence layout, windows and vocabulary as
      ``task_config``, checked.
  """
  task_name: str
  task_config: Any
  model: Any
  sleep: Any
  train: Any
  plain_transformer: bool = False
  curriculum_steps: int = 0
  curriculum_task_config: Any = None

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


# Why a task fixes its window and eviction mode, and which task field changes
# them, for the one-line error of an override that differs.
_WINDOW_WHY = {
    "rule110": ("splits a Rule 110 state across windows (the task's L = width holds one state; the last window "
                "holds the query and labels)", "--config.task_config.width"),
    "depo": ("moves edges into the prediction window, where attention reads them, or queries into a sleeping "
             "window (the task's context fills whole windows of L, the queries the last)",
             "--config.task_config.window"),
    "gsm_math": ("can leave the question in the prediction window's attention (the task places it to be "
                 "evicted under its own L)", "--config.task_config.window"),
}
_EVICTION_WHY = {
    "sliding": ("sliding eviction lets the prediction window attend to the previous L - 1 tokens of context, "
                "so the answer need not come from the fast weights"),
    "hard": "the task's sliding variant was laid out for sliding eviction; hard eviction is another variant",
}


def _task_defined(task, field: str, value, task_value):
  """``sleep.<field>`` from the task: unset takes the task's value; an explicit value must equal it.

  Raises:
    ValueError: one line naming the field, the task's value and why.
  """
  if value is None:
    return task_value
  if value == task_value:
    return value
  if field == "vocab_size":
    raise ValueError(f"config.model.vocab_size={value}: task {task.name}'s tokenizer has {task_value} token ids; "
                     "leave config.model.vocab_size unset to take it from the task")
  if field == "window":
    why, knob = _WINDOW_WHY.get(task.name, ("changes how the task's examples fall into windows", "the task config"))
    raise ValueError(f"config.sleep.window={value} {why}; task {task.name} defines L={task_value}: leave "
                     f"config.sleep.window unset to take L from the task, or change {knob}")
  why = _EVICTION_WHY.get(str(value), "the task defines its eviction mode")
  head = f"config.sleep.eviction={value!r}: {why}; task {task.name} defines {task_value!r} eviction"
  if "eviction" not in _config_fields(task):
    raise ValueError(f"{head} only: leave config.sleep.eviction unset to take it from the task")
  raise ValueError(f"{head}: leave config.sleep.eviction unset to take it from the task, or change "
                   "--config.task_config.eviction or --config.task_preset")


def _config_fields(task) -> set[str]:
  return {f.name for f in dataclasses.fields(task.config_cls)}


# The sentinels configs written before the placeholders (launch/configs/common.py) used for "unset", per field;
# migrate_legacy_config reads them as None. (0 for num_devices / eval_batches is also the command line's "unset".)
LEGACY_UNSET = {
    ("model", "layout"): "",
    ("model", "vocab_size"): 0,
    ("model", "gdn_n_heads"): 0,
    ("model", "gdn_value_dim"): 0,
    ("model", "mlp_hidden"): 0,
    ("sleep", "window"): 0,
    ("sleep", "eviction"): "",
    ("sleep", "grad_passes"): 0,
    ("sleep", "max_passes"): 0,
    ("sleep", "n_passes_train"): (),
    ("sleep", "n_passes_train_weights"): (),
    ("optimizer", "decay_steps"): 0,
    ("optimizer", "clip_norm"): 0,  # clip_norm 0 also meant no clipping
    ("train", "num_devices"): 0,
    ("train", "eval_batches"): 0,
    ("train", "profile_steps"): "",
}


def migrate_legacy_config(cfg: dict) -> dict:
  """A config dict with the spellings of older ``config.json`` files replaced by today's.

  Every rule, in one place:

  * the sentinels of :data:`LEGACY_UNSET` (``0``, ``""``, ``()`` meaning
    "unset") become ``None``;
  * ``sleep.halt_tol = 0`` without a ``max_passes`` ("adaptive sleep off" as
    ``halt_tol=0, max_passes=0``) becomes ``None``: halt_tol 0 never halts, so
    without a cap of its own that was fixed ``N = n_passes``, the same numbers;
  * ``train.profile_steps`` as ``"start,stop"`` text becomes ``(start, stop)``.

  Args:
    cfg: a config as a dict (``ConfigDict.to_dict()`` or a loaded ``config.json``).

  Returns:
    A new dict; ``cfg`` is not changed. Today's configs come back equal.
  """
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
  for (section, key), sentinel in LEGACY_UNSET.items():
    fields = out.get(section)
    if isinstance(fields, dict) and key in fields and fields[key] is not None:
      value = fields[key]
      if (tuple(value) if isinstance(value, list) else value) == sentinel and type(value) is not bool:
        fields[key] = None
  sleep = out.get("sleep")
  if isinstance(sleep, dict) and sleep.get("halt_tol") == 0 and not sleep.get("max_passes"):
    sleep["halt_tol"] = None
  train = out.get("train")
  if isinstance(train, dict) and isinstance(train.get("profile_steps"), str):
    train["profile_steps"] = tuple(int(x) for x in train["profile_steps"].split(","))
  return out


def experiment_from_config(cfg) -> Experiment:
  """Converts a launch ConfigDict (or its ``to_dict()``) into an :class:`Experiment`.

  The task config is the preset ``cfg.task_preset`` with the set (non-None)
  fields of ``cfg.task_config`` over it. ``model.vocab_size``,
  ``sleep.window`` and ``sleep.eviction`` left unset come from the task; an
  explicit value must equal the task's. Older ``config.json`` spellings are
  read through :func:`migrate_legacy_config` first.

  Raises:
    ValueError: naming the bad field (unknown task, n_passes < 0, a window or
      eviction mode that differs from the task's, ...).
  """
  import tasks
  from sleep_jax.config import ModelConfig, SleepConfig
  from sleep_jax.train.config import OptimizerConfig, TrainConfig

  cfg = config_dict.ConfigDict(migrate_legacy_config(cfg if isinstance(cfg, dict) else cfg.to_dict()))
  task = tasks.get_task(str(cfg.get("task", "")))
  preset = task.preset(str(cfg.get("task_preset", "small")))
  # task_config holds the fields set over the preset; None means unset (see launch/configs/common.py).
  task_fields = {k: _tuples(v) for k, v in _section(cfg, "task_config").items()
                 if v is not None} if "task_config" in cfg else {}
  base = dataclasses.asdict(preset)
  task_config = _build(task.config_cls, "task_config", {**base, **task_fields})
  seq_len = task.seq_len(task_config)
  plain = bool(cfg.get("plain_transformer", False))

  m = _section(cfg, "model")
  layout = m.pop("layout", None)
  if isinstance(layout, str):  # the launch spelling: "attn,gdn,..."
    layout = tuple(s.strip() for s in layout.split(",") if s.strip())
  layout = tuple(layout) if layout else None
  if plain:
    layout = ("attn",) * (len(layout) if layout else int(m.get("n_layers", 4)))
  task_vocab = task.vocab_size(task_config)
  if cfg.get("pretrained") and (m.get("vocab_size") or 0) >= task_vocab:
    pass  # an imported model (launch.retrofit --from_hf) keeps its vocabulary; the task's ids are its first rows
  else:
    m["vocab_size"] = _task_defined(task, "vocab_size", m.get("vocab_size"), task_vocab)
  model = _build(ModelConfig, "model", {**m, "layout": layout})

  s = _section(cfg, "sleep")
  s["window"] = _task_defined(task, "window", s.get("window"), task.window(task_config))
  s["eviction"] = _task_defined(task, "eviction", s.get("eviction"), task.eviction(task_config))
  for key in ("n_passes_train", "n_passes_train_weights"):  # the plain transformer draws no N
    s[key] = None if plain else (tuple(s.get(key) or ()) or None)
  if plain:  # nor a heavy-tailed N or a detached prefix
    s.update(n_passes_train_mean=None, n_passes_train_max=None, detach_passes_train=None)
    s.pop("n_passes_train_sigma", None)
  if plain:
    if s.get("n_passes", 1) < 0:
      raise ValueError(f"config.sleep.n_passes must be >= 0, got {s['n_passes']}")
    s.update(window=seq_len, n_passes=1)
  sleep = _build(SleepConfig, "sleep", s)

  o = _section(cfg, "optimizer")
  optimizer = _build(OptimizerConfig, "optimizer", o)
  t = _section(cfg, "train")
  # Resolved where it enters: relative to the current directory, absolute below (orbax refuses relative paths).
  t["init_from"] = cli.user_path(t.get("init_from"))
  train = _build(TrainConfig, "train", {**t, "optimizer": optimizer})
  steps, cur_config = _curriculum(cfg, task, task_config, train)
  return Experiment(task_name=task.name, task_config=task_config, model=model, sleep=sleep, train=train,
                    plain_transformer=plain, curriculum_steps=steps, curriculum_task_config=cur_config)


def _curriculum(cfg, task, task_config, train):
  """``(steps, task config)`` of the config's ``curriculum`` section; ``(0, None)`` when it is off or absent.

  Raises:
    ValueError: one line naming the field: steps neither 0 nor an integer
      in ``[1, train.num_steps)``, steps without a task field set, or a
      curriculum task whose sequence length, window, eviction or vocabulary
      differs from the run's (the model and its sleep schedule are built for
      the run's).
  """
  section = _section(cfg, "curriculum") if "curriculum" in cfg else {}
  steps = section.get("steps") or 0
  fields = {k: _tuples(v) for k, v in dict(section.get("task_config") or {}).items() if v is not None}
  if not isinstance(steps, int) or isinstance(steps, bool) or not (steps == 0 or 0 < steps < train.num_steps):
    raise ValueError(f"config.curriculum.steps must be 0 or an integer in [1, train.num_steps = "
                     f"{train.num_steps}), got {steps!r}")
  if not steps:  # off; fields a config file set stay inert, so --config.curriculum.steps=0 turns it off
    return 0, None
  if not fields:
    raise ValueError(f"config.curriculum.steps = {steps} but config.curriculum.task_config sets no field: the "
                     "curriculum would train on the run's own task; set a field (e.g. "
                     "--config.curriculum.task_config.k_weights='(1,1,0)') or set steps to 0")
  cur = _build(task.config_cls, "curriculum.task_config", {**dataclasses.asdict(task_config), **fields})
  for what, fn in (("sequence length", task.seq_len), ("window", task.window), ("eviction", task.eviction),
                   ("vocabulary size", task.vocab_size)):
    if fn(cur) != fn(task_config):
      raise ValueError(f"config.curriculum.task_config changes the task's {what} ({fn(task_config)!r} -> "
                       f"{fn(cur)!r}); a curriculum stage must keep the run's layout and vocabulary")
  return steps, cur


def curriculum_seed(seed: int) -> int:
  """The data seed of a run's curriculum stage: derived from, and distinct from, the run's."""
  import numpy as np
  # generate_state gives a uint32; shifted into [0, 2**31) so it is a valid seed wherever an int32 is expected.
  return int(np.random.SeedSequence([seed, 0xC0BB1C]).generate_state(1)[0] >> 1)


def task_schedule(exp: Experiment, n_examples: int = 16) -> tuple[bool, ...]:
  """Which windows sleep (no scored answer in them), from the task's first examples."""
  import numpy as np
  from sleep_jax.windowed import schedule_from_mask
  exs = [exp.task.make_example(exp.task_config, exp.train.seed, i) for i in range(n_examples)]
  return schedule_from_mask(np.stack([e["loss_mask"] for e in exs]), exp.sleep.window,
                            np.stack([e["depth"] for e in exs]))


def check_sleep_happens(exp: Experiment, schedule: tuple[bool, ...]) -> None:
  """Refuses a config that asks for sleep (some ``N != 1``) when no window of the task ever sleeps.

  A window sleeps when it holds no scored answer, so a task whose sequences
  are no longer than the window (``T <= L``), or whose every window holds loss
  tokens, runs any ``N`` exactly as ``N = 1``: a run or evaluation at
  ``N = 4`` would silently be the plain model's.

  Raises:
    ValueError: one line naming the sleep field, the task, ``T`` and ``L``.
  """
  sleep = exp.sleep
  dist = sleep.n_passes_train_distribution()
  ns = {sleep.max_n_passes} | set(dist[0] if dist else ())
  if any(schedule) or ns == {1}:
    return
  if sleep.n_passes_train is not None:
    field = f"config.sleep.n_passes_train={sleep.n_passes_train}"
  elif sleep.n_passes_train_mean is not None:
    field = f"config.sleep.n_passes_train_mean={sleep.n_passes_train_mean:g}"
  elif sleep.adaptive and sleep.max_passes is not None:
    field = f"config.sleep.max_passes={sleep.max_passes}"
  else:
    field = f"config.sleep.n_passes={sleep.n_passes}"
  t, L = exp.task.seq_len(exp.task_config), sleep.window
  why = (f"its sequences (T = {t}) are shorter than the window (L = {L}), so no window fills" if t < L else
         f"every window of its sequences (T = {t}, L = {L}) holds loss tokens")
  raise ValueError(f"{field} asks for sleep, but no window of task {exp.task_name} ever sleeps: {why}; "
                   "set config.sleep.n_passes=1 or change the task config")


def build_run_spec(exp: Experiment, *, meta: dict | None = None, model_factory=None):
  """The model factory, loss, data and evaluator of an experiment (a ``RunSpec``).

  Args:
    exp: the experiment.
    meta: JSON-able run description saved with the checkpoints.
    model_factory: ``(exp, rngs) -> model`` to train a model of your own in
      place of ``HybridLM(exp.model)``: any NNX model meeting the
      sleepable-model protocol (``sleep_jax.protocol``), e.g.
      ``sleep_jax.examples.own_model.OwnLM``. ``exp.model.vocab_size`` is the
      task's vocabulary. Its dropout draws new masks every step
      (``sleep_jax.train.step.step_rngs``) and is off in evaluation.

  Every train and eval batch is checked on the host before it reaches the
  jitted step: its consolidation windows against the compiled schedule and
  its token ids against the model's vocabulary (``CheckedSchedule``).

  Raises:
    ValueError: the config asks for sleep on a task none of whose windows
      sleeps (:func:`check_sleep_happens`).
  """
  import jax
  import tasks
  from sleep_jax.model import HybridLM
  from sleep_jax.train import loop
  from sleep_jax.windowed import CheckedSchedule, WindowedLoss

  task = exp.task
  n_proc, pid = jax.process_count(), jax.process_index()
  local_batch = exp.train.batch_size // n_proc
  data_seed = exp.train.seed
  eval_seed = data_seed if exp.train.eval_seed is None else exp.train.eval_seed
  schedule = task_schedule(exp)
  check_sleep_happens(exp, schedule)
  vocab = exp.model.vocab_size

  if exp.curriculum_steps:
    cur_schedule = task_schedule(dataclasses.replace(exp, task_config=exp.curriculum_task_config))
    if cur_schedule != schedule:
      raise ValueError(f"config.curriculum.task_config changes which windows sleep ({cur_schedule} against the "
                       f"run's {schedule}); the compiled step has one schedule")

  def stage(task_config, seed):
    return lambda: iter(tasks.make_dataset(task, task_config, "train", seed=seed, batch_size=local_batch,
                                           worker_count=exp.train.data_workers, shard_index=pid,
                                           shard_count=n_proc))

  def train_data():
    if not exp.curriculum_steps:
      return CheckedSchedule(stage(exp.task_config, data_seed)(), schedule, exp.sleep.window, vocab)
    # The curriculum's examples come from their own seed, so the run's stream starts where it would without one.
    it = tasks.StagedIterator([stage(exp.curriculum_task_config, curriculum_seed(data_seed)),
                               stage(exp.task_config, data_seed)], [exp.curriculum_steps])
    return CheckedSchedule(it, schedule, exp.sleep.window, vocab)

  def eval_data():
    ds = tasks.make_dataset(task, exp.task_config, "eval", seed=eval_seed, batch_size=local_batch, num_epochs=1,
                            shuffle=False, shard_index=pid, shard_count=n_proc)
    return CheckedSchedule(iter(ds), schedule, exp.sleep.window, vocab)

  return loop.RunSpec(
      model_factory=((lambda rngs: HybridLM(exp.model, rngs=rngs)) if model_factory is None
                     else functools.partial(model_factory, exp)),
      loss_fn=WindowedLoss(exp.sleep, sleep_schedule=schedule),  # draws N per step if n_passes_train
      train_data=train_data, eval_data=eval_data,
      evaluator=lambda: task.evaluator(exp.task_config),
      meta=dict(meta or {}, sleep_schedule=list(schedule)))


class _FirstStepHook:
  """Wraps the train iterator; calls ``callback()`` when the second batch is drawn.

  The loop draws batch ``k + 1`` only after step ``k`` has been compiled and
  dispatched, so the second draw marks the first step of the process (after a
  resume too) without touching the loop.
  """

  def __init__(self, it, callback):
    self.it, self.callback, self.drawn = it, callback, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    self.drawn += 1
    if self.drawn == 2 and self.callback is not None:
      self.callback()
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def run(cfg, workdir: str, *, on_first_step=None, model_factory=None):
  """Trains the experiment of ``cfg`` in ``workdir`` (creating it); returns the ``TrainResult``.

  Args:
    cfg: a launch ConfigDict (or its ``to_dict()``).
    workdir: the run directory; ``config.json`` is written there.
    on_first_step: called with no arguments once this process's first train
      step has been compiled and dispatched (not at all for runs of under two
      remaining steps).
    model_factory: ``(exp, rngs) -> model``: train a sleepable model of your
      own instead of ``HybridLM`` (see :func:`build_run_spec`); ``cfg.model``
      then only supplies the vocabulary.

  Raises:
    ValueError: a bad config (see :func:`experiment_from_config`) or run.
  """
  import jax
  from sleep_jax.train import loop

  exp = experiment_from_config(cfg)
  workdir = cli.user_path(workdir)
  if workdir is None:
    raise ValueError("workdir must be a non-empty path")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    run_config.write_run_config(workdir, cfg)
  meta = {"task": exp.task_name, "n_passes": exp.sleep.n_passes, "window": exp.sleep.window,
          "plain_transformer": exp.plain_transformer, "config": run_config.to_json_dict(cfg)}
  spec = build_run_spec(exp, meta=meta, model_factory=model_factory)
  if on_first_step is not None:
    train_data = spec.train_data
    spec = dataclasses.replace(spec, train_data=lambda: _FirstStepHook(train_data(), on_first_step))
  return loop.train(spec, exp.train, workdir)


def evaluate_run(workdir: str, *, cfg=None, overrides=(), step=None, eval_batches=None,
                 model_factory=None) -> tuple[int, dict]:
  """Evaluates ``workdir``'s checkpoint; returns ``(step, result)``.

  Args:
    workdir: a ``launch/train.py`` run directory.
    cfg: the run's config with any changes (default: ``load_run_config``).
    overrides: ``a.b=value`` strings applied on top (see :func:`apply_overrides`).
    step: the checkpoint step (default: the newest that restores).
    eval_batches: eval batches (default: the whole eval split).
    model_factory: ``(exp, rngs) -> model``, the one the run was trained with
      (see :func:`build_run_spec`; default ``HybridLM``).

  Raises:
    ValueError: a bad workdir, config or override.
  """
  from sleep_jax.train import loop

  workdir = cli.user_path(workdir)
  if workdir is None:
    raise ValueError("workdir must be a non-empty path")
  if cfg is None:
    cfg = load_run_config(workdir)
  cfg = apply_overrides(cfg.to_dict() if isinstance(cfg, config_dict.ConfigDict) else dict(cfg), list(overrides))
  exp = experiment_from_config(cfg)
  spec = build_run_spec(exp, model_factory=model_factory)
  return loop.evaluate_checkpoint(spec, exp.train, workdir, step=step, max_batches=eval_batches)
