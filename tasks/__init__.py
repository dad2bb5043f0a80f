"""Benchmarks of the paper as deterministic generators, grain pipelines and evaluators.

``get_task(name)`` returns a :class:`Task` ("rule110", "depo", "gsm_math");
``make_dataset(task, config, split, ...)`` builds its grain pipeline. See
``tasks.example`` for the example layout shared by all tasks.

The grain pipeline (``make_dataset``, ``TaskSource``, ``DropMeta``) is imported
on first use: grain imports jax, which the generators and the CLI do not need.
"""
import importlib

from tasks.evaluation import Evaluator
from tasks.registry import Task, get_task, list_tasks, register
from tasks.tokenizer import Tokenizer

# Importing a task module registers it.
from tasks import depo, gsm_math, rule110  # noqa: E402  pylint: disable=g-bad-import-order

_LAZY = {"make_dataset": "tasks.pipeline", "TaskSource": "tasks.pipeline", "DropMeta": "tasks.pipeline",
         "StagedIterator": "tasks.pipeline"}

__all__ = ["DropMeta", "Evaluator", "StagedIterator", "Task", "TaskSource", "Tokenizer", "get_task", "list_tasks",
           "make_dataset", "register"]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'tasks' has no attribute {name!r}")
