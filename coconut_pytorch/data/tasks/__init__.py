"""Seeded task generators, looked up by name."""

from __future__ import annotations

from coconut_pytorch.data.tasks.base import Task
from coconut_pytorch.data.tasks.multiplication import MultiplicationTask, multiplication_example
from coconut_pytorch.data.tasks.prosqa import (
    ProsQAGraph,
    ProsQATask,
    load_prosqa_vocab,
    parse_prosqa_question,
    prosqa_statistics,
    verify_prosqa_example,
)
from coconut_pytorch.data.tasks.toy import PointerChaseTask, RunningSumTask

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (ProsQATask, MultiplicationTask, RunningSumTask, PointerChaseTask)
}


def get_task(name: str, **kwargs) -> Task:
    """Instantiate the task registered as `name` with its keyword settings."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = [
    "TASKS",
    "get_task",
    "Task",
    "ProsQATask",
    "ProsQAGraph",
    "parse_prosqa_question",
    "verify_prosqa_example",
    "prosqa_statistics",
    "load_prosqa_vocab",
    "MultiplicationTask",
    "multiplication_example",
    "RunningSumTask",
    "PointerChaseTask",
]
