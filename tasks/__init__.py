"""Benchmarks of the paper as deterministic generators, grain pipelines and evaluators.

``get_task(name)`` returns a :class:`Task` ("rule110", "depo", "gsm_math");
``make_dataset(task, config, split, ...)`` builds its grain pipeline. See
``tasks.example`` for the example layout shared by all tasks.
"""
from tasks.evaluation import Evaluator
from tasks.pipeline import DropMeta, TaskSource, make_dataset
from tasks.registry import Task, get_task, list_tasks, register
from tasks.tokenizer import Tokenizer

# Importing a task module registers it.
from tasks import depo, gsm_math, rule110  # noqa: E402  pylint: disable=g-bad-import-order

__all__ = ["DropMeta", "Evaluator", "Task", "TaskSource", "Tokenizer", "get_task", "list_tasks", "make_dataset",
           "register"]
