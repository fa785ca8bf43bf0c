"""Task types: everything that differs between "one class per image" and the tasks to come.

A ``Task`` owns the head layout, how labels become targets, the split's stratification key, the
valid losses and the default one, the metrics (their names and whether higher or lower is better),
the default monitor, post-validation calibration, what TTA and ensembles average, how predictions
become CSV columns, what the model record stores, and which report sections apply.

Each type has its own module; a new one is one registry entry (``TASKS``) plus its tests.
Metric names use only letters, digits, ``_ - . /`` and spaces, so every tracker accepts them.
"""
from __future__ import annotations

from ..errors import unknown_name
from .base import TOP_K, MetricInfo, Task, METRIC_NAME
from .multiclass import MulticlassTask
from .multihead import MultiheadTask
from .multilabel import MultilabelTask
from .regression import RegressionTask

TASKS: dict[str, Task] = {t.name: t for t in (MulticlassTask(), MultilabelTask(), RegressionTask(), MultiheadTask())}

for _t in (*TASKS.values(), RegressionTask(bins=[1.0])):  # names travel to trackers: safe characters only
    assert all(METRIC_NAME.match(m.name) for m in _t.metrics), _t.name


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise unknown_name("task type (task.type)", name, list_tasks())
    return TASKS[name]


def list_metrics(task: str = "multiclass") -> list[str]:
    """The metric names of a task type, in metrics.csv's column order (regression without bins)."""
    return get_task(task).metric_names()


__all__ = ["TOP_K", "MetricInfo", "Task", "MulticlassTask", "MultilabelTask", "RegressionTask",
           "MultiheadTask", "TASKS", "list_tasks", "get_task", "list_metrics"]
