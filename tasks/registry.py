"""Task registry: the trainer and the CLI find a task by name.

A ``Task`` bundles one benchmark's configuration class, its named presets, its
example generator, tokenizer and evaluator, and the helpers the trainer needs
to size a model and a sleep schedule (``vocab_size``, ``seq_len``, ``window``,
``eviction``). Task modules register themselves on import; ``tasks/__init__``
imports all of them.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from tasks.evaluation import Evaluator
from tasks.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark.

  Attributes:
    name: registry name.
    config_cls: frozen dataclass of the task's knobs; validates itself.
    presets: named configurations; at least "paper" and "small".
    make_example: ``(config, seed, index, split="train") -> dict`` (see
      ``tasks.example``).
    tokenizer: ``config -> Tokenizer``.
    evaluator: ``config -> Evaluator`` (a fresh, empty accumulator).
    depth_name: what the depth knob is called in this task ("t", "k", "op").
    vocab_size: ``config -> int`` (default: the tokenizer's vocabulary).
    seq_len: ``config -> int``, the fixed length ``T`` of every example
      (default: ``config.seq_len``).
    window: ``config -> int``, the paper's consolidation window ``L``
      (default: ``config.window``).
    eviction: ``config -> str``, "hard" or "sliding" (default:
      ``config.eviction`` if the config has one, else "hard").
  """
  name: str
  config_cls: type
  presets: Mapping[str, Any]
  make_example: Callable[..., dict[str, Any]]
  tokenizer: Callable[[Any], Tokenizer]
  evaluator: Callable[[Any], Evaluator]
  depth_name: str
  vocab_size: Callable[[Any], int] | None = None
  seq_len: Callable[[Any], int] | None = None
  window: Callable[[Any], int] | None = None
  eviction: Callable[[Any], str] | None = None

  def __post_init__(self):
    # Defaults read the conventional fields: the tokenizer's vocabulary, and the
    # config's `seq_len`, `window` and (if it has one) `eviction`.
    defaults = {
        "vocab_size": lambda config: self.tokenizer(config).vocab_size,
        "seq_len": lambda config: config.seq_len,
        "window": lambda config: config.window,
        "eviction": lambda config: getattr(config, "eviction", "hard"),
    }
    for field, fn in defaults.items():
      if getattr(self, field) is None:
        object.__setattr__(self, field, fn)
    for need in ("paper", "small"):
      if need not in self.presets:
        raise ValueError(f"Task {self.name!r}: presets must include {need!r}, got {sorted(self.presets)}")
    for key, cfg in self.presets.items():
      if not isinstance(cfg, self.config_cls):
        raise ValueError(f"Task {self.name!r}: preset {key!r} is a {type(cfg).__name__}, "
                         f"not a {self.config_cls.__name__}")
    object.__setattr__(self, "presets", types.MappingProxyType(dict(self.presets)))

  def preset(self, name: str):
    """Returns the named preset configuration.

    Raises:
      ValueError: if there is no such preset.
    """
    if name not in self.presets:
      raise ValueError(f"task {self.name!r} has no preset {name!r}; known: {sorted(self.presets)}")
    return self.presets[name]

  def check_config(self, config) -> None:
    """Raises ``ValueError`` unless ``config`` is this task's config class."""
    if not isinstance(config, self.config_cls):
      raise ValueError(f"task {self.name!r} needs a {self.config_cls.__name__}, got {type(config).__name__}")


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds ``task`` to the registry.

  Raises:
    ValueError: if a different task is already registered under its name.
  """
  existing = _REGISTRY.get(task.name)
  if existing is not None and existing is not task:
    raise ValueError(f"a task named {task.name!r} is already registered")
  _REGISTRY[task.name] = task
  return task


def get_task(name: str) -> Task:
  """Returns the registered task ``name``.

  Raises:
    ValueError: if no task has that name.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; known: {list_tasks()}")
  return _REGISTRY[name]


def list_tasks() -> list[str]:
  """Names of the registered tasks, sorted."""
  return sorted(_REGISTRY)
