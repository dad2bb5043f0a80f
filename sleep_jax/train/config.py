"""Frozen, hashable configuration of the trainer.

``launch/`` builds these from ml_collections config files and flags; the
library only ever sees the dataclasses. Each validates itself on construction
and raises ``ValueError`` naming the offending field.
"""
from __future__ import annotations

import dataclasses

import numpy as np

OPTIMIZERS = ("muon_adamw", "adamw")
SCHEDULES = ("cosine", "constant", "linear")

# Parameters whose path matches one of these (case-insensitive substring of the
# '/'-joined path) go to AdamW even when they are 2-D: embeddings, output head,
# norms, gates, biases and scalars. Everything else that is 2-D goes to Muon.
DEFAULT_ADAMW_PATTERNS = (
    "embed", "lm_head", "head", "out_proj", "unembed", "norm", "bias", "scale",
    "a_proj", "b_proj", "alpha", "beta", "a_log", "dt_bias", "conv",
)


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and learning-rate schedule.

  Attributes:
    kind: "muon_adamw" (the paper's: Muon for hidden 2-D weight matrices, AdamW
      for the rest) or "adamw" (AdamW for everything, at ``adamw_lr``).
    lr: peak Muon learning rate (paper: 2e-3).
    adamw_lr: peak AdamW learning rate (paper: 5e-5 alongside Muon).
    schedule: "cosine" (warm-up then cosine decay), "linear" (warm-up then linear
      decay) or "constant" (warm-up then constant).
    warmup_steps: linear warm-up steps from 0.
    decay_steps: steps of the whole schedule; ``None`` means the run's
      ``num_steps``.
    min_lr_ratio: final learning rate as a fraction of the peak.
    restarts: steps at which the schedule starts again (warm-up, then its
      decay over the segment up to the next restart or the run's end), e.g.
      where a data curriculum (``curriculum.steps`` in the launch configs)
      hands over to the run's own task; ``()`` (the default): one schedule.
      Strictly increasing, each >= 1 and below the run's ``num_steps``;
      excludes ``decay_steps``.
    clip_norm: clip the global gradient norm to this; ``None`` or 0 disables.
    weight_decay: decoupled weight decay (both optimizers).
    b1: AdamW first-moment decay.
    b2: AdamW second-moment decay.
    eps: AdamW epsilon.
    muon_beta: Muon momentum decay.
    muon_ns_steps: Newton-Schulz iterations in Muon.
    adamw_patterns: substrings of parameter paths routed to AdamW.
  """
  kind: str = "muon_adamw"
  lr: float = 2e-3
  adamw_lr: float = 5e-5
  schedule: str = "cosine"
  warmup_steps: int = 100
  decay_steps: int | None = None
  min_lr_ratio: float = 0.0
  restarts: tuple[int, ...] = ()
  clip_norm: float | None = 1.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  muon_beta: float = 0.95
  muon_ns_steps: int = 5
  adamw_patterns: tuple[str, ...] = DEFAULT_ADAMW_PATTERNS

  def __post_init__(self):
    object.__setattr__(self, "adamw_patterns", tuple(self.adamw_patterns))
    _require(isinstance(self.restarts, (list, tuple))
             and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in self.restarts)
             and all(a < b for a, b in zip(self.restarts, self.restarts[1:])),
             f"OptimizerConfig.restarts must be strictly increasing integers >= 1, got {self.restarts!r}")
    object.__setattr__(self, "restarts", tuple(self.restarts))
    _require(not (self.restarts and self.decay_steps is not None),
             f"OptimizerConfig.restarts ({self.restarts}) and decay_steps ({self.decay_steps}) exclude each "
             "other: with restarts each segment decays over its own length")
    _require(self.kind in OPTIMIZERS, f"OptimizerConfig.kind must be one of {OPTIMIZERS}, got {self.kind!r}")
    _require(self.schedule in SCHEDULES,
             f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    _require(self.lr > 0, f"OptimizerConfig.lr must be > 0, got {self.lr}")
    _require(self.adamw_lr > 0, f"OptimizerConfig.adamw_lr must be > 0, got {self.adamw_lr}")
    _require(self.warmup_steps >= 0, f"OptimizerConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
    _require(self.decay_steps is None or self.decay_steps >= 1,
             f"OptimizerConfig.decay_steps must be None or >= 1, got {self.decay_steps}")
    _require(0.0 <= self.min_lr_ratio <= 1.0,
             f"OptimizerConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
    _require(self.clip_norm is None or self.clip_norm >= 0,
             f"OptimizerConfig.clip_norm must be None or >= 0, got {self.clip_norm}")
    _require(self.weight_decay >= 0, f"OptimizerConfig.weight_decay must be >= 0, got {self.weight_decay}")
    _require(0 <= self.b1 < 1 and 0 <= self.b2 < 1,
             f"OptimizerConfig.b1/b2 must be in [0, 1), got {self.b1}/{self.b2}")
    _require(0 <= self.muon_beta < 1, f"OptimizerConfig.muon_beta must be in [0, 1), got {self.muon_beta}")
    _require(self.muon_ns_steps >= 1, f"OptimizerConfig.muon_ns_steps must be >= 1, got {self.muon_ns_steps}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How a run trains, logs and checkpoints.

  Attributes:
    num_steps: optimizer steps in the run.
    batch_size: global batch size (all hosts and devices together); must divide
      by the number of devices.
    seed: seed of the parameter init, the data order and the step RNG.
    eval_seed: seed of the eval split's examples (``None``: ``seed``). Set it
      to one value for every run of a comparison, so every variant and seed is
      scored on the same eval examples (the train/eval split is by a hash of
      the tokens, so the two splits stay disjoint whatever the seeds).
    optimizer: the optimizer and schedule.
    log_every: steps between progress/JSONL records.
    eval_every: steps between evaluations on the eval split (0: only at the end).
    eval_batches: batches per evaluation (``None``: one full pass of the split).
    checkpoint_every: steps between periodic checkpoints (0: only the final one).
    max_to_keep: checkpoints kept on disk.
    sync_every: block on the device at least every this many steps. Several
      fake CPU devices deadlock with more than ~32 collective steps in flight.
    num_devices: devices in the data mesh (``None``: all of them).
    data_workers: grain worker processes (0: in-process).
    init_from: a workdir (or checkpoint step directory) whose parameters, and
      only those, initialise this run (e.g. retrofit sleep onto an N=1 model).
    progress: show a progress bar.
    profile_steps: ``(start, stop)``: write a ``jax.profiler`` trace of the
      steps ``start <= s < stop`` (0-based) to ``<workdir>/profile``; ``None``
      traces nothing.
    fsdp: shard the parameters and the optimizer state over the data mesh
      (FSDP style, ``parallel.make_fsdp_train_step``) instead of replicating
      them on every device: the same numbers up to reduction order, about
      ``1 / n_devices`` of the state's memory per device.
  """
  num_steps: int
  batch_size: int
  seed: int = 0
  eval_seed: int | None = None
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  log_every: int = 50
  eval_every: int = 0
  eval_batches: int | None = 8
  checkpoint_every: int = 500
  max_to_keep: int = 3
  sync_every: int = 16
  num_devices: int | None = None
  data_workers: int = 0
  init_from: str | None = None
  progress: bool = True
  profile_steps: tuple[int, int] | None = None
  fsdp: bool = False

  def __post_init__(self):
    if self.profile_steps is not None:
      object.__setattr__(self, "profile_steps", tuple(int(s) for s in self.profile_steps))
      _require(len(self.profile_steps) == 2 and 0 <= self.profile_steps[0] < self.profile_steps[1],
               f"TrainConfig.profile_steps must be None or (start, stop) with 0 <= start < stop, "
               f"got {self.profile_steps}")
    _require(isinstance(self.num_steps, int) and self.num_steps >= 0,
             f"TrainConfig.num_steps must be an integer >= 0, got {self.num_steps!r}")
    _require(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"TrainConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")
    _require(isinstance(self.optimizer, OptimizerConfig),
             f"TrainConfig.optimizer must be an OptimizerConfig, got {type(self.optimizer).__name__}")
    _require(self.eval_seed is None or (isinstance(self.eval_seed, int) and not isinstance(self.eval_seed, bool)
                                        and self.eval_seed >= 0),
             f"TrainConfig.eval_seed must be None or an integer >= 0, got {self.eval_seed!r}")
    _require(self.log_every >= 1, f"TrainConfig.log_every must be >= 1, got {self.log_every}")
    _require(self.eval_every >= 0, f"TrainConfig.eval_every must be >= 0, got {self.eval_every}")
    _require(self.eval_batches is None or self.eval_batches >= 1,
             f"TrainConfig.eval_batches must be None or >= 1, got {self.eval_batches}")
    _require(self.checkpoint_every >= 0,
             f"TrainConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
    _require(self.max_to_keep >= 1, f"TrainConfig.max_to_keep must be >= 1, got {self.max_to_keep}")
    _require(1 <= self.sync_every <= 16,
             f"TrainConfig.sync_every must be in [1, 16] (CPU collective deadlock beyond), got {self.sync_every}")
    _require(self.num_devices is None or self.num_devices >= 1,
             f"TrainConfig.num_devices must be None or >= 1, got {self.num_devices}")
    _require(isinstance(self.fsdp, (bool, np.bool_)), f"TrainConfig.fsdp must be a bool, got {self.fsdp!r}")
    object.__setattr__(self, "fsdp", bool(self.fsdp))
    _require(self.data_workers >= 0, f"TrainConfig.data_workers must be >= 0, got {self.data_workers}")
